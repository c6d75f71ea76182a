"""``python -m bench.gpu_prediction``: a roofline prediction of the fused CUDA C++ DIIF,
LIIF and LTE forward kernels (csrc/cuda/*_fused.cu) on an H100 SXM and an H200, made
before any GPU run, to be checked against the first measurement (bench/NOTES.md).

Four ceilings per case; the prediction is the largest time:

* **compute**: the multiply-adds the split forms really do (``cost.fused_mac_terms``) at
  the dense peak of the unit that runs them: tensor cores for bf16/fp16, FMA for fp32;
* **issue**: what the kernels' instructions can reach. ``mma.sync`` (the WMMA API) is not
  Hopper's full-rate ``wgmma``: assumed ``MMA_SYNC_SHARE`` of the dense bf16 peak. The
  fp32 SIMT tile GEMM reads one shared-memory operand per FMA that is not broadcast:
  assumed ``SIMT_SHARE`` of the FMA peak;
* **L2**: every block streams each layer's weights through L2 once per tile of
  ``tile_rows`` rows (the weights, under a megabyte, stay in L2, but every tile reads
  them again): bytes = tiles × weight bytes of its layers, at ``l2_bytes_per_s``;
* **DRAM**: what must cross device memory once: the per-corner or per-LR-pixel projection,
  the per-slice-vertex ``G`` (written, then read back by the fine kernel: too large for L2
  beyond small outputs), the output.

Assumed rates are marked as such; each should be replaced by a measured one (a large
device-to-device copy, a large GEMM) on the first GPU run.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from implicit_kernels import cost


@dataclass(frozen=True)
class Device:
    name: str
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    fp32_flops: float  # FMA (non-tensor) peak
    dram_bytes_per_s: float
    l2_bytes_per_s: float  # assumed, not a datasheet figure


#: Datasheet peaks (dense); L2 bandwidth is an assumption of the order third-party
#: microbenchmarks report for Hopper, to be measured.
DEVICES = (
    Device("H100 SXM", 989.4e12, 66.9e12, 3.35e12, 5.5e12),
    Device("H200", 989.4e12, 66.9e12, 4.8e12, 5.5e12),
)
#: Share of the dense bf16 peak ``mma.sync`` reaches on Hopper (assumed).
MMA_SYNC_SHARE = 0.6
#: Share of the FMA peak a shared-memory-fed SIMT tile GEMM reaches (assumed).
SIMT_SHARE = 0.5
#: Rows (slice-vertex rows, pixels, queries) per block tile of the fused kernels.
TILE_ROWS = 32
WIDTH = cost.HIDDEN
#: Cases of the prediction: (decoder, LR (H, W), scale).
CASES = (("diif", (90, 160), 16), ("diif", (180, 320), 4), ("diif", (180, 320), 12),
         ("liif", (180, 320), 4), ("lte", (180, 320), 4))


@dataclass(frozen=True)
class Prediction:
    decoder: str
    in_size: tuple
    scale: int
    dtype: str
    device: str
    gmac: float
    floor_ms: float  # compute at the dense peak
    issue_ms: float
    l2_ms: float
    dram_ms: float

    @property
    def predicted_ms(self) -> float:
        return max(self.issue_ms, self.l2_ms, self.dram_ms)

    @property
    def bound(self) -> str:
        times = {"issue": self.issue_ms, "L2": self.l2_ms, "DRAM": self.dram_ms}
        return max(times, key=times.get)


def traffic(decoder: str, in_size, out_size, element_bytes: int, tile_rows: int):
    """``(L2 weight bytes, DRAM bytes)`` of one forward decode (batch 1)."""
    h, w = in_size
    pixels = out_size[0] * out_size[1]
    square = WIDTH * WIDTH * element_bytes
    if decoder == "diif":
        rows = 4 * cost.diif_slice_count(in_size, out_size)
        # coarse kernel: the coarse 256×256 layer and fine_wh; fine kernel: one 256×256
        # layer and the 256×3 output (padded to 16 columns).
        l2 = (math.ceil(rows / tile_rows) * 2 * square
              + math.ceil(pixels / tile_rows) * (square + 16 * WIDTH * element_bytes))
        dram = ((h + 1) * (w + 1) * WIDTH + 2 * rows * WIDTH + 3 * pixels) * element_bytes
        return l2, dram
    # LIIF/LTE: four members per query, each through three 256×256 layers and the output.
    l2 = math.ceil(4 * pixels / tile_rows) * (3 * square + 16 * WIDTH * element_bytes)
    dram = (h * w * 2 * WIDTH + 3 * pixels) * element_bytes
    return l2, dram


def predict(decoder, in_size, scale, dtype, device: Device, tile_rows=TILE_ROWS) -> Prediction:
    out_size = (in_size[0] * scale, in_size[1] * scale)
    macs = cost.fused_macs(decoder, in_size, out_size)
    half = dtype == "bf16"
    peak = device.bf16_flops if half else device.fp32_flops
    share = MMA_SYNC_SHARE if half else SIMT_SHARE
    l2, dram = traffic(decoder, in_size, out_size, 2 if half else 4, tile_rows)
    ms = 1e3
    return Prediction(decoder, in_size, scale, dtype, device.name, macs / 1e9,
                      2 * macs / peak * ms, 2 * macs / (peak * share) * ms,
                      l2 / device.l2_bytes_per_s * ms, dram / device.dram_bytes_per_s * ms)


def table(tile_rows=TILE_ROWS) -> str:
    """The prediction of every case, dtype and device as a markdown table."""
    lines = ["| decoder | LR → scale | dtype | device | GMAC | floor ms | issue ms | L2 ms | "
             "DRAM ms | predicted ms | bound |", "|" + "---|" * 11]
    for decoder, in_size, scale in CASES:
        for dtype in ("bf16", "fp32"):
            for device in DEVICES:
                p = predict(decoder, in_size, scale, dtype, device, tile_rows)
                lines.append(
                    f"| {decoder} | {in_size[0]}×{in_size[1]} ×{scale} | {dtype} | {device.name} "
                    f"| {p.gmac:.1f} | {p.floor_ms:.2f} | {p.issue_ms:.2f} | {p.l2_ms:.2f} | "
                    f"{p.dram_ms:.2f} | **{p.predicted_ms:.2f}** | {p.bound} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile-rows", type=int, default=TILE_ROWS)
    args = parser.parse_args(argv)
    print(f"tile rows {args.tile_rows}; mma.sync share {MMA_SYNC_SHARE}, SIMT share "
          f"{SIMT_SHARE}, L2 {DEVICES[0].l2_bytes_per_s / 1e12:g} TB/s (assumed)")
    print(table(args.tile_rows))


if __name__ == "__main__":
    main()
