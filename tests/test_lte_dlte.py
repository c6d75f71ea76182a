"""LTE and DLTE (reconstructed): the references against hand computations of
docs/liif-lte.md#lte and docs/dlte.md, DLTE's pixel queries equal the grid (backends
against the reference: tests/test_conformance.py)."""
import math

import pytest
import torch
import torch.nn.functional as nnf
from helpers import assert_matches, conv_params, linear, mlp_params

import implicit_kernels.functional as F
from implicit_kernels import geometry

SIZES = {  # feature map 6×7 → output
    "x1": (6, 7), "x2.7": (16, 19), "x3_by_x5": (18, 35), "x3_odd": (18, 21),
}


def lte_params(c, channels=16, hidden=32, dtype=torch.float32):
    """LTE with ``channels`` coefficients/frequencies (``channels / 2`` pairs)."""
    return {**conv_params("coef", channels, c, dtype=dtype),
            **conv_params("freq", channels, c, dtype=dtype),
            "phase.weight": linear(channels // 2, 2, dtype)[0],
            **mlp_params("imnet.layers.", [channels, hidden, hidden, 3], dtype=dtype)}


def dlte_params(c, channels=8, hidden=32, dtype=torch.float32):
    """DLTE with ``channels``-wide estimators: vertex codes of ``4·channels``."""
    return {**conv_params("coef", channels, c, dtype=dtype),
            **conv_params("freq", channels, c, dtype=dtype),
            "phase.weight": linear(2 * channels, 2, dtype)[0],
            **mlp_params("coarse.layers.", [4 * channels, hidden, hidden], dtype=dtype),
            **mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3], dtype=dtype)}


def leaves(params, dtype=torch.float32, b=2, c=4, h=6, w=7):
    feat = torch.randn(b, c, h, w, dtype=dtype, requires_grad=True)
    inp = torch.randn(b, 3, h, w, dtype=dtype, requires_grad=True)
    return feat, inp, {k: v.requires_grad_() for k, v in params.items()}


def assert_backends_agree(decode, feat, inp, params):
    """``decode(backend)`` gives the same values and gradients (feat, inp, every
    parameter) under "torch" as under "reference"."""
    outs, grads = {}, {}
    upstream = None
    for backend in ("reference", "torch"):
        out = decode(backend)
        upstream = torch.randn_like(out) if upstream is None else upstream
        outs[backend] = out.detach()
        grads[backend] = torch.autograd.grad(out, [feat, inp, *params.values()], upstream)
    assert_matches(outs["torch"], outs["reference"])
    for key, g_torch, g_ref in zip(["feat", "inp", *params], grads["torch"], grads["reference"]):
        assert_matches(g_torch, g_ref, f"grad of {key}")
    return outs["reference"]


def mlp_by_hand(x, params, prefix, n, relu_last):
    for i in range(n):
        x = params[f"{prefix}{2 * i}.weight"] @ x + params[f"{prefix}{2 * i}.bias"]
        if relu_last or i < n - 1:
            x = torch.relu(x)
    return x


# ----------------------------------------------------------------------------------------
# LTE
# ----------------------------------------------------------------------------------------

def test_bilinear_skip_by_hand():
    """The skip samples the LR image bilinearly, row first: on a 2×2 image pixel centres
    sit at ±0.5, so (y, x) is at (y + 0.5, x + 0.5) between them."""
    from implicit_kernels.reference.lte import bilinear_skip
    inp = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    y, x = 0.1, -0.3
    uy, ux = y + 0.5, x + 0.5
    expected = ((1 - uy) * (1 - ux) * inp[0, :, 0, 0] + (1 - uy) * ux * inp[0, :, 0, 1]
                + uy * (1 - ux) * inp[0, :, 1, 0] + uy * ux * inp[0, :, 1, 1])
    got = bilinear_skip(inp, torch.tensor([[[y, x]]], dtype=torch.float64))
    assert_matches(got[0, 0], expected)


def test_lte_single_code_by_hand():
    """1×1 feature map: the four ensemble members are the same code (weights 1/4 each),
    so the output is one Fourier-feature MLP plus the bilinear skip, written out here."""
    dtype = torch.float64
    c, n = 3, 4
    feat = torch.randn(1, c, 1, 1, dtype=dtype)
    inp = torch.randn(1, 3, 1, 1, dtype=dtype)  # the LR image the 1×1 features came from
    params = lte_params(c, channels=2 * n, hidden=5, dtype=dtype)
    y, x = 0.1, -0.3
    cell_y, cell_x = 0.25, 0.4
    coord = torch.tensor([[[y, x]]], dtype=dtype)
    cell = torch.tensor([[[cell_y, cell_x]]], dtype=dtype)
    got = F.lte_decode(feat, inp, None, params, coord=coord, cell=cell, backend="reference")

    f = feat[0, :, 0, 0]
    # A 3×3 conv on a 1×1 zero-padded map sees only its centre tap.
    coef = params["coef.weight"][:, :, 1, 1] @ f + params["coef.bias"]
    freq = params["freq.weight"][:, :, 1, 1] @ f + params["freq.bias"]
    phase = params["phase.weight"]
    phi = torch.stack([freq[2 * i] * y + freq[2 * i + 1] * x  # rel = coord: centre 0, H = W = 1
                       + phase[i, 0] * cell_y + phase[i, 1] * cell_x for i in range(n)])
    feature = coef * torch.cat([torch.cos(math.pi * phi), torch.sin(math.pi * phi)])
    rgb = mlp_by_hand(feature, params, "imnet.layers.", 3, False)
    # Bilinear skip on a 1×1 image (border-clamped): its one pixel everywhere.
    skip = inp[0, :, 0, 0]
    assert_matches(got[0, 0], rgb + skip)
    fast = F.lte_decode(feat, inp, None, params, coord=coord, cell=cell, backend="torch")
    assert_matches(fast, got)


# ----------------------------------------------------------------------------------------
# DLTE
# ----------------------------------------------------------------------------------------

def dlte_loop_oracle(feat, inp, out_size, params):
    """docs/dlte.md#reconstruction with linear slicing for one image, pixel by pixel with
    Python integers (the bilinear skip is taken from grid_sample; the LTE test pins it)."""
    _, _, h, w = feat.shape
    ho, wo = out_size
    maps = {name: nnf.conv2d(feat, params[f"{name}.weight"], params[f"{name}.bias"], padding=1)[0]
            for name in ("coef", "freq")}
    k = maps["coef"].shape[0]

    def group(idx, n_in, n_out):
        return min(math.floor((idx + 0.5) * n_in / n_out), n_in - 1)

    def code(name, a, b):  # the 2×2 LR values sharing corner (a, b), channel c·4 + 2dy + dx
        z = torch.zeros(k, 2, 2, dtype=feat.dtype)
        for dy in range(2):
            for dx in range(2):
                if 0 <= a - 1 + dy < h and 0 <= b - 1 + dx < w:
                    z[:, dy, dx] = maps[name][:, a - 1 + dy, b - 1 + dx]
        return z.reshape(-1)

    def coord(p):
        return torch.tensor([-1 + (2 * p[0] + 1) / ho, -1 + (2 * p[1] + 1) / wo], dtype=feat.dtype)

    scale = torch.tensor([h, w], dtype=feat.dtype)
    phase = params["phase.weight"] @ (torch.tensor([2 / ho, 2 / wo], dtype=feat.dtype) * scale)
    pixels = geometry.grid_pixels(out_size, 1)
    grid = geometry.pixel_coord(pixels, out_size, feat.dtype).flip(-1).unsqueeze(1)
    skip = nnf.grid_sample(inp, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = skip[0, :, 0].reshape(3, ho, wo).clone()
    for r in range(ho):
        for col in range(wo):
            i, j = group(r, h, ho), group(col, w, wo)
            cols = [q for q in range(wo) if group(q, w, wo) == j]
            first, last = (r, cols[0]), (r, cols[-1])
            centre = torch.tensor([-1 + (2 * i + 1) / h, -1 + (2 * j + 1) / w], dtype=feat.dtype)
            d = (coord((r, col)) - centre) * scale
            blended = 0
            for a in (0, 1):
                for b in (0, 1):
                    v = torch.tensor([-1 + 2 * (i + a) / h, -1 + 2 * (j + b) / w], dtype=feat.dtype)
                    rel_first, rel_last = (coord(first) - v) * scale, (coord(last) - v) * scale
                    freq = code("freq", i + a, j + b)
                    phi = torch.stack([
                        freq[2 * p] * rel[0] + freq[2 * p + 1] * rel[1] + phase[p]
                        for p, rel in ((p, rel_first if p % 2 == 0 else rel_last)
                                       for p in range(2 * k))])
                    feature = code("coef", i + a, j + b) * torch.cat(
                        [torch.cos(math.pi * phi), torch.sin(math.pi * phi)])
                    hidden = mlp_by_hand(feature, params, "coarse.layers.", 2, True)
                    opposite = torch.tensor([1 - 2 * a, 1 - 2 * b], dtype=feat.dtype)
                    blended = blended + (d - opposite).abs().prod() / 4 * hidden
            out[:, r, col] += mlp_by_hand(torch.cat([blended, d]), params, "fine.layers.", 3, False)
    return out.unsqueeze(0)


@pytest.mark.parametrize("size", [(5, 7), (6, 9)])
def test_dlte_reference_equals_loop_oracle(size):
    dtype = torch.float64
    feat = torch.randn(1, 3, 2, 3, dtype=dtype)
    inp = torch.randn(1, 3, 2, 3, dtype=dtype)
    params = dlte_params(3, channels=2, hidden=6, dtype=dtype)
    got = F.dlte_decode(feat, inp, size, params, backend="reference")
    assert_matches(got, dlte_loop_oracle(feat, inp, size, params))


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
def test_dlte_pixels_equal_grid(slicing):
    feat, inp, params = leaves(dlte_params(4))
    size = SIZES["x2.7"]
    pixels = torch.stack([torch.randint(0, n, (2, 60)) for n in size], -1)
    got = assert_backends_agree(
        lambda backend: F.dlte_decode(feat, inp, size, params, slicing=slicing, pixels=pixels,
                                      backend=backend, chunk_size=50),
        feat, inp, params)
    grid = F.dlte_decode(feat, inp, size, params, slicing=slicing, backend="torch").detach()
    batch = torch.arange(2).unsqueeze(1)
    assert_matches(got, grid.permute(0, 2, 3, 1)[batch, pixels[..., 0], pixels[..., 1]])


# ----------------------------------------------------------------------------------------
# Both: chunking, float64 gradcheck
# ----------------------------------------------------------------------------------------
