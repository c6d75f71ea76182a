"""Time the ``cpu`` and ``torch`` backends against each other, per decoder, forward and
forward+backward, over output sizes: the measurements behind ``"auto"``'s choice on a CPU
(``implicit_kernels.backends.CPU_AUTO``).

    python scripts/calibrate_auto.py [--threads N] [--repeat 3] [--json out.json]

Paper-width decoders (EDSR-baseline features, 64 channels, hidden 256) with random
weights on random features; the time is the best of ``--repeat`` runs.  A row prints the
output size in queries and the ratio ``cpu / torch`` (below 1: ``cpu`` is faster).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import models

#: (LR side, scale) per measured point: outputs from 400 to 65,536 pixels.
POINTS = [(10, 2), (20, 2), (32, 2), (32, 4), (48, 4), (32, 8)]
DECODERS = ["diif", "liif", "lte", "hiif"]


def _time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(decoder, side, scale, backward, repeat):
    torch.manual_seed(0)
    model = models.make(f"edsr-baseline-{decoder}")
    feat = torch.randn(1, 64, side, side)
    inp = torch.rand(1, 3, side, side) * 2 - 1
    size = (side * scale, side * scale)
    def run(name):
        f = feat.detach().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            y = model.decode(f, inp, size, backend=name)
            if backward:
                y.sum().backward()

    out = {"torch": float("inf"), "cpu": float("inf")}
    for name in out:
        run(name)  # warm-up
    # Interleaved, so a load change on the machine affects both backends alike.
    for _ in range(repeat):
        for name in out:
            out[name] = min(out[name], _time(lambda: run(name), 1))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"threads {args.threads}, torch {torch.__version__}")
    print(f"{'decoder':8} {'pass':8} {'queries':>8} {'torch s':>9} {'cpu s':>9} {'cpu/torch':>9}")
    for decoder in DECODERS:
        for backward in (False, True):
            for side, scale in POINTS:
                t = measure(decoder, side, scale, backward, args.repeat)
                q = (side * scale) ** 2
                rows.append({"decoder": decoder, "backward": backward, "queries": q, **t})
                print(f"{decoder:8} {'fwd+bwd' if backward else 'fwd':8} {q:8d} "
                      f"{t['torch']:9.4f} {t['cpu']:9.4f} {t['cpu'] / t['torch']:9.2f}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
