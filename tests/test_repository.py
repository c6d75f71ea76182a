"""The repository as a user clones it: every tracked file stands on its own (no pointer
outside the repository), Python passes ruff, C++/CUDA passes clang-format, and the
package's application modules are reachable from a bare ``import implicit_kernels``."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What a tracked file must not say: paths outside the checkout, section citations of
#: documents that are not in it, issue numbers.
#: (Bracketed letters keep a plain grep of the repository for these words from matching
#: this file.)
OUTSIDE = re.compile(r"\.\./[s]hared|\b([S]PEC|[A]LGORITHMS|[P]ERFORMANCE|[E]XEMPLARS)\.md"
                     r"|\b[S]PEC §|\b[i]ssue #?\d+|#\d+ \([i]ssue\)", re.IGNORECASE)


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", *patterns], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def files():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return tracked()


def test_no_file_points_outside_the_repository(files):
    hits = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    spec, algorithms = "SP" + "EC", "ALGOR" + "ITHMS"
    for bad in (f"see ../sha{'red'}/{spec}.md", f"{spec}.md §3", f"{algorithms}.md §4.2",
                "iss" + "ue #12", "fixed in iss" + "ue 7"):
        assert OUTSIDE.search(bad), bad
    for good in ("docs/diif.md", "see docs/hiif.md#parameter-count", "the spec in code"):
        assert not OUTSIDE.search(good), good


def test_python_passes_ruff(files):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements-cpu.txt pins it)")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_cxx_passes_clang_format(files):
    tool = shutil.which("clang-format")
    if tool is None:
        pytest.skip("clang-format is not installed (requirements-cpu.txt pins it)")
    sources = [str(p) for p in tracked("csrc/*.cpp", "csrc/*.h", "csrc/*.cu", "csrc/**/*.cpp",
                                       "csrc/**/*.h", "csrc/**/*.cu")]
    assert sources
    proc = subprocess.run([tool, "--dry-run", "-Werror", *sorted(set(sources))], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_application_modules_load_on_attribute_access():
    code = ("import sys, implicit_kernels as ik\n"
            "assert 'implicit_kernels.weights' not in sys.modules\n"
            "assert callable(ik.weights.load_model) and callable(ik.upscale.upscale)\n"
            "assert 'implicit_kernels.weights' in sys.modules\n"
            "try:\n    ik.no_such_module\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
