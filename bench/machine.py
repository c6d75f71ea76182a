"""``python -m bench.machine``: the CPU's fp32 FMA peak, from factors measured at run time.

    peak = cores × FMA units × SIMD lanes × 2 flop (a multiply and an add) × clock

* cores: the intra-op threads the benchmark runs with (``torch.get_num_threads()``).
* clock: timed on a chain of dependent integer adds, one per cycle
  (``implicit_kernels::probe_cpu_clock``, best of many short runs), because a virtual
  machine's ``/proc/cpuinfo`` reports the host's nominal clock, not the boost clock it
  runs at.  Measured on one busy core: an all-core AVX load may run slower.
* lanes and units: one core's fp32 FMA throughput is timed with AVX2 and with AVX-512
  instructions (``probe_fma_flops``, independent chains, best of many short runs), in flop
  per cycle.  The narrower vector is kept unless the wider one measures clearly more: a CPU
  that executes AVX-512 on 256-bit units (AMD Zen 4) reaches the same flop per cycle with
  either, and its units are 256-bit ones.  Units = that throughput / (2 × lanes),
  rounded.

Where a probe cannot run (no compiled extension, not x86), the factor falls back to what
the machine reports (the clock of ``/proc/cpuinfo``; lanes from its CPU flags, 2 units
assumed) and :attr:`Peak.sources` says so.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch

#: Cycles of one clock-probe run (under a millisecond) and FMAs of one throughput run.
#: Many short runs, best kept: on a busy machine a run the scheduler interrupts only
#: measures slower, and a short one often runs uninterrupted.
CLOCK_CYCLES = 2_000_000
FMA_COUNT = 2_400_000
RUNS = 50
#: fp32 lanes of one FMA instruction, by instruction set.
LANES = {"avx2": 8, "avx512": 16}
#: How much more flop per cycle the wider vector must measure to count as wider units.
WIDER_MARGIN = 1.1


@dataclass
class Peak:
    """The FMA peak and its factors; ``sources`` says how each factor was found and
    ``measured`` holds the raw probe results (fp32 flop per cycle per core by ISA)."""
    cores: int
    units: int | None
    lanes: int | None
    clock_hz: float | None
    sources: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)

    @property
    def gflops(self) -> float | None:
        """fp32 peak in GFLOP/s (``None`` when a factor is unknown)."""
        if None in (self.units, self.lanes, self.clock_hz):
            return None
        return self.cores * self.units * self.lanes * 2 * self.clock_hz / 1e9

    def describe(self) -> str:
        """Every factor with its source, one line each, then the product."""
        clock = "unknown" if self.clock_hz is None else f"{self.clock_hz / 1e9:.3f} GHz"
        lines = [f"cores (torch intra-op threads): {self.cores}",
                 f"FMA units per core: {self.units}  [{self.sources.get('units', '')}]",
                 f"fp32 SIMD lanes per unit: {self.lanes}  [{self.sources.get('lanes', '')}]",
                 f"clock: {clock}  [{self.sources.get('clock', '')}]"]
        gflops = self.gflops
        total = "unknown" if gflops is None else (
            f"{self.cores} × {self.units} × {self.lanes} × 2 × {self.clock_hz / 1e9:.3f} GHz "
            f"= {gflops:,.1f} GFLOP/s")
        return "\n".join(lines + [f"fp32 FMA peak: {total}"])

    def as_dict(self) -> dict:
        return {"cores": self.cores, "units": self.units, "lanes": self.lanes,
                "clock_hz": self.clock_hz, "gflops": self.gflops, "sources": self.sources,
                "measured": self.measured}


def _probes():
    """``torch.ops.implicit_kernels`` when the extension with the probes is loaded, else
    ``None``."""
    from implicit_kernels import _extension

    if not _extension.available():
        return None
    ops = torch.ops.implicit_kernels
    return ops if hasattr(ops, "probe_cpu_clock") else None


def _cpuinfo() -> tuple[float | None, set]:
    """``(reported MHz, CPU flags)`` of the first processor in /proc/cpuinfo."""
    mhz, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "cpu MHz" and mhz is None:
                    mhz = float(value)
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except (OSError, ValueError):
        pass
    return mhz, flags


def _clock(probes) -> tuple[float | None, str]:
    if probes is not None:
        hz = max(probes.probe_cpu_clock(CLOCK_CYCLES) for _ in range(RUNS))
        if hz > 0:
            return hz, f"measured: dependent integer adds, best of {RUNS} runs"
    mhz, _ = _cpuinfo()
    if mhz:
        return mhz * 1e6, "reported by /proc/cpuinfo (not measured: probe unavailable)"
    return None, "unknown: no probe and no /proc/cpuinfo clock"


def _vector(probes, clock_hz) -> tuple[int | None, int | None, dict, dict]:
    """``(units, lanes, sources, measured flop per cycle by ISA)``."""
    per_cycle = {}
    if probes is not None and clock_hz:
        for isa in LANES:
            flops = max(probes.probe_fma_flops(isa, FMA_COUNT) for _ in range(RUNS))
            if flops > 0:
                per_cycle[isa] = flops / clock_hz
    if per_cycle:
        isa = min(per_cycle, key=lambda k: LANES[k])
        for wider in sorted(per_cycle, key=lambda k: LANES[k]):
            if per_cycle[wider] > WIDER_MARGIN * per_cycle[isa]:
                isa = wider
        lanes = LANES[isa]
        units = max(1, round(per_cycle[isa] / (2 * lanes)))
        measured = ", ".join(f"{k} {v:.1f}" for k, v in per_cycle.items())
        source = (f"measured fp32 flop/cycle/core: {measured}; units of {isa} width "
                  f"({lanes} lanes)")
        return units, lanes, {"units": source, "lanes": source}, per_cycle
    _, flags = _cpuinfo()
    if "avx512f" in flags:
        lanes = 16
    elif {"avx2", "fma"} <= flags:
        lanes = 8
    else:
        lanes = 4 if flags else None
    why = "FMA probe unavailable"
    return (2 if lanes else None, lanes,
            {"units": f"assumed 2 ({why})",
             "lanes": f"from /proc/cpuinfo flags ({why})" if lanes else f"unknown ({why})"},
            per_cycle)


def measure(cores: int | None = None) -> Peak:
    """Measure the factors now (about half a second) for ``cores`` threads (default
    ``torch.get_num_threads()``)."""
    probes = _probes()
    clock_hz, clock_source = _clock(probes)
    units, lanes, sources, per_cycle = _vector(probes, clock_hz)
    return Peak(cores or torch.get_num_threads(), units, lanes, clock_hz,
                {"clock": clock_source, **sources}, {"flop_per_cycle": per_cycle})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.machine",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None,
                   help="cores to count (default: torch's intra-op threads)")
    args = p.parse_args(argv)
    print(measure(args.threads).describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
