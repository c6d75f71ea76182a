"""Inputs of the DIIF-family variants, DLTE and DIIF without slice ensemble, shared by
their backend test files (tests/test_ops_cpu_diif_variants.py,
tests/test_triton_diif_variants.py)."""
import torch
from helpers import conv_params, linear, mlp_params

import implicit_kernels.functional as F

VARIANTS = ("dlte", "diif_without_ensemble")


def params_for(variant, c=4, hidden=16, dtype=torch.float32, channels=6, device="cpu"):
    """Narrow random parameters of ``variant`` for ``c`` feature channels."""
    fine = mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3], dtype=dtype)
    if variant == "diif_without_ensemble":
        params = {**mlp_params("coarse.layers.", [9 * c + 6, hidden, hidden], dtype=dtype),
                  **fine}
    else:
        params = {**conv_params("coef", channels, c, dtype=dtype),
                  **conv_params("freq", channels, c, dtype=dtype),
                  "phase.weight": linear(2 * channels, 2, dtype)[0],
                  **mlp_params("coarse.layers.", [4 * channels, hidden, hidden], dtype=dtype),
                  **fine}
    return {k: v.to(device) for k, v in params.items()}


def decode(variant, feat, inp, size, params, **kw):
    """``F``'s decode of ``variant`` (``inp`` is DLTE's skip image; the ablation has none)."""
    if variant == "dlte":
        return F.dlte_decode(feat, inp, size, params, **kw)
    return F.diif_decode(feat, size, params, slice_ensemble=False, **kw)


def leaves(variant, b=2, c=4, h=5, w=7, dtype=torch.float32, device="cpu", **kw):
    """``(feat B×c×h×w, inp B×3×h×w, params)`` requiring grad; ``inp`` only for DLTE, the
    variant that reads it."""
    feat = torch.randn(b, c, h, w, dtype=dtype, device=device, requires_grad=True)
    inp = torch.randn(b, 3, h, w, dtype=dtype, device=device, requires_grad=variant == "dlte")
    params = {k: v.requires_grad_()
              for k, v in params_for(variant, c, dtype=dtype, device=device, **kw).items()}
    return feat, inp, params


def values_and_grads(variant, backend, feat, inp, params, size, upstream, **kw):
    """The decode's values and the gradients of every leaf it reads, for ``upstream``."""
    out = decode(variant, feat, inp, size, params, backend=backend, **kw)
    wrt = [feat, *([inp] if variant == "dlte" else []), *params.values()]
    return out.detach(), torch.autograd.grad(out, wrt, upstream)
