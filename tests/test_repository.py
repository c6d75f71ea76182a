"""The repository as a user clones it: every tracked file stands on its own (no pointer
outside the repository), Python passes ruff, C++/CUDA passes clang-format, and the
package's application modules are reachable from a bare ``import implicit_kernels``, and
only they import ``models``, which nothing below them imports."""
from __future__ import annotations

import ast
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
                                       "csrc/**/*.h", "csrc/**/*.cu", "tests/**/*.cpp",
                                       "tests/**/*.h", "tests/**/*.cu")]
    assert sources
    proc = subprocess.run([tool, "--dry-run", "-Werror", *sorted(set(sources))], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_application_modules_load_on_attribute_access():
    code = ("import sys, implicit_kernels as ik\n"
            "assert not {'implicit_kernels.apps', 'models'} & set(sys.modules)\n"
            "assert callable(ik.apps.weights.load_model) and callable(ik.apps.upscale.upscale)\n"
            "assert 'implicit_kernels.apps.weights' in sys.modules\n"
            "for package in (ik, ik.apps):\n"
            "    try:\n        package.no_such_module\n    except AttributeError:\n        pass\n"
            "    else:\n        raise SystemExit('no AttributeError')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """``(absolute module name, node)`` of each import in ``path``; ``from a import b``
    yields ``a`` and ``a.b`` (``b`` may be a submodule)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, node
            for alias in node.names:
                yield f"{base}.{alias.name}", node


def test_nothing_below_the_application_layer_imports_it():
    apps = ROOT / "implicit_kernels" / "apps"
    below = [p for p in (ROOT / "implicit_kernels").rglob("*.py") if apps not in p.parents]
    below += list((ROOT / "models").rglob("*.py"))
    assert len(below) > 20
    hits = [f"{p.relative_to(ROOT)}:{node.lineno}: {name}" for p in below
            for name, node in _imports(p)
            if name == "implicit_kernels.apps" or name.startswith("implicit_kernels.apps.")]
    assert not hits, "the kernel package or models imports the application layer:\n" + \
        "\n".join(hits)


def test_application_modules_import_models_at_module_level():
    hits = []
    for path in (ROOT / "implicit_kernels" / "apps").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "models" or n.startswith("models.") for n in names):
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not hits, "`models` imported inside a function:\n" + "\n".join(hits)
