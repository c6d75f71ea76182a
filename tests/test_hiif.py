"""HIIF (docs/hiif.md): torch == reference on a grid in float64, both normalisers, global
and strip attention, the hierarchical code, the attention's form and its fp32 sums over
chunks (backends against the reference: tests/test_conformance.py)."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_matches, hiif_params, inputs, linear, random_queries

from implicit_kernels import functional as F
from implicit_kernels import geometry
from implicit_kernels.reference.hiif import attention_block, hierarchical_code, local_coord

BACKENDS = ("reference", "torch")


def decode_with_grads(backend, feat, inp, params, **kw):
    """Output and gradients of a fixed random projection w.r.t. feat, inp, every param."""
    leaves = {"feat": feat.clone().requires_grad_(), "inp": inp.clone().requires_grad_()}
    leaves.update({k: v.clone().requires_grad_() for k, v in params.items()})
    out = F.hiif_decode(leaves["feat"], leaves["inp"], params={k: leaves[k] for k in params},
                        backend=backend, **kw)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), list(leaves.values()))
    return out.detach(), dict(zip(leaves, grads))


def assert_same(a, b):
    out_a, grads_a = a
    out_b, grads_b = b
    assert_matches(out_a, out_b)
    for name in grads_b:
        assert_matches(grads_a[name], grads_b[name], f"grad {name}")


@pytest.mark.parametrize("size,dtype", [
    ((16, 19), torch.float32), ((18, 35), torch.float32), ((18, 21), torch.float32),
    # In float64 the 1e-9 of step 6 moves exact dyadic local positions (×2, ×4) down a bit.
    ((12, 28), torch.float64)], ids=["x2.7", "x3by5", "x3", "x2by4-f64"])
def test_grid_torch_matches_reference(size, dtype):
    feat, inp = inputs(dtype=dtype)
    params = hiif_params(dtype=dtype)
    ref = decode_with_grads("reference", feat, inp, params, size=size)
    assert_same(decode_with_grads("torch", feat, inp, params, size=size), ref)
    # Chunked (multi-pass) decoding gives the same values and gradients.
    assert_same(decode_with_grads("torch", feat, inp, params, size=size, chunk_size=101), ref)


def test_normalizers_differ():
    feat, inp = inputs()
    params = hiif_params()
    out = [F.hiif_decode(feat, inp, (13, 15), params, normalizer=nz, backend="torch")
           for nz in ("n", "sqrt_n")]
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_attention_is_global():
    """Each query's output depends on the others (through the attention sums)."""
    feat, inp = inputs()
    params = hiif_params()
    coord, cell = random_queries(2, 60)
    whole = F.hiif_decode(feat, inp, None, params, coord=coord, cell=cell, backend="torch")
    half = F.hiif_decode(feat, inp, None, params, coord=coord[:, :30], cell=cell[:, :30],
                         backend="torch")
    assert (whole[:, :30] - half).abs().max() > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_strip_attention(backend):
    feat, inp = inputs()
    params = hiif_params()
    size, rows = (16, 19), 5
    strips = F.hiif_decode(feat, inp, size, params, attention="strip", strip_rows=rows,
                           backend=backend, chunk_size=23)
    whole = F.hiif_decode(feat, inp, size, params, backend=backend)
    assert (strips - whole).abs().max() > 1e-4
    # Strip mode equals decoding each strip of rows as its own query list.
    coord = geometry.make_coord(size).unsqueeze(0).expand(2, -1, -1, -1)
    cell = torch.tensor([2 / size[0], 2 / size[1]]).expand(2, rows * size[1], 2)
    for r0 in range(0, size[0], rows):
        c = coord[:, r0:r0 + rows].reshape(2, -1, 2)
        got = F.hiif_decode(feat, inp, None, params, coord=c, cell=cell[:, :c.shape[1]],
                            backend=backend)
        assert_matches(strips[:, :, r0:r0 + rows].flatten(2).transpose(1, 2), got)


def test_hierarchical_code_and_reflection():
    """docs/hiif.md#forward-pass, steps 4 and 6, on hand-picked values."""
    local = torch.tensor([[0.0, 0.3], [0.75, 0.999]])
    bits = torch.stack([hierarchical_code(local, level) for level in range(3)])
    # 0.3 = 0.0100..., 0.75 = 0.11, 0.999 = 0.1111...; 0 (minus 1e-9, clipped) = 0.
    expected = torch.tensor([[[0, 0], [1, 1]], [[0, 1], [1, 1]], [[0, 0], [0, 1]]],
                            dtype=torch.float32)
    assert torch.equal(bits, expected)
    rel = torch.tensor([[0.0, -0.25], [0.5, 0.25]])
    assert torch.allclose(local_coord(rel, (4, 8)),
                          torch.tensor([[0.25, 0.125 + 0.25], [0.5, 0.25]]))


def test_attention_is_the_papers_form():
    """docs/hiif.md#multi-head-linear-attention: the paper's ``V (K̂ᵀ Q̂) / √n`` (LayerNorm on K
    and Q) is the
    derivative's block with each head's q and v projections exchanged."""
    b, n, c, heads = 2, 20, 32, 4
    d = c // heads
    gen = torch.Generator().manual_seed(5)
    w_q, w_k, w_v, proj1, proj2 = (linear(c, c, gen=gen) for _ in range(5))
    ln_q, ln_k = [(1 + 0.2 * torch.randn(d, generator=gen), 0.2 * torch.randn(d, generator=gen))
                  for _ in range(2)]
    x = torch.randn(b, n, c, generator=gen)

    def project(wb):
        return torch.nn.functional.linear(x, *wb).view(b, n, heads, d)

    q = torch.nn.functional.layer_norm(project(w_q), (d,), *ln_q)
    k = torch.nn.functional.layer_norm(project(w_k), (d,), *ln_k)
    att = torch.einsum("bnhj,bhje->bnhe", project(w_v), torch.einsum("bmhj,bmhe->bhje", k, q))
    r = x + att.reshape(b, n, c) / n ** 0.5
    gelu, lin = torch.nn.functional.gelu, torch.nn.functional.linear
    expected = x + lin(gelu(lin(r, *proj1)), *proj2)

    # Per head, the derivative's chunks are (q, k, v) = the paper's (V, K, Q).
    per_head = [torch.stack([t.view(heads, d, *t.shape[1:]) for t in parts], dim=1)
                for parts in zip(w_v, w_k, w_q)]
    block = {"qkv": (per_head[0].reshape(3 * c, c), per_head[1].reshape(3 * c)),
             "heads": heads, "kln": ln_k, "vln": ln_q, "proj1": proj1, "proj2": proj2}
    assert_matches(attention_block(x, block, "sqrt_n"), expected)


def test_attention_sums_over_chunks_add_in_fp32(monkeypatch):
    """The per-chunk ``Σ k̂ᵀv̂`` of a half-precision decode add in fp32: in bf16, a running
    sum of 1 and 255 chunks of 1/256 would stay 1 (each 1/256 is under half an ulp)."""
    from implicit_kernels.ops import hiif as orchestration

    chunks = iter([torch.ones(1, 1, 1, 1, dtype=torch.bfloat16)]
                  + [torch.full((1, 1, 1, 1), 1 / 256, dtype=torch.bfloat16)] * 255)
    seen = {}

    def decode_chunk(coord, cell, params, mats, norm, size, suffix, centres=(), buffer=None):
        seen["mat"] = mats[0]
        return coord.new_zeros(*coord.shape[:2], 3)

    monkeypatch.setattr(orchestration, "check_coordinates_constant", lambda *args: None)
    monkeypatch.setattr(orchestration, "_features", lambda *args: None)
    monkeypatch.setattr(orchestration, "_stats", lambda x, block, suffix="": next(chunks))
    monkeypatch.setattr(orchestration, "_decode", decode_chunk)
    monkeypatch.setattr(orchestration, "bilinear_skip", lambda inp, coord: 0)
    coord = torch.zeros(1, 256, 2)
    orchestration.decode(torch.zeros(1, 1, 2, 2), None, coord, coord, {"attention": [{}]},
                         chunk_size=1)
    expected = torch.tensor((1 + 255 / 256) / 256).to(torch.bfloat16)
    assert seen["mat"].dtype == torch.bfloat16 and seen["mat"].item() == expected.item()


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
def test_no_queries_give_zero_gradients(backend):
    """A decode of zero queries is a B×0×3 output a backward runs through: every gradient
    zero (the other decoders behave so; HIIF's early return once cut the graph)."""
    feat, inp = torch.randn(2, 8, 4, 5), torch.randn(2, 3, 4, 5)
    empty = torch.zeros(2, 0, 2)
    out, grads = decode_with_grads(backend, feat, inp, hiif_params(), size=None,
                                   coord=empty, cell=empty)
    assert out.shape == (2, 0, 3)
    for name, grad in grads.items():
        assert grad is not None and not grad.any(), name
