"""Every configuration of the Triton autotuning lists (forward and backward) gives the
reference's values and
gradients, pinned (``launch.pinned``, as ``IK_TRITON_CONFIG`` does) and chosen by the
autotuner after it has run every configuration in turn on the same buffers (as on a GPU's
first call per key: partial-sum slots a configuration with larger tiles leaves unwritten
must not keep what a smaller one wrote there).

Runs on a GPU, or on CPU tensors under Triton's interpreter (tests/test_triton_interpreter.py),
where ``launch.tuning`` stands in for the GPU's timer.  Batches of 2 with queries per image
not a multiple of any tile: per-image partial buffers have slots for the smallest tile
while a launch uses larger ones."""

import itertools

import pytest
import torch
from helpers import assert_matches, diif_params, triton_device
from test_hiif import hiif_params, random_queries
from test_triton_diif import decode_with_grads as diif_with_grads
from test_triton_hiif import SMALL, assert_same_as_reference, inputs
from test_triton_liif_lte import assert_triton_equals_reference, leaves

DEVICE = triton_device()

from implicit_kernels.triton import launch  # noqa: E402  (after triton_device's skip)

DECODERS = ("diif", "liif", "lte", "hiif")


def check_decoder(decoder, seed):
    """``decoder``'s triton decode (forward and backward, batch 2) against the reference."""
    torch.manual_seed(seed)
    if decoder == "hiif":
        feat, inp = inputs(seed)
        coord, cell = (t.to(DEVICE) for t in random_queries(2, 37))
        assert_same_as_reference(feat, inp, hiif_params(**SMALL, levels=3, seed=seed),
                                 size=None, coord=coord, cell=cell)
    elif decoder == "diif":
        feat = torch.randn(2, 4, 3, 4, device=DEVICE, requires_grad=True)
        params = {k: v.to(DEVICE).requires_grad_() for k, v in diif_params().items()}
        upstream = torch.randn(2, 3, 7, 9, device=DEVICE)
        out, grads = diif_with_grads(feat, params, (7, 9), "linear", "triton", upstream, None)
        ref, ref_grads = diif_with_grads(feat, params, (7, 9), "linear", "reference", upstream,
                                         None)
        assert_matches(out, ref)
        for key, g, g_ref in zip(["feat", *params], grads, ref_grads):
            assert_matches(g, g_ref, f"grad of {key}")
    else:
        feat, inp, params = leaves(decoder)
        upstream = torch.randn(2, 3, 5, 7, device=DEVICE)
        assert_triton_equals_reference(decoder, feat, inp, params, (5, 7), upstream)


@pytest.mark.parametrize("config", launch.listed_configs(), ids=str)
@pytest.mark.parametrize("decoder", DECODERS)
def test_each_pinned_configuration_equals_reference(decoder, config):
    with launch.pinned(config):
        check_decoder(decoder, 50 + DECODERS.index(decoder))


def _timer(winner):
    """A ``do_bench`` that runs each configuration once and times configuration
    ``winner`` (its index in the kernel's list, benchmarked in order; the forward and
    backward lists are equally long) fastest."""
    assert len(launch.CONFIGS) == len(launch.BACKWARD_CONFIGS)
    calls = itertools.count()

    def do_bench(kernel_call, quantiles):
        kernel_call()
        t = 0.0 if next(calls) % len(launch.CONFIGS) == winner else 1.0
        return [t, t, t]
    return do_bench


@pytest.mark.parametrize("winner", range(len(launch.CONFIGS)),
                         ids=[f"{f}|{b}" for f, b in zip(launch.CONFIGS, launch.BACKWARD_CONFIGS)])
@pytest.mark.parametrize("decoder", ["hiif", "diif"])
def test_first_autotuned_call_equals_reference(decoder, winner):
    with launch.tuning(_timer(winner)):
        check_decoder(decoder, 60 + winner)


def test_pin_from_the_environment(monkeypatch):
    monkeypatch.setenv(launch.PIN_VARIABLE, "32,16,4,3")
    assert launch.fixed_config() == (32, 16, 4, 3)
    assert launch.smallest_rows() == min(16, *[c[0] for c in launch.listed_configs()])
    monkeypatch.setenv(launch.PIN_VARIABLE, "32,16")
    with pytest.raises(ValueError, match="ROWS,BLOCK_N,WARPS,STAGES"):
        launch.fixed_config()


def test_size_buckets():
    """Tiny test grids share a bucket; 2^14- and 2^20-query chunks get their own."""
    assert launch.size_bucket(1) == launch.size_bucket(35) == launch.size_bucket(1024)
    assert launch.size_bucket(1 << 14) == 1 << 14 != launch.size_bucket((1 << 14) + 1)
    assert launch.size_bucket(1 << 20) == launch.size_bucket(1 << 24) == 1 << 20


def test_backward_kernels_tune_over_the_backward_list():
    """Every backward kernel, and no other, autotunes over ``BACKWARD_CONFIGS`` (no
    128-row tile: a backward tile's input and gradient alone fill the register file)."""
    names = {t.fn.fn.__name__ if hasattr(t.fn, "fn") else t.fn.__name__: t.configs
             for t in launch._tuned}
    assert any(name.endswith("backward_kernel") for name in names)
    for name, configs in names.items():
        expected = launch.BACKWARD_CONFIGS if name.endswith("backward_kernel") else launch.CONFIGS
        assert configs == expected, name
    assert max(rows for rows, *_ in launch.BACKWARD_CONFIGS) == 64
