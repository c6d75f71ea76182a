"""The public ops' contract: output sizes, backend selection, bad input."""
import re

import pytest
import torch
from helpers import conv_params, diif_params, linear, mlp_params

import implicit_kernels.functional as F
from implicit_kernels import backends


def liif_params(c=4, hidden=16):
    return mlp_params("imnet.layers.", [9 * c + 4, hidden, hidden, 3])


@pytest.fixture
def feat():
    return torch.randn(2, 4, 5, 7)


@pytest.mark.parametrize("size", [(5, 7), (10, 14), (14, 19), (15, 35), (6, 9)])
def test_exact_output_sizes(feat, size):
    assert F.diif_decode(feat, size, diif_params(hidden=16)).shape == (2, 3, *size)
    assert F.liif_decode(feat, size, liif_params()).shape == (2, 3, *size)


def test_auto_picks_a_real_backend(feat):
    assert backends.auto_choice("diif", feat) != "reference"
    params = diif_params(hidden=16)
    auto = F.diif_decode(feat, (14, 19), params)
    explicit = F.diif_decode(feat, (14, 19), params, backend=backends.auto_choice("diif", feat))
    assert torch.equal(auto, explicit)


def test_unknown_backend_is_a_clear_error(feat):
    with pytest.raises(ValueError, match="unknown backend 'cuda-fast'"):
        F.diif_decode(feat, (10, 14), diif_params(hidden=16), backend="cuda-fast")


def test_unavailable_backend_lists_reasons(feat, monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))
    backends.register(backends.Backend(
        "broken", "implicit_kernels.torch_impl", "test", lambda: ["needs a GPU"]))
    with pytest.raises(RuntimeError, match="needs a GPU"):
        F.diif_decode(feat, (10, 14), diif_params(hidden=16), backend="broken")


def test_env_override_of_auto(feat, monkeypatch):
    monkeypatch.setenv("IK_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        F.diif_decode(feat, (10, 14), diif_params(hidden=16))


@pytest.mark.parametrize("bad, error, match", [
    (lambda f: f[0], ValueError, "feat must have 4 dimensions"),
    (lambda f: f[:0], ValueError, "empty batch"),
    (lambda f: f.long(), TypeError, "feat must have dtype"),
    (lambda f: f.numpy(), TypeError, "feat must be a torch.Tensor"),
    (lambda f: f.index_fill(0, torch.tensor([1]), float("nan")), ValueError, "NaN"),
    (lambda f: f.index_fill(0, torch.tensor([0]), float("inf")), ValueError, "infinite"),
    (lambda f: f[:, :0], ValueError, "non-zero channels"),
])
def test_bad_feature_maps(feat, bad, error, match):
    with pytest.raises(error, match=match):
        F.diif_decode(bad(feat), (10, 14), diif_params(hidden=16))
    with pytest.raises(error, match=match):
        F.liif_decode(bad(feat), (10, 14), liif_params())


@pytest.mark.parametrize("size, error, match", [
    ((4, 14), ValueError, "scales below 1"),
    ((10, 6), ValueError, "scales below 1"),
    ((0, 14), ValueError, "positive"),
    ((10,), TypeError, "pair"),
    ((10.5, 14), TypeError, "integers"),
    ("10x14", TypeError, "pair"),
    ((10 ** 6, 10 ** 6), ValueError, "absurdly large"),
])
def test_bad_sizes(feat, size, error, match):
    with pytest.raises(error, match=match):
        F.diif_decode(feat, size, diif_params(hidden=16))


def test_bad_params(feat):
    params = diif_params(hidden=16)
    with pytest.raises(ValueError, match=r"coarse.layers.0.weight.*shape"):
        F.diif_decode(feat[:, :3], (10, 14), params)  # 3 channels: first layer expects 16*4+6
    missing = {k: v for k, v in params.items() if k != "fine.layers.2.bias"}
    with pytest.raises(ValueError, match="fine.layers.2.bias"):
        F.diif_decode(feat, (10, 14), missing)
    with pytest.raises(TypeError, match="params must be a mapping"):
        F.diif_decode(feat, (10, 14), list(params.values()))
    with pytest.raises(TypeError, match="dtype"):
        F.diif_decode(feat.double(), (10, 14), params)
    wrong_out = dict(params, **{"fine.layers.4.weight": torch.randn(4, 16),
                                "fine.layers.4.bias": torch.randn(4)})
    with pytest.raises(ValueError, match="fine.layers.4.weight"):
        F.diif_decode(feat, (10, 14), wrong_out)


def test_bad_options(feat):
    with pytest.raises(ValueError, match="slicing must be one of"):
        F.diif_decode(feat, (10, 14), diif_params(hidden=16), slicing="quadratic")
    with pytest.raises(ValueError, match="chunk_size"):
        F.diif_decode(feat, (10, 14), diif_params(hidden=16), chunk_size=0)


def test_bad_queries(feat):
    params = liif_params()
    coord = torch.rand(2, 10, 2) * 2 - 1
    cell = torch.full((2, 10, 2), 0.1)
    with pytest.raises(ValueError, match="either size"):
        F.liif_decode(feat, (10, 14), params, coord=coord, cell=cell)
    with pytest.raises(ValueError, match="coord and cell"):
        F.liif_decode(feat, None, params, coord=coord)
    with pytest.raises(ValueError, match=r"coord must lie in \[-1, 1\]"):
        F.liif_decode(feat, None, params, coord=coord * 3, cell=cell)
    with pytest.raises(ValueError, match="cell must be positive"):
        F.liif_decode(feat, None, params, coord=coord, cell=-cell)
    with pytest.raises(ValueError, match="cell must have the shape"):
        F.liif_decode(feat, None, params, coord=coord, cell=cell[:, :5])
    with pytest.raises(ValueError, match="coord must have shape"):
        F.liif_decode(feat, None, params, coord=coord[:1], cell=cell[:1])
    with pytest.raises(TypeError, match="coord has dtype"):
        F.liif_decode(feat, None, params, coord=coord.double(), cell=cell)
    with pytest.raises(ValueError, match="NaN"):
        F.liif_decode(feat, None, params,
                      coord=coord.index_fill(1, torch.tensor([3]), float("nan")), cell=cell)


def test_bad_pixels(feat):
    params = diif_params(hidden=16)
    with pytest.raises(ValueError, match="pixels must index inside"):
        F.diif_decode(feat, (10, 14), params, pixels=torch.tensor([[[10, 0]], [[0, 0]]]))
    with pytest.raises(ValueError, match="pixels must index inside"):
        F.diif_decode(feat, (10, 14), params, pixels=torch.tensor([[[0, -1]], [[0, 0]]]))
    with pytest.raises(TypeError, match="pixels must have dtype"):
        F.diif_decode(feat, (10, 14), params, pixels=torch.zeros(2, 3, 2))


def test_empty_query_list(feat):
    out = F.liif_decode(feat, None, liif_params(), coord=torch.zeros(2, 0, 2),
                        cell=torch.ones(2, 0, 2))
    assert out.shape == (2, 0, 3)
    out = F.diif_decode(feat, (10, 14), diif_params(hidden=16),
                        pixels=torch.zeros(2, 0, 2, dtype=torch.long))
    assert out.shape == (2, 0, 3)


def test_non_contiguous_inputs(feat):
    params = diif_params(hidden=16)
    transposed = feat.transpose(2, 3).contiguous().transpose(2, 3)
    assert not transposed.is_contiguous()
    assert torch.equal(F.diif_decode(transposed, (10, 14), params, backend="torch"),
                       F.diif_decode(feat, (10, 14), params, backend="torch"))
    t_params = {k: (v.t().contiguous().t() if v.dim() == 2 else v) for k, v in params.items()}
    torch.testing.assert_close(F.diif_decode(feat, (10, 14), t_params),
                               F.diif_decode(feat, (10, 14), params))


def test_scaled_size():
    from implicit_kernels._validate import scaled_size
    feat = torch.zeros(1, 1, 10, 20)
    assert scaled_size(feat, 2.7) == (27, 54)
    assert scaled_size(feat, (3, 5)) == (30, 100)
    for bad in (0.5, float("nan"), float("inf"), (1, 0.9)):
        with pytest.raises(ValueError, match="scale"):
            scaled_size(feat, bad)


def test_device_mismatch(feat):
    """Parameters or queries on another device than feat are named in the error (meta
    tensors stand in for a second device on machines without a GPU)."""
    params = {k: v.to("meta") if k == "fine.layers.2.weight" else v
              for k, v in diif_params(hidden=16).items()}
    with pytest.raises(ValueError,
                       match=r"params\['fine.layers.2.weight'\] is on meta but feat is on cpu"):
        F.diif_decode(feat, (10, 14), params)
    coord = torch.zeros(2, 3, 2, device="meta")
    with pytest.raises(ValueError, match="coord is on meta"):
        F.liif_decode(feat, None, liif_params(), coord=coord, cell=torch.ones(2, 3, 2))
    with pytest.raises(ValueError, match="pixels is on meta"):
        F.diif_decode(feat, (10, 14), diif_params(hidden=16),
                      pixels=torch.zeros(2, 3, 2, dtype=torch.long, device="meta"))


def _position_params(decoder):
    """Narrow LIIF / LTE / HIIF parameters (for the half-precision position test)."""
    from test_hiif import hiif_params
    if decoder == "liif":
        return mlp_params("imnet.layers.", [9 * 4 + 4, 24, 24, 24, 24, 3])
    if decoder == "lte":
        return {**conv_params("coef", 8, 4), **conv_params("freq", 8, 4),
                "phase.weight": linear(4, 2)[0], **mlp_params("imnet.layers.", [8, 24, 24, 24, 3])}
    return hiif_params(c_enc=4, c_z=32, head_dim=8, hidden=32, seed=1)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("decoder", ["liif", "lte", "hiif"])
def test_half_precision_features_keep_float32_positions(decoder, backend, dtype, tol):
    """A 1,500-pixel-wide output from half-precision features: positions stay float32
    (rounded to fp16 they moved LIIF/LTE outputs by 4-34 %, and fp16 underflowed the
    ensemble's 1e-9 area guard into NaN), so the decode is within ``tol`` of float32."""
    feat, inp = torch.randn(1, 4, 2, 300), torch.randn(1, 3, 2, 300)
    params = _position_params(decoder)

    def decode(f, i, p, name):
        if decoder == "liif":
            return F.liif_decode(f, (3, 1500), p, backend=name)
        return getattr(F, f"{decoder}_decode")(f, i, (3, 1500), p, backend=name)

    with torch.no_grad():
        ref = decode(feat, inp, params, "reference")
        out = decode(feat.to(dtype), inp.to(dtype), {k: v.to(dtype) for k, v in params.items()},
                     backend)
    assert out.dtype == dtype
    assert backends.resolve_queries(backend, decoder, feat.to(dtype))[2] == torch.float32
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < tol, f"relative error {err:.3g}"


def _lte_params(c=4):
    return {**conv_params("coef", 8, c), **conv_params("freq", 8, c),
            "phase.weight": linear(4, 2)[0], **mlp_params("imnet.layers.", [8, 16, 3])}


def test_image_must_match_the_feature_map(feat):
    """LTE, DLTE and HIIF blend in the bilinear up-sampling of the LR image the features
    came from: an image of another size is a mistake, refused rather than resampled."""
    from test_hiif import hiif_params
    from test_lte_dlte import dlte_params
    for inp in (torch.rand(2, 3, 6, 7), torch.rand(2, 3, 5, 8), torch.rand(2, 3, 10, 14)):
        with pytest.raises(ValueError, match=r"inp must have shape \(2, 3, 5, 7\)"):
            F.lte_decode(feat, inp, (10, 14), _lte_params())
        with pytest.raises(ValueError, match=r"inp must have shape \(2, 3, 5, 7\)"):
            F.dlte_decode(feat, inp, (10, 14), dlte_params(4))
        with pytest.raises(ValueError, match=r"inp must have shape \(2, 3, 5, 7\)"):
            F.hiif_decode(feat, inp, (10, 14), hiif_params(c_enc=4, c_z=16, head_dim=8, hidden=16))


@pytest.mark.parametrize("stray", ["imnet.layers.20.", "imnet.layers.1.", "imnet.layers.8."])
def test_stray_layers_are_refused(feat, stray):
    """A stray ``imnet.layers.20.*`` used to be appended as an extra layer; any numbering
    other than 0, 2, 4, ... is refused."""
    params = liif_params()  # layers 0, 2, 4
    params[stray + "weight"], params[stray + "bias"] = linear(3, 3)
    with pytest.raises(ValueError, match=r"numbered 0, 2, 4, \.\.\."):
        F.liif_decode(feat, (10, 14), params)
    diif = diif_params(hidden=16)
    diif["fine.layers.20.weight"], diif["fine.layers.20.bias"] = linear(3, 3)
    with pytest.raises(ValueError, match=r"numbered 0, 2, 4, \.\.\."):
        F.diif_decode(feat, (10, 14), diif)


@pytest.mark.parametrize("key", ["imnet.layers.2.bias_", "encoder.head.0.weight", "freq.weight"])
def test_unknown_keys_are_refused(feat, key):
    params = dict(liif_params(), **{key: torch.zeros(3)})
    with pytest.raises(ValueError, match="not LIIF parameters: " + re.escape(repr(key))):
        F.liif_decode(feat, (10, 14), params)
    lte = dict(_lte_params(), **{"imnet.layers.0.scale": torch.zeros(3)})
    with pytest.raises(ValueError, match="not LTE parameters"):
        F.lte_decode(feat, torch.rand(2, 3, 5, 7), (10, 14), lte)


def test_output_beyond_available_memory_is_refused_before_allocating(feat, monkeypatch):
    from implicit_kernels import _validate
    # 8 images of 46340x46340 (within the per-image pixel bound) need 206 GB as float32.
    with pytest.raises(MemoryError, match=r"needs 192\.0 GiB"):
        F.diif_decode(torch.randn(8, 4, 2, 2), (46340, 46340), diif_params(hidden=16))
    # The bound is what the device has now, not a constant.
    monkeypatch.setattr(_validate, "available_memory", lambda device: 2 ** 20)
    with pytest.raises(MemoryError, match=r"needs 2\.1 MiB but cpu has 1\.0 MiB"):
        F.liif_decode(feat, (300, 300), liif_params())
    monkeypatch.setattr(_validate, "available_memory", lambda device: 2 ** 30)
    assert F.liif_decode(feat, (10, 14), liif_params()).shape == (2, 3, 10, 14)


def test_meta_feature_map_is_a_clear_error(feat):
    with pytest.raises(ValueError, match="meta device"):
        F.diif_decode(feat.to("meta"), (10, 14), diif_params(hidden=16))
    with pytest.raises(ValueError, match="meta device"):
        F.liif_decode(feat.to("meta"), (10, 14), liif_params())


def test_auto_weighs_gradients_and_call_size(feat, monkeypatch):
    """With gradients, "auto" takes "cpu" only from the measured crossing on
    (``backends.CPU_WITH_GRAD_FROM``); forward alone it keeps "cpu"."""
    if backends.unavailable_reasons("cpu", "diif", feat):
        pytest.skip("the cpu backend is not built")
    crossing = backends.CPU_WITH_GRAD_FROM["diif"]
    assert backends.auto_choice("diif", feat, 4096, grad=False) == "cpu"
    assert backends.auto_choice("diif", feat, 4096, grad=True) == "torch"
    assert backends.auto_choice("diif", feat, crossing - 1, grad=True) == "torch"
    assert backends.auto_choice("diif", feat, crossing, grad=True) == "cpu"
    assert backends.auto_choice("dlte", feat, 10 ** 8, grad=True) == "torch"
    assert backends.auto_choice("dlte", feat, 10 ** 8, grad=False) == "cpu"
    assert backends.auto_choice("liif", feat, 1, grad=True) == "cpu"

    seen = []
    choose = backends.auto_choice
    monkeypatch.setattr(backends, "auto_choice", lambda *a: seen.append(a[2:]) or choose(*a))
    params = diif_params(hidden=16)
    F.diif_decode(feat, (10, 14), params)
    F.diif_decode(feat.requires_grad_(), (10, 14), params)
    with torch.no_grad():
        F.diif_decode(feat, (10, 14), params)
    F.diif_decode(feat.detach(), (10, 14), params, pixels=torch.zeros(2, 7, 2, dtype=torch.long))
    coord = torch.zeros(2, 5, 2)
    F.liif_decode(feat.detach(), None, {k: v.requires_grad_() for k, v in liif_params().items()},
                  coord=coord, cell=coord + 0.1)
    assert seen == [(280, False), (280, True), (280, False), (14, False), (10, True)]
