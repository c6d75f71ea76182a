"""Decode ×30 from a 256×256 feature map (7680×7680) with DIIF at the papers' widths, to
show decoding runs in bounded memory (bench/NOTES.md). Run under ``/usr/bin/time -v``
for the peak resident set size; prints the elapsed time."""
import argparse
import time

import torch

import implicit_kernels.functional as F
import models


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="feature map side")
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = models.make("edsr-baseline-diif").eval()
    feat = torch.randn(1, 64, args.size, args.size)
    out_size = (args.size * args.scale, args.size * args.scale)
    start = time.perf_counter()
    with torch.no_grad():
        out = F.diif_decode(feat, out_size, model.decoder_params(), backend=args.backend)
    print(f"{tuple(feat.shape)} -> {tuple(out.shape)} with backend {args.backend!r}: "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
