"""Every Triton kernel of every decoder compiles for sm_90, without a GPU (``pytest -s``
prints registers, spills and shared memory; ptxas spills past 255 registers rather than
fail, so those are reported, not asserted).

The interpreter, which runs the other Triton tests on CPU, does not catch GPU-only
compile errors (layouts, shapes of loop-carried values, dtypes of ``tl.dot`` operands).
scripts/triton_compile_check.py records the kernels' signatures from the decoders'
forward and backward passes in a subprocess under the interpreter, then this process
compiles its quick configuration (ROWS 16, BLOCK_N 32, 4 warps, 2 stages; bf16 and
tf32) with triton's bundled ptxas.  Takes about two minutes on two cores.
"""
import importlib.util
import os
import pathlib
import pkgutil
import sys

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles for a GPU: run without TRITON_INTERPRET=1", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import triton_compile_check as check  # noqa: E402

if not os.path.exists(check.PTXAS):
    pytest.skip(f"triton's bundled ptxas is absent ({check.PTXAS})", allow_module_level=True)


@pytest.fixture(scope="module")
def launches():
    return check.record()


def _kernels(decoder):
    """The names of the ``*_kernel`` functions (the launched ones, by convention) of
    ``decoder``'s module, or of the modules of its package (``triton/hiif/``)."""
    module = importlib.import_module(f"implicit_kernels.triton.{decoder}")
    modules = [module] + [importlib.import_module(f"{module.__name__}.{info.name}")
                          for info in pkgutil.iter_modules(getattr(module, "__path__", []))]
    return {name for m in modules for name in vars(m) if name.endswith("_kernel")}


@pytest.mark.parametrize("decoder", check.DECODERS)
def test_kernels_compile_for_sm90(decoder, launches):
    mine = [launch for launch in launches if launch.decoder == decoder]
    for dtype in ("fp32", "bf16"):
        recorded = {launch.name for launch in mine if launch.dtype == dtype}
        assert recorded == _kernels(decoder), f"{dtype} forward and backward launches"
    problems = []
    for build in check.builds(mine, quick=True):
        regs, line = check.check(build)
        print(line)
        if regs is None:  # the compile failed; line holds the error
            problems.append(line)
    assert not problems, "\n".join(problems)
