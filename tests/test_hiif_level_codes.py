"""HIIF level codes at exact ties (docs/hiif.md): ``level_codes="public"`` reproduces the
public HIIF code's float32 level codes bit for bit on tie-heavy integer scales (×2, ×3,
×4) and a non-tie one, in the torch backend and the C++ operators (``cpu``; the Triton
kernels' codes: tests/test_triton_hiif.py); ``"project"`` (default) keeps the project's
rule; backends that cannot run the mode here refuse it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf
from helpers import assert_matches

import models
from implicit_kernels import _extension, backends, geometry
from implicit_kernels import functional as F
from implicit_kernels.torch_impl.hiif import _Decoder, prepare_hiif

#: (LR size, output size): ×2, ×3, ×4 (ties), ×2 by ×3, and 6×6 → 13×13 (no ties).
CASES = {"x2": ((5, 5), (10, 10)), "x3": ((5, 5), (15, 15)), "x4": ((4, 6), (16, 24)),
         "x2-by-x3": ((7, 5), (14, 15)), "no-tie": ((6, 6), (13, 13))}
LEVELS = 6


def _liif_make_coord(shape):
    """LIIF's make_coord, as the public code builds query grids and LR centres (float32)."""
    seqs = [(-1 + 1 / n) + (2 / n) * torch.arange(n).float() for n in shape]
    return torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1)


def _public_bits(lr, out):
    """The public code's level codes (``Q×L×2``) for a whole output grid: the (-1, -1)
    shift with its ±1e-6, nearest LR centre by grid_sample, rel in LR pixels, the
    reflection of non-positive components, then digit l+1 of clip(local - 1e-9)."""
    (h, w) = lr
    coord = _liif_make_coord(out)[None]                               # 1×H×W×2
    pos = _liif_make_coord(lr).permute(2, 0, 1)[None]
    shifted = coord.clone()
    shifted[..., 0] += -1 / h + 1e-6
    shifted[..., 1] += -1 / w + 1e-6
    shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
    centre = nnf.grid_sample(pos, shifted.flip(-1), mode="nearest", align_corners=False)
    rel = coord.permute(0, 3, 1, 2) - centre
    rel[:, 0] *= h / 2
    rel[:, 1] *= w / 2
    rel = rel.permute(0, 2, 3, 1).reshape(-1, 2)
    positive = (rel > 0).float()
    local = positive * rel + (1 - positive) * (torch.tensor([1 / h, 1 / w]) - rel)
    return torch.stack([torch.floor(torch.clip(local - 1e-9, 0, 1) * 2 ** (level + 1)) % 2
                        for level in range(LEVELS)], dim=1)


def _params(seed=0):
    torch.manual_seed(seed)
    model = models.make("edsr-baseline-hiif", encoder_kwargs={"n_resblocks": 1, "n_feats": 4},
                        dim=16, hidden_dim=16, levels=LEVELS, heads=4)
    return model, F._hiif_params(model.decoder_params(), torch.zeros(1, 4, 1, 1))


def _torch_bits(lr, out, centres):
    """The level codes the torch backend feeds its levels, for a whole grid."""
    model, p = _params()
    feat = torch.randn(1, 4, *lr)
    pix = geometry.grid_pixels(out, 1)
    coord = geometry.pixel_coord(pix, out, torch.float32, centres)
    cell = torch.tensor([2 / out[0], 2 / out[1]]).expand_as(coord)
    decoder = _Decoder(lr, prepare_hiif(feat, p), 1.0, centres)
    return decoder.level0(coord, cell)[1][0]


def _cpu_bits(lr, out, centres):
    """The level codes of the C++ operators (``hiif_codes``, the bits their level kernels
    compute), for a whole grid."""
    coord = geometry.pixel_coord(geometry.grid_pixels(out, 1)[0], out, torch.float32, centres)
    return torch.ops.implicit_kernels.hiif_codes(coord, *lr, LEVELS, centres == "public")


needs_extension = pytest.mark.skipif(not _extension.available(),
                                     reason="; ".join(_extension.reasons()))


@pytest.mark.parametrize("case", list(CASES))
def test_public_codes_bit_for_bit(case):
    lr, out = CASES[case]
    assert torch.equal(_torch_bits(lr, out, "public"), _public_bits(lr, out))


@needs_extension
@pytest.mark.parametrize("centres", geometry.CENTRES)
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_codes_equal_torch_bit_for_bit(case, centres):
    lr, out = CASES[case]
    assert torch.equal(_cpu_bits(lr, out, centres), _torch_bits(lr, out, centres))
    if centres == "public":
        assert torch.equal(_cpu_bits(lr, out, centres), _public_bits(lr, out))


def test_grid_positions_follow_the_mode():
    pix = geometry.grid_pixels((10, 13), 1)[0]
    public = geometry.pixel_coord(pix, (10, 13), centres="public")
    assert torch.equal(public, _liif_make_coord((10, 13)).view(-1, 2))
    assert torch.equal(geometry.pixel_coord(pix, (10, 13)),
                       geometry.make_coord((10, 13)).view(-1, 2))
    assert not torch.equal(public, geometry.pixel_coord(pix, (10, 13)))
    with pytest.raises(ValueError, match="centres must be one of"):
        geometry.axis_centres(4, centres="exact")


@pytest.mark.parametrize("case", list(CASES))
def test_project_codes_break_ties_their_own_way(case):
    """The project's default differs from the public code exactly where ties are: 64 of
    100 pixels at 5×5 → 10×10; none at 6×6 → 13×13."""
    lr, out = CASES[case]
    differ = (_torch_bits(lr, out, "project") != _public_bits(lr, out)).flatten(1).any(1)
    if case == "no-tie":
        assert not differ.any()
    else:
        assert differ.any()
    if case == "x2":
        assert int(differ.sum()) == 64


def _decode(model, lr, out, backend, level_codes, seed=1):
    torch.manual_seed(seed)
    inp = torch.randn(1, 3, *lr)
    with torch.no_grad():
        return model(inp, out, backend=backend, level_codes=level_codes)


def _fused(name):
    """The fused backends implementing level_codes="public" that can run here."""
    return [] if backends.unavailable_reasons(name, "hiif_public_codes") else [name]


@pytest.mark.parametrize("case", ["x2", "x3", "x4", "no-tie"])
def test_reference_and_torch_agree_in_both_modes(case):
    model, _ = _params(2)
    lr, out = CASES[case]
    for mode in ("project", "public"):
        ref = _decode(model, lr, out, "reference", mode)
        for backend in ["torch", *_fused("cpu"), *_fused("triton")]:
            got = _decode(model, lr, out, backend, mode)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    project = _decode(model, lr, out, "reference", "project")
    public = _decode(model, lr, out, "reference", "public")
    if case == "no-tie":
        torch.testing.assert_close(public, project, rtol=1e-5, atol=1e-5)
    else:
        assert (public - project).abs().amax() > 1e-3


def test_model_option_and_default():
    model, _ = _params(3)
    assert model.level_codes == "project"
    public_model = models.make("edsr-baseline-hiif",
                               encoder_kwargs={"n_resblocks": 1, "n_feats": 4}, dim=16,
                               hidden_dim=16, levels=LEVELS, heads=4, level_codes="public")
    public_model.load_state_dict(model.state_dict())
    torch.testing.assert_close(_decode(public_model, (5, 5), (10, 10), "torch", None),
                               _decode(model, (5, 5), (10, 10), "torch", "public"))
    with pytest.raises(ValueError, match="level_codes"):
        models.make("edsr-baseline-hiif", level_codes="exact")
    feat = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="level_codes"):
        F.hiif_decode(feat, torch.randn(1, 3, 5, 5), (10, 10), model.decoder_params(),
                      level_codes="exact")


@needs_extension
def test_cpu_public_mode_values_and_grads_equal_reference():
    """Every gradient, batch 2, chunked, at a tie-heavy scale (×3 by ×2)."""
    model, _ = _params(5)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.decoder_params().items()}
    feat = torch.randn(2, 4, 5, 6, requires_grad=True)
    inp = torch.randn(2, 3, 5, 6, requires_grad=True)
    upstream = torch.randn(2, 3, 15, 12)
    results = {}
    for backend, chunk in (("reference", None), ("cpu", 37)):
        out = F.hiif_decode(feat, inp, (15, 12), params, level_codes="public", backend=backend,
                            chunk_size=chunk or F.DEFAULT_CHUNK_SIZE)
        results[backend] = (out.detach(),
                            torch.autograd.grad(out, [feat, inp, *params.values()], upstream))
    assert_matches(results["cpu"][0], results["reference"][0])
    for key, g, g_ref in zip(["feat", "inp", *params], results["cpu"][1], results["reference"][1]):
        assert_matches(g, g_ref, f"grad of {key}")


def test_fused_backends_without_the_public_mode_refuse_it():
    """Every backend implements level_codes="public" (triton's kernels take the
    operators' public_centres flag too); the cuda operators need a CUDA build, so they
    refuse it here; auto picks cpu where the extension is built, else torch."""
    feat = torch.randn(1, 4, 5, 5)
    assert backends.auto_choice("hiif_public_codes", feat) == ("cpu" if _fused("cpu") else "torch")
    assert not any("does not implement" in reason for name in backends.BACKENDS
                   for reason in backends.unavailable_reasons(name, "hiif_public_codes", feat))
    model, _ = _params(4)
    for name in ("cuda",):
        with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run hiif_public_codes"):
            F.hiif_decode(feat, torch.randn(1, 3, 5, 5), (10, 10), model.decoder_params(),
                          level_codes="public", backend=name)
    out = F.hiif_decode(feat, torch.randn(1, 3, 5, 5), (10, 10), model.decoder_params(),
                        level_codes="public")
    assert out.shape == (1, 3, 10, 10)
