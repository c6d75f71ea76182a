"""Installing as a user would, in a fresh virtual environment with the same torch:

* ``pip install -e .`` with pip's build isolation (which cannot see torch): the package
  installs without ``_C``, and the first operator call from another folder compiles it
  against the venv's torch, then decodes equal to the reference;
* ``python -m build --wheel --no-isolation``: the wheel carries the compiled extension
  and runs ``python -m implicit_kernels demo`` in the fresh environment.

Minutes each (a torch install, a compile): marked ``slow``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

DECODE = """
import torch, implicit_kernels.functional as F
from implicit_kernels import _extension
torch.manual_seed(0)
c, hidden = 4, 16
def layers(prefix, dims):
    out = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"{prefix}{2 * i}.weight"] = torch.randn(b, a) / a ** 0.5
        out[f"{prefix}{2 * i}.bias"] = torch.zeros(b)
    return out
params = {**layers("coarse.layers.", [16 * c + 6, hidden, hidden]),
          **layers("fine.layers.", [hidden + 2, hidden, 3])}
feat = torch.randn(1, c, 5, 6)
out = F.diif_decode(feat, (12, 17), params, backend="cpu")
ref = F.diif_decode(feat, (12, 17), params, backend="reference")
torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
print("decoded with", _extension.load().__file__)
"""


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kwargs)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment holding this process's torch version and nothing of
    implicit-kernels."""
    folder = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(folder)])
    python = folder / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"])
    return python


def clean_copy(dest: Path) -> Path:
    """The checkout's files as a clone has them (tracked and untracked-not-ignored): no
    extension built in place, no build folder."""
    names = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout
    for name in filter(None, names.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_editable_install_with_build_isolation_compiles_on_first_use(venv, tmp_path):
    source = clean_copy(tmp_path / "clone")
    run([venv, "-m", "pip", "install", "-q", "-e", str(source)])
    env = {**os.environ, "IK_CACHE_DIR": str(tmp_path / "cache"), "IK_JIT": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run([venv, "-c", DECODE], cwd=elsewhere, env=env)
    assert "compiling the C++ extension" in proc.stderr
    assert str(tmp_path / "cache") in proc.stdout
    # The second process finds the cached build.
    again = run([venv, "-c", DECODE], cwd=elsewhere, env=env)
    assert "compiling" not in again.stderr


def test_wheel_installs_and_runs_the_demo(venv, tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(ROOT)], cwd=ROOT)
    (wheel,) = dist.glob("implicit_kernels-*.whl")
    run([venv, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
    run([venv, "-m", "pip", "install", "-q", str(wheel)])  # its dependencies
    env = {**os.environ, "IK_JIT": "0"}  # the wheel's own _C, or fail
    proc = run([venv, "-m", "implicit_kernels", "demo", "--scales", "2"], cwd=tmp_path, env=env)
    assert '"auto" picks: cpu' in proc.stdout
    site = run([venv, "-c", "import implicit_kernels._C as c; print(c.__file__)"],
               cwd=tmp_path, env=env).stdout
    assert "site-packages" in site
