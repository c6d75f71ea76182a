"""The "triton" backend for DLTE and DIIF's "w/o se" ablation against the reference:
values and every gradient at integer, non-integer and asymmetric scales, batch 2, chunked
= unchunked, pixel queries, opcheck and torch.compile.

Runs on a GPU, or on CPU tensors under Triton's interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_diif_variants.py`` (fp32, small
shapes; tests/test_triton_interpreter.py runs it in its own process)."""
import torch
from diif_variants import VARIANTS
from helpers import (
    triton_device,
)

import implicit_kernels.functional as F
from implicit_kernels import backends

DEVICE = triton_device()

#: Feature map 5×7 → integer ×3, non-integer ×2.7 (14×19) and asymmetric ×3 by ×5.
SIZES = {"x3": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35)}


def test_backend_lists_the_variants():
    feat = torch.zeros(1, 4, 5, 7, device=DEVICE)
    for decoder in VARIANTS:
        assert backends.available_backends(decoder, feat)["triton"][0]


def op_and_args(variant, feat, params, pixels, size, slicing="linear"):
    """The operator and its arguments for a decode, as the backend builds them."""
    from implicit_kernels.triton import diif, dlte
    if variant == "dlte":
        p = dlte.prepare_dlte(feat, F._dlte_params(params, feat))
        return torch.ops.implicit_kernels.dlte_decode_triton, (
            *dlte._op_inputs(p), pixels, *size, slicing)
    p = diif.prepare_diif_without_ensemble(feat, F._diif_params(params, feat, False))
    return torch.ops.implicit_kernels.diif_decode_triton, (
        *diif._op_inputs(p), pixels, *size, slicing, -1, False)
