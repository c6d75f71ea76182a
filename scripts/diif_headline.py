"""DIIF bf16 on a GPU, the most valuable evidence first (``python scripts/diif_headline.py``):

1. triton (each configuration pinned) against ``torch`` on a crop (9×4 → ×16, same
   weights, bf16): max |Δ|;
2. wall time of the 90×160 → ×16 decode (1440×2560, batch 1) by the triton backend at
   chunks of 2^20 and 2^14 queries, each with every configuration pinned and autotuned;
3. per-kernel time (``triton.testing.do_bench``) of the coarse and fine kernels, each
   configuration of ``launch.CONFIGS``, on one 2^20-query chunk of that decode.

Prints one line per measurement (``name value unit``), flushed, so a cut-off run keeps
what it measured.
"""
from __future__ import annotations

import time

import torch
import triton

import models
from implicit_kernels import cost
from implicit_kernels.triton import launch

DTYPE = torch.bfloat16
SCALE = 16
INPUT = (90, 160)
#: LR size of the crop (→ 144×64).
CROP = (9, 4)


def say(name, value, unit=""):
    print(f"{name} {value} {unit}".rstrip(), flush=True)


def model_and_features(size):
    torch.manual_seed(0)
    model = models.make("edsr-baseline-diif").cuda().to(DTYPE).eval()
    feat = torch.randn(1, cost.FEAT_CHANNELS, *size, device="cuda", dtype=DTYPE)
    return model, feat


def wall(fn, repeat=3):
    """Best of ``repeat`` synchronised wall times (s) of ``fn()`` after one warm call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def crop_check():
    model, feat = model_and_features(CROP)
    size = (CROP[0] * SCALE, CROP[1] * SCALE)
    ref = model.decode(feat, None, size, backend="torch").float()
    for config in launch.CONFIGS:
        with launch.pinned(config):
            out = model.decode(feat, None, size, backend="triton").float()
        say(f"crop_max_abs_diff_vs_torch[{config}]", f"{(out - ref).abs().max().item():.4g}")


@torch.no_grad()
def decode_times():
    model, feat = model_and_features(INPUT)
    size = (INPUT[0] * SCALE, INPUT[1] * SCALE)
    for chunk in (1 << 20, 1 << 14):
        for config in (*launch.CONFIGS, None):
            name = f"decode_1440x2560_chunk{chunk}[{config or 'autotuned'}]"
            try:
                if config is None:
                    seconds = wall(lambda: model.decode(feat, None, size, backend="triton",
                                                        chunk_size=chunk))
                else:
                    with launch.pinned(config):
                        seconds = wall(lambda: model.decode(feat, None, size, backend="triton",
                                                            chunk_size=chunk))
                say(name, f"{seconds * 1e3:.2f}", "ms")
            except Exception as error:  # noqa: BLE001 -- a configuration may not launch
                say(name, f"failed: {type(error).__name__}: {str(error)[:200]}")


@torch.no_grad()
def kernel_times():
    """Per-kernel time of one 2^20-query chunk (the first rows of the decode)."""
    model, feat = model_and_features(INPUT)
    size = (INPUT[0] * SCALE, INPUT[1] * SCALE)
    captured = []
    real_launch = launch.launch

    def capture(kernel, n_rows, *args, **meta):
        captured.append((kernel, n_rows, args, dict(meta)))
        real_launch(kernel, n_rows, *args, **meta)

    launch.launch = capture
    try:
        model.decode(feat, None, size, backend="triton", chunk_size=1 << 20)
    finally:
        launch.launch = real_launch
    seen = set()
    for kernel, n_rows, args, meta in captured:
        name = kernel.fn.__name__
        if name in seen:
            continue
        seen.add(name)
        for config in launch.CONFIGS:
            with launch.pinned(config):
                try:
                    ms = triton.testing.do_bench(
                        lambda: real_launch(kernel, n_rows, *args, **dict(meta)))
                    say(f"kernel {name} rows={n_rows} [{config}]", f"{ms:.3f}", "ms")
                except Exception as error:  # noqa: BLE001
                    say(f"kernel {name} [{config}]", f"failed: {type(error).__name__}")


if __name__ == "__main__":
    say("device", torch.cuda.get_device_name())
    say("versions", f"torch {torch.__version__} triton {triton.__version__}")
    crop_check()
    decode_times()
    kernel_times()
