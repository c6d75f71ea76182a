"""Time the LIIF and LTE decoders at the papers' widths (random weights) through several
backends: one feature map, one scale, no grad; best of a few repeats (bench/NOTES.md)."""
import argparse
import time

import torch

import implicit_kernels.functional as F
import models


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=48, help="feature map side")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="cpu,torch,reference")
    args = parser.parse_args()
    torch.manual_seed(0)
    feat = torch.randn(1, 64, args.size, args.size)
    inp = torch.randn(1, 3, args.size, args.size)
    out_size = (args.size * args.scale, args.size * args.scale)
    for decoder in ("liif", "lte"):
        params = models.make(f"edsr-baseline-{decoder}").eval().decoder_params()

        def run(backend):
            if decoder == "liif":
                return F.liif_decode(feat, out_size, params, backend=backend)
            return F.lte_decode(feat, inp, out_size, params, backend=backend)

        outs = {}
        for backend in args.backends.split(","):
            times = []
            with torch.no_grad():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    outs[backend] = run(backend)
                    times.append(time.perf_counter() - start)
            diff = (outs[backend] - outs[next(iter(outs))]).abs().max().item()
            print(f"{decoder} {args.size}x{args.size} x{args.scale} {backend:>9}: "
                  f"{min(times):.3f} s (max |diff| to first {diff:.2e})", flush=True)


if __name__ == "__main__":
    main()
