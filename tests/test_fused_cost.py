"""``cost.fused_mac_terms``, the ``cpu`` backend's split-form MACs, against
``FlopCounterMode`` run over the ``torch`` backend, which computes the same split forms
in PyTorch ops.  Where the two backends differ, the test names the difference:

* FlopCounterMode counts matrix products and convolutions only, so the steps the C++
  kernels run element by element and the count includes are element-wise ops in
  PyTorch, not counted there: the blends (LIIF's and LTE's member outputs, DIIF's and
  DLTE's vertex rows), LTE's and DLTE's frequency products.
* Small linear steps are arranged differently: the ``torch`` backend applies LIIF's cell
  columns once per query and its offset columns per member (the kernel: all four per
  member), DIIF's offset columns per slice and its cell columns and vertex offsets once
  per call (the kernel: all six per slice and vertex), the LTE/DLTE phase once per query
  or call (the kernel: per member or slice and vertex).
* HIIF's application of an attention block computes q alone (the ``torch`` backend: the
  whole qkv projection, or, within one call, none: it reuses the sums' projection).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import models
from implicit_kernels import cost

D = cost.HIDDEN


def _torch_macs(decoder, in_size, out_size, chunk):
    """MACs FlopCounterMode sees in one ``torch`` backend decode (paper widths)."""
    model = models.make(f"edsr-baseline-{decoder}").eval()
    feat = torch.randn(1, cost.FEAT_CHANNELS, *in_size)
    img = torch.rand(1, 3, *in_size) * 2 - 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.decode(feat, img, out_size, backend="torch", chunk_size=chunk)
    return counter.get_total_flops() // 2


def _term(terms, start):
    (value,) = [v for k, v in terms.items() if k.startswith(start)]
    return value


def _member_decoder(decoder, terms, queries):
    """LIIF/LTE: the ``torch`` backend's count from the kernel's."""
    blend = _term(terms, "area-weighted blend")
    if decoder == "liif":  # cell columns per query, offset columns per member
        return sum(terms.values()) - _term(terms, "coordinate columns") - blend \
            + queries * (2 * D + 4 * 2 * D)
    pairs = D // 2  # LTE: the phase Linear per query; φ's products element-wise
    return sum(terms.values()) - _term(terms, "Fourier phases") - blend + queries * 2 * pairs


def _slice_decoder(decoder, terms, pixels, calls):
    """DIIF/DLTE in the G form: the ``torch`` backend's count from the kernel's."""
    rows = _term(terms, "coarse layer 256×256") // (D * D)
    blend = pixels * 4 * D
    g_form = rows * D * D + blend
    assert _term(terms, "fine layer 1 hidden part") == g_form, "sizes chosen for the G form"
    first = _term(terms, "coarse coordinate" if decoder == "diif" else "Fourier phases")
    if decoder == "diif":  # offsets per slice; cell columns and vertex offsets per call
        torch_first = rows // 4 * 4 * D + calls * (2 * D + 4 * 2 * D)
    else:  # the coarse layer is counted by both; the phase Linear once per call
        torch_first = rows * 4 * cost.FEAT_CHANNELS * D + calls * 2 * 2 * cost.FEAT_CHANNELS
    return sum(terms.values()) - first - blend + torch_first


def _hiif(terms, queries, calls):
    head = D // cost.HIIF_HEADS
    applied = _term(terms, "attention q, q·M") // (queries * (3 * D * D + D * head))
    q = applied * queries * D * D
    return sum(terms.values()) - q + (0 if calls == 1 else 3 * q)


@pytest.mark.parametrize("decoder", cost.DECODERS)
@pytest.mark.parametrize("in_size, out_size, chunk", [
    ((5, 6), (25, 30), 1 << 14),   # one call
    ((4, 5), (28, 40), 97),        # calls cutting slices; HIIF's multi-pass attention
])
def test_split_form_count_matches_the_torch_backend(decoder, in_size, out_size, chunk):
    torch.manual_seed(0)
    terms = cost.fused_mac_terms(decoder, in_size, out_size, chunk=chunk)
    pixels = out_size[0] * out_size[1]
    calls = -(-pixels // chunk)
    if decoder in ("liif", "lte"):
        expected = _member_decoder(decoder, terms, pixels)
    elif decoder == "hiif":
        expected = _hiif(terms, pixels, calls)
    else:
        expected = _slice_decoder(decoder, terms, pixels, calls)
    assert _torch_macs(decoder, in_size, out_size, chunk) == expected


def test_diif_counts_the_cheaper_fine_layer_form_per_call():
    """Below 4 slices × vertices per pixel (scale < 4 along rows), z = W_h·Σ_t w_t H_t."""
    pixels = 12 * 10
    terms = cost.fused_mac_terms("diif", (6, 5), (12, 10), chunk=None)
    assert _term(terms, "fine layer 1 hidden part") == pixels * (4 * D + D * D)
    assert _term(terms, "coarse layer 256×256") == 4 * 12 * 5 * D * D  # linear: H_out·W slices


def test_calls_cutting_slices_repeat_their_coarse_stage():
    whole = cost.fused_mac_terms("diif", (4, 5), (28, 40), chunk=None)
    cut = cost.fused_mac_terms("diif", (4, 5), (28, 40), chunk=97)
    assert _term(whole, "coarse layer") == 4 * 28 * 5 * D * D
    assert _term(cut, "coarse layer") > _term(whole, "coarse layer")
    assert cost.fused_macs("liif", (4, 5), (28, 40), chunk=97) == \
        cost.fused_macs("liif", (4, 5), (28, 40), chunk=None)


@pytest.mark.parametrize("args, kwargs, match", [
    (("swinir", (4, 4), (8, 8)), {}, "decoder must be"),
    (("liif", (4, 4), (8, 8)), {"slicing": "constant"}, "DIIF and DLTE only"),
    (("lte", (4, 4), (8, 8)), {"slice_ensemble": False}, "DIIF only"),
    (("diif", (4, 4), (3, 8)), {}, "at least the input"),
])
def test_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cost.fused_mac_terms(*args, **kwargs)
