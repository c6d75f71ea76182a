"""``python -m bench.cpu_headline``: the CPU headline benchmark at realistic sizes.

Every decoder (paper widths, seeded random weights, a random 64-channel feature map:
bench/workload.py) decodes 64×64 → ×4, ×12, ×30 and 48×48 → ×4, ×12, forward and
forward+backward, through the ``cpu`` and ``torch`` backends; then one EDSR-baseline-DIIF
training step per backend (bench/train_step.py).  Per measurement:

* time: best of ``--repeat`` runs (default 1: the large cases take minutes), after one
  untimed run: of the case itself when it costs at most ``SAME_CASE_WARMUP_FLOP`` (a first
  run at a new size pays page faults and cold caches, ~10 % of a one-second decode), else
  of the same decoder, pass and backend on a small size (the longer runs amortise it);
* peak memory growth: during that untimed run of the case itself, else (sampled every
  10 ms) during the first timed run;
* GFLOP/s: 2 × the MACs the ``cpu`` backend's split forms perform in one forward
  (:func:`implicit_kernels.cost.fused_macs`, at ``F``'s default chunk), ×3 for
  forward+backward (a backward taken as two forwards), over the time; the same count for
  both backends, so rates compare the same work;
* % of the machine's fp32 FMA peak (bench/machine.py: cores × FMA units × SIMD lanes × 2
  × clock, measured at run time);
* the ``cpu`` backend's speed-up over ``torch`` (torch time / cpu time), in the table.

Forward+backward keeps what autograd saves for the whole output (the ``torch`` backend:
every activation; the ``cpu`` backend's operators save their inputs, and their records up
to ``RECORD_MAX_QUERIES`` queries a decode, beyond which they recompute per chunk).  That
is estimated first from the bytes autograd saves on a small decode with as many calls
(keeping records where the case would), scaled by output pixels and tripled; a case
needing more than 80 % of the available memory is reported as skipped with the estimate
instead of run.

Each measurement prints one line as it ends and rewrites ``<out-dir>/cpu-headline.json``
and ``.md`` (default bench/results/), so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from implicit_kernels import cost
from implicit_kernels import ops as kernel_ops
from implicit_kernels.apps.demo import PeakMemory
from implicit_kernels.functional import DEFAULT_CHUNK_SIZE

from . import machine, timing, workload
from .cases import DEVICE, PASSES, Case
from .report import RESULTS_DIR, ms_text
from .train_step import DEFAULT_CONFIG, time_train_steps

SIZES = ((64, 4), (64, 12), (64, 30), (48, 4), (48, 12))
BACKENDS = ("cpu", "torch")
#: The small decode of the untimed run before a case too long to run twice: input side
#: and scale.
WARMUP = (8, 2)
#: Counted flop (the GFLOP/s numerator) up to which the untimed run is the case itself
#: (runs of up to ~25 s through `torch`; the headline takes ~5 minutes longer for it).
SAME_CASE_WARMUP_FLOP = 1e12
#: Seconds between the memory samples of a timed run (the longer cases'): ~1 % of a core.
LONG_RUN_SAMPLE_PERIOD = 0.01
#: Largest side of the small decode whose saved bytes estimate a backward's memory.
PROBE_SIDE = 4
MEMORY_SHARE = 0.8
#: A backward's peak over what autograd saves (backward_bytes).
BACKWARD_FACTOR = 3
STEM = "cpu-headline"


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _pixels(size) -> int:
    return size[0] * size[1]


def backward_bytes(case: Case, model) -> int:
    """Bytes a forward+backward of ``case`` would need: ``BACKWARD_FACTOR`` times what
    autograd saves (the saved activations, and the backward's gradients and temporaries at
    its peak) on a decode of at most ``PROBE_SIDE``² LR pixels at the same scale, in as
    many backend calls, times the ratio of output pixels (parameters counted once).  With
    a factor 1, then 2, the ``torch`` LIIF decode of 64×64 → ×12 (and with 2 the ``torch``
    DIIF decode of 64×64 → ×30) was let run and exhausted a 24 GB machine."""
    side = min(PROBE_SIDE, *case.in_size)
    probe = dataclasses.replace(case, in_size=(side, side))
    ratio = _pixels(case.out_size) / _pixels(probe.out_size)
    chunk = max(1, round(DEFAULT_CHUNK_SIZE / ratio))
    shared = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in shared:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    feat = torch.randn(1, cost.FEAT_CHANNELS, side, side, requires_grad=True)
    img = torch.zeros(1, 3, side, side)
    # The probe keeps the operators' records (the forward's activations) only where the
    # case's own decode would: a decode beyond the limit recomputes them instead.
    limit = kernel_ops.RECORD_MAX_QUERIES
    if _pixels(case.out_size) > limit:
        kernel_ops.RECORD_MAX_QUERIES = 0
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.decode(feat, img, probe.out_size, backend=case.backend, chunk_size=chunk)
    finally:
        kernel_ops.RECORD_MAX_QUERIES = limit
    return round(BACKWARD_FACTOR * sum(saved.values()) * ratio)


def _run_once(case: Case, model) -> float:
    """One untimed-setup, timed run of ``case``: seconds."""
    target, setup, _ = timing.runner(case, workload.forward(case, model, case.backend),
                                     list(model.parameters()))
    args, _ = setup()
    start = time.perf_counter()
    target(*args)
    return time.perf_counter() - start


def measure(case: Case, repeat: int, peak_gflops) -> dict:
    """Time ``case`` (module docstring) and return its row."""
    macs = cost.fused_macs(case.model, case.in_size, case.out_size, chunk=DEFAULT_CHUNK_SIZE)
    flop = 2 * macs * (3 if case.pass_ == "fwd+bwd" else 1)
    row = {"decoder": case.model, "in_size": list(case.in_size), "scale": case.scale[0],
           "out_size": list(case.out_size), "pass": case.pass_, "backend": case.backend,
           "macs": macs, "flop": flop}
    model = workload.seeded_model(workload.model_name(case), case.dtype)
    params = list(model.parameters())
    try:
        if case.pass_ == "fwd+bwd":
            need, free = backward_bytes(case, model), available_memory()
            row["backward_bytes"] = need
            if free is not None and need > MEMORY_SHARE * free:
                row["status"] = (f"skipped: needs ~{need / 1e9:,.1f} GB "
                                 f"({free / 1e9:,.1f} GB available)")
                return row
        if flop <= SAME_CASE_WARMUP_FLOP:
            # The untimed first run is the case itself and measures the memory, so the timed
            # runs go without the sampling thread (a third thread on two cores: 5–15 % slow).
            with PeakMemory(DEVICE) as mem:
                _run_once(case, model)
            times = [_run_once(case, model) for _ in range(repeat)]
        else:
            side, scale = WARMUP
            _run_once(dataclasses.replace(case, in_size=(side, side), scale=(scale, scale)), model)
            # Too long to run twice: memory sampled in the first timed run, every 10 ms.
            with PeakMemory(DEVICE, period=LONG_RUN_SAMPLE_PERIOD) as mem:
                times = [_run_once(case, model)]
            times += [_run_once(case, model) for _ in range(repeat - 1)]
    finally:
        for p in params:
            p.grad = None
    seconds = min(times)
    gflops = flop / seconds / 1e9
    row.update(status="ok", seconds=seconds, times=times, gflops=gflops, peak_bytes=mem.peak,
               peak_percent=100 * gflops / peak_gflops if peak_gflops else None)
    return row


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()[:12]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (uncommitted changes)" if dirty else "")


def header(peak: machine.Peak, repeat: int) -> dict:
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.system()} {platform.machine()}",
            "cpu": timing.device_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": _commit(), "repeat": repeat,
            "peak": peak.as_dict(), "peak_text": peak.describe()}


def _line(row: dict) -> str:
    what = (f"{row['decoder']:5} {row['in_size'][0]}x{row['in_size'][1]} x{row['scale']:<3g}"
            f"{row['pass']:8} {row['backend']:6}")
    if row["status"] != "ok":
        return f"{what} {row['status']}"
    pct = "" if row["peak_percent"] is None else f" {row['peak_percent']:5.1f}% of peak"
    mem = "" if row["peak_bytes"] is None else f" {row['peak_bytes'] / 2 ** 20:,.0f} MiB"
    return f"{what} {row['seconds']:9.3f} s {row['gflops']:8.1f} GFLOP/s{pct}{mem}"


def _speedup_text(rows: list[dict]) -> str:
    """`` cpu speed-up N×`` once the last row completes a measured cpu/torch pair."""
    last = rows[-1]
    pair = {r["backend"]: r for r in rows
            if all(r[k] == last[k] for k in ("decoder", "in_size", "scale", "pass"))}
    cpu, ref = pair.get("cpu"), pair.get("torch")
    if last["backend"] not in ("cpu", "torch") or not (cpu and ref) or \
            not cpu["status"] == ref["status"] == "ok":
        return ""
    return f"  cpu speed-up {ref['seconds'] / cpu['seconds']:.2f}×"


def _cell(row) -> list[str]:
    if row is None:
        return ["", "", "", ""]
    if row["status"] != "ok":
        return [row["status"], "", "", ""]
    pct = "—" if row["peak_percent"] is None else f"{row['peak_percent']:.1f}"
    mem = "—" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2 ** 20:,.0f}"
    return [ms_text(row["seconds"]), f"{row['gflops']:,.1f}", pct, mem]


def markdown(head: dict, rows: list[dict], train_rows: list[dict]) -> str:
    """The report: header, one table row per decoder, size and pass with every backend's
    columns, then the training steps."""
    names = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    names += sorted({r["backend"] for r in rows} - set(names))
    earlier = head.get("earlier", [])
    dates = "; ".join(e["date"] for e in earlier)
    commits = "; ".join(e["commit"] for e in earlier)
    fields = [("date", head["date"] + (f" (earlier rows: {dates})" if earlier else "")),
              ("machine", head["machine"]), ("CPU", head["cpu"]),
              ("threads", head["threads"]), ("torch", head["torch"]),
              ("commit", head["commit"] + (f" (earlier rows: {commits})" if earlier else "")),
              ("best of", head["repeat"])]
    lines = [f"# Benchmark results: {STEM}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in fields]
    lines += ["", "fp32 FMA peak (bench/machine.py), factors found at run time:", "", "```",
              head["peak_text"], "```", "",
              "Times in ms (best of the runs). GFLOP/s = 2 × the MACs of the `cpu` backend's "
              "split forms in one forward (`implicit_kernels.cost.fused_macs`, default "
              "chunk), ×3 for fwd+bwd, over the time: the same count for every backend. "
              "% peak = GFLOP/s over the FMA peak. MiB = peak memory growth during the run. "
              "Speed-up = torch time / cpu time.", ""]
    head_cells = [f"{n} {c}" for n in names for c in ("ms", "GFLOP/s", "% peak", "MiB")]
    lines += [] if not rows else ["| decoder | input | scale | output | pass | G MACs (fwd) | "
              + " | ".join(head_cells) + " | speed-up |",
              "|---|---|---|---|---|---:|" + "---:|" * (len(head_cells) + 1)]
    groups = {}
    for r in rows:
        key = (r["decoder"], tuple(r["in_size"]), r["scale"], r["pass"])
        groups.setdefault(key, {})[r["backend"]] = r
    for (decoder, in_size, scale, pass_), by in groups.items():
        first = next(iter(by.values()))
        cells = [c for n in names for c in _cell(by.get(n))]
        cpu, ref = by.get("cpu"), by.get("torch")
        speedup = (f"{ref['seconds'] / cpu['seconds']:.2f}" if cpu and ref
                   and cpu["status"] == ref["status"] == "ok" else "")
        lines.append(f"| {decoder} | {in_size[0]}×{in_size[1]} | ×{scale:g} | "
                     f"{first['out_size'][0]}×{first['out_size'][1]} | {pass_} | "
                     f"{first['macs'] / 1e9:,.2f} | " + " | ".join(cells) + f" | {speedup} |")
    if train_rows:
        t = train_rows[0]
        lines += ["", f"### Training step: {t['model']}, batch {t['batch_size']}, "
                      f"{t['hr_patch']}×{t['hr_patch']} HR patches, {t['sample_q']} sampled "
                      f"pixels", "",
                  "| backend | step (median, ms) | steps/s | batch draw (median, ms) | status |",
                  "|---|---:|---:|---:|---|"]
        for t in train_rows:
            if t["status"] == "ok":
                lines.append(f"| {t['backend']} | {ms_text(t['seconds'])} | "
                             f"{t['steps_per_s']:.2f} | {ms_text(t['sample_seconds'])} | ok |")
            else:
                lines.append(f"| {t['backend']} | | | | {t['status']} |")
    return "\n".join(lines) + "\n"


def save(out_dir: Path, head: dict, rows: list[dict], train_rows: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"header": head, "rows": rows, "train_rows": train_rows}
    (out_dir / f"{STEM}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / f"{STEM}.md").write_text(markdown(head, rows, train_rows))


def _key(row: dict) -> tuple:
    return (row["decoder"], tuple(row["in_size"]), row["scale"], row["pass"], row["backend"])


def merged(before: dict, head: dict, rows: list[dict], train_rows: list[dict]):
    """``(head, rows, train_rows)`` of an earlier report ``before`` (its JSON) updated by a
    run's: the run's rows replace those of the same decoder, input, scale, pass and
    backend, the others are kept (rows in table order), training rows likewise; the header
    is the run's, with the earlier runs' dates and commits (``earlier``)."""
    new = {_key(r) for r in rows}
    order = {d: i for i, d in enumerate(cost.DECODERS)}
    rows = sorted([r for r in before["rows"] if _key(r) not in new] + rows,
                  key=lambda r: (order.get(r["decoder"], len(order)), -r["in_size"][0],
                                 r["scale"], PASSES.index(r["pass"]), r["backend"]))
    ran = {t["backend"] for t in train_rows}
    train_rows = [t for t in before["train_rows"] if t["backend"] not in ran] + train_rows
    old = before["header"]
    earlier = [{"date": old["date"], "commit": old["commit"]}] + old.get("earlier", [])
    return dict(head, earlier=earlier), rows, train_rows


def _size(text: str) -> tuple:
    side, _, scale = text.partition(":")
    return int(side), float(scale) if "." in scale else int(scale)


def _list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_headline",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--decoders", default=",".join(cost.DECODERS))
    p.add_argument("--sizes", default=",".join(f"{s}:{k}" for s, k in SIZES),
                   help="SIDE:SCALE,... (square LR input; default %(default)s)")
    p.add_argument("--passes", default=",".join(PASSES))
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--repeat", type=int, default=1, help="timed runs per case (best is kept)")
    p.add_argument("--threads", type=int, default=timing.THREADS)
    p.add_argument("--train-backends", default="cpu,torch,cpu+encoder-bf16",
                   help="backends of the training rows; +encoder-bf16: with train.encoder_amp")
    p.add_argument("--train-steps", type=int, default=5,
                   help="timed training steps per backend (0: no training rows)")
    p.add_argument("--train-config", default=str(DEFAULT_CONFIG))
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting (as `train --set`), e.g. data.root=DIR")
    p.add_argument("--out-dir", default=str(RESULTS_DIR))
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of the report in --out-dir that this run does not "
                        "measure (a partial rerun)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = machine.measure(args.threads)
    print(peak.describe(), flush=True)
    head = header(peak, args.repeat)
    out, rows, train_rows = Path(args.out_dir), [], []
    before = json.loads((out / f"{STEM}.json").read_text()) if args.merge else None

    def report():
        """What to write: this run's rows, with --merge merged into the earlier report's."""
        run = (head, rows, train_rows)
        return merged(before, *run) if before else run

    for decoder in _list(args.decoders):
        for side, scale in map(_size, _list(args.sizes)):
            for pass_ in _list(args.passes):
                for backend in _list(args.backends):
                    case = Case("cpu-headline", decoder, backend, (side, side), (scale, scale),
                                torch.float32, pass_)
                    rows.append(measure(case, args.repeat, peak.gflops))
                    print(_line(rows[-1]) + _speedup_text(rows), flush=True)
                    save(out, *report())
    if args.train_steps > 0:
        train_rows = time_train_steps(args.train_config, _list(args.train_backends),
                                      args.train_steps, args.train_set)
        for t in train_rows:
            detail = (f"{t['seconds']:.3f} s/step, batch draw {t['sample_seconds']:.3f} s"
                      if t["status"] == "ok" else t["status"])
            print(f"train step {t['model']} {t['backend']:16} {detail}", flush=True)
    save(out, *report())
    print(f"wrote {out / (STEM + '.md')} and {out / (STEM + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
