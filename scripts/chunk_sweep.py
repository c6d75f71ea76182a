"""Time a decoder's forward over ``chunk_size`` values on one device: the first thing to
measure for the GPU backends, where a small chunk pays per-call launches and PyTorch
bookkeeping, and a large one pays memory (``F``'s default, 16,384 queries, was set for
bounded memory on CPU).

Prints, per chunk size, the median wall time (CUDA-synchronised), the peak memory growth
and the largest difference from the unchunked-as-far-as-memory-allows first result.

    python scripts/chunk_sweep.py --decoder diif --backend triton --size 90x160 --scale 16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import implicit_kernels.functional as F
import models
from implicit_kernels.apps.demo import PeakMemory


def decode_fn(decoder, feat, inp, out_size, params):
    """``fn(backend, chunk_size) -> output`` of a decoder's grid decode."""
    def run(backend, chunk):
        kw = {"backend": backend, "chunk_size": chunk}
        if decoder in ("diif", "liif"):
            return getattr(F, f"{decoder}_decode")(feat, out_size, params, **kw)
        return getattr(F, f"{decoder}_decode")(feat, inp, out_size, params, **kw)
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", default="diif",
                        choices=["liif", "lte", "diif", "dlte", "hiif"])
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--size", default="90x160", help="feature map H×W")
    parser.add_argument("--scale", type=float, default=16.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chunks", default="14,16,18,20,22", help="log2 of the chunk sizes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (bench protocol)
    h, w = (int(v) for v in args.size.split("x"))
    out_size = (round(h * args.scale), round(w * args.scale))
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 64, h, w, generator=gen).to(device, dtype)
    inp = torch.randn(1, 3, h, w, generator=gen).to(device, dtype)
    model = models.make(f"edsr-baseline-{args.decoder}").to(device, dtype).eval()
    run = decode_fn(args.decoder, feat, inp, out_size, model.decoder_params())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(f"{args.decoder} {args.backend} {h}x{w} -> {out_size[0]}x{out_size[1]} {args.dtype} "
          f"on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    first = None
    with torch.no_grad():
        for log2 in (int(v) for v in args.chunks.split(",")):
            chunk = 1 << log2
            out = run(args.backend, chunk)  # warm-up: compilation, autotuning, allocator
            sync()
            with PeakMemory(device) as peak:
                run(args.backend, chunk)
                sync()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(args.backend, chunk)
                sync()
                times.append(time.perf_counter() - start)
            first = out if first is None else first
            diff = (out.float() - first.float()).abs().max().item()
            mb = "n/a" if peak.peak is None else f"{peak.peak / 2**20:.0f} MiB"
            print(f"chunk 2^{log2:2d}: {statistics.median(times) * 1e3:9.2f} ms median, "
                  f"peak +{mb}, max diff {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
