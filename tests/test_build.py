"""Packaging and build: the extension loads and matches the running torch, the loader
degrades gracefully, the environment report runs, and the build configuration keeps
torch out of pip's hands."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import tomllib
import torch

from implicit_kernels import _extension

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so module caches and sys.modules are clean)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader with its cache cleared before and after the test."""
    _extension._reset()
    yield _extension
    monkeypatch.undo()
    _extension._reset()


def test_extension_loads():
    assert _extension.available(), "; ".join(_extension.reasons())
    assert _extension.reasons() == []
    import implicit_kernels._C  # noqa: F401  (the import itself is the test)

    for op in ("diif_slices", "ensemble_neighbours", "ensemble_weights", "slice_ensemble_weights"):
        assert hasattr(torch.ops.implicit_kernels, op), op


def test_metadata_matches_running_torch():
    if not _extension.available():
        pytest.skip("; ".join(_extension.reasons()))
    info = _extension.build_info()
    assert info["torch"] == torch.__version__
    assert info["with_cuda"] == _extension.with_cuda()
    if info["with_cuda"]:
        assert info["cuda"] == torch.version.cuda
        assert info["cuda_arch_list"]
    else:
        assert info["cuda"] is None
    # The JSON beside the library (read when it cannot load) agrees with the library.
    module = _extension.load()
    sidecar = Path(module.__file__).with_name("_C_build.json")
    assert sidecar.exists(), f"{sidecar} missing: setup.py writes it at build time"
    on_disk = json.loads(sidecar.read_text())
    assert on_disk["torch"] == info["torch"] and on_disk["with_cuda"] == info["with_cuda"]


def test_info_runs():
    proc = subprocess.run([sys.executable, "-m", "implicit_kernels.info"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"torch            {torch.__version__}" in proc.stdout
    assert "extension _C" in proc.stdout and "backends" in proc.stdout


def test_import_works_without_extension():
    # `None` in sys.modules makes `import implicit_kernels._C` fail as if it were not built.
    proc = run_python(
        "import sys; sys.modules['implicit_kernels._C'] = None\n"
        "import implicit_kernels, implicit_kernels.geometry\n"
        "from implicit_kernels import _extension\n"
        "assert not _extension.available() and not _extension.with_cuda()\n"
        "print(_extension.reasons()[0])\n"
        "import implicit_kernels.info as info; info.main()\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "implicit_kernels._C is not built" in proc.stdout
    assert "pip install --no-build-isolation -e ." in proc.stdout
    assert "extension _C     not available" in proc.stdout


def test_undefined_symbol_reports_build_torch(fresh_loader, monkeypatch, tmp_path):
    def broken():
        raise ImportError("_C.so: undefined symbol: _ZN3c104impl8GPUTrace9haveStateE")

    sidecar = tmp_path / "_C_build.json"
    sidecar.write_text(json.dumps({"torch": "2.11.0+cu130", "cuda": "13.0", "with_cuda": True}))
    monkeypatch.setattr(fresh_loader, "_import_c", broken)
    monkeypatch.setattr(fresh_loader, "_SIDECAR", str(sidecar))
    assert not fresh_loader.available()
    (reason,) = fresh_loader.reasons()
    assert reason == (f"implicit_kernels._C was built for torch 2.11.0+cu130, you have torch "
                      f"{torch.__version__}: reinstall with "
                      "`pip install --no-build-isolation -e .`")
    with pytest.raises(_extension.ExtensionUnavailable, match="built for torch 2.11.0"):
        fresh_loader.load()
    assert fresh_loader.build_info()["torch"] == "2.11.0+cu130"


def test_load_failure_without_metadata(fresh_loader, monkeypatch, tmp_path):
    def broken():
        raise OSError("libfoo.so: cannot open shared object file")

    monkeypatch.setattr(fresh_loader, "_import_c", broken)
    monkeypatch.setattr(fresh_loader, "_SIDECAR", str(tmp_path / "missing.json"))
    (reason,) = fresh_loader.reasons()
    assert "failed to load (libfoo.so" in reason and "--no-build-isolation" in reason


def test_loaded_library_for_other_torch_is_refused(fresh_loader, monkeypatch):
    # Symbols can happen to resolve across torch versions; the compiled-in metadata still
    # tells, and the library is not used.
    fake = types.SimpleNamespace(TORCH_VERSION="2.0.0+cpu", CUDA_VERSION="", CUDA_ARCH_LIST="",
                                 WITH_CUDA=0)
    monkeypatch.setattr(fresh_loader, "_import_c", lambda: fake)
    assert not fresh_loader.available() and not fresh_loader.with_cuda()
    assert "built for torch 2.0.0+cpu" in fresh_loader.reasons()[0]


def test_cuda_mismatch_is_refused(fresh_loader, monkeypatch):
    fake = types.SimpleNamespace(TORCH_VERSION=torch.__version__, CUDA_VERSION="11.8",
                                 CUDA_ARCH_LIST="8.0", WITH_CUDA=1)
    monkeypatch.setattr(fresh_loader, "_import_c", lambda: fake)
    assert not fresh_loader.available()
    assert "built for CUDA 11.8" in fresh_loader.reasons()[0]


def test_build_requirements_exclude_torch():
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert not [r for r in build["requires"] if r.lower().startswith("torch")], build["requires"]
    pins = (ROOT / "requirements-cpu.txt").read_text().split()
    assert "torch==2.13.0" in pins


def test_setup_without_torch_installs_the_python_package(tmp_path):
    # setup.py run where torch cannot be imported (pip's isolated build environment): the
    # package installs without _C, which compiles on first use.
    proc = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "sys.argv = ['setup.py', '--name']\n"
        "import runpy; runpy.run_path('setup.py', run_name='__main__')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "implicit-kernels"
    assert "compiles against your torch on first use" in proc.stdout
    assert "python -m implicit_kernels build" in proc.stdout


def test_missing_extension_with_first_use_builds_off_says_how_to_build():
    proc = run_python(
        "import os, sys; os.environ['IK_JIT'] = '0'; sys.modules['implicit_kernels._C'] = None\n"
        "from implicit_kernels import _extension\n"
        "print(_extension.reasons()[0])\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install --no-build-isolation -e ." in proc.stdout
    assert "unset IK_JIT=0" in proc.stdout


def test_build_config_is_the_one_source_list():
    """setup.py and the build on first use compile the same files with the same flags."""
    from implicit_kernels import _build_config as config
    root = config.project_root()
    assert root == str(ROOT)
    cpu = config.sources(root, with_cuda=False)
    assert cpu and all(p.endswith(".cpp") for p in cpu)
    assert set(cpu) < set(config.sources(root, with_cuda=True))
    assert "-g0" in config.cxx_flags(False, []) and "-g" in config.cxx_flags(True, [])
    assert "config.sources(ROOT" in (ROOT / "setup.py").read_text()
