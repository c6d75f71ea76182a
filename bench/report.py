"""``python -m bench.report RESULTS.json``: a Markdown table and a PNG chart of a
pytest-benchmark JSON written by ``pytest bench --benchmark-json RESULTS.json``.

Writes ``<out-dir>/<stem>.md`` and ``<out-dir>/<stem>.png`` (``<stem>`` is the JSON's
file name without ``.json``; ``<out-dir>`` defaults to ``bench/results/``):

* the header: date, device, machine, Python, torch, triton and CUDA versions, threads
  and commit;
* per suite, model, input, dtype and pass, a table of median times (rows: scale or input;
  columns: backend);
* every benchmark in one table with GFLOP/s, peak memory and the difference from the
  reference;
* the chart: decoder time against scale for the sweep, one line per backend (and dtype),
  log axes, one panel per decoder and pass, like the DIIF paper's Figure 1.

Only benchmarks carrying bench/timing.py's ``extra_info`` are reported. Times are the
CUDA-event median where recorded (GPU runs), otherwise pytest-benchmark's median.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Backends first in tables and legends, in this order; any others follow alphabetically.
BACKEND_ORDER = ("reference", "torch", "torch+compile", "eager")
SUITE_TITLES = {"sweep": "Scale sweep", "headline": "Headline", "encoder": "Encoders"}
DTYPE_STYLES = {"float32": "-", "bfloat16": "--", "float16": ":"}


def load(path) -> tuple[dict, list[dict]]:
    """``(metadata, rows)`` of a pytest-benchmark JSON: one row per benchmark that has
    bench/timing.py's ``extra_info`` and timing statistics, with ``seconds`` added."""
    with open(path) as f:
        data = json.load(f)
    rows = []
    for bench in data.get("benchmarks", []):
        info, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
        if "suite" not in info or stats.get("median") is None:
            continue
        row = dict(info, name=bench.get("name", ""))
        row["seconds"] = info.get("device_median_s") or stats["median"]
        for key in ("in_size", "scale", "out_size"):
            row[key] = tuple(row[key])
        rows.append(row)
    return data, rows


def _backend_key(name: str):
    return (BACKEND_ORDER.index(name), "") if name in BACKEND_ORDER else (len(BACKEND_ORDER), name)


def _scale_key(scale):
    """Symmetric scales by size, then the asymmetric ones."""
    return (scale[0] != scale[1], math.prod(scale), scale)


def scale_text(scale) -> str:
    y, x = (f"{s:g}" for s in scale)
    return f"×{y}" if y == x else f"×{y}×{x}"


def size_text(size) -> str:
    return "×".join(str(n) for n in size)


def ms_text(seconds) -> str:
    """Milliseconds with three significant digits (no exponent)."""
    ms = seconds * 1e3
    digits = max(0, 2 - math.floor(math.log10(ms))) if ms > 0 else 0
    return f"{ms:,.{digits}f}"


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:,.1f}"


def _diff(d) -> str:
    return "—" if d is None else f"{d:.1e}"


def _gflops(g) -> str:
    return "—" if g is None else f"{g:,.1f}"


def _first(rows, key):
    """The first non-empty value of ``key`` (versions are the same in every row)."""
    return next((r[key] for r in rows if r.get(key)), None)


def header(data: dict, rows: list[dict], title: str) -> list[str]:
    """Title and the machine/version table."""
    machine = data.get("machine_info") or {}
    commit = data.get("commit_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw")
    revision = (commit.get("id") or "")[:12]
    if revision and commit.get("dirty"):
        revision += " (uncommitted changes)"
    fields = [
        ("date", data.get("datetime", "")),
        ("device", _first(rows, "device")),
        ("machine", " ".join(x for x in (machine.get("system"), machine.get("machine"), cpu)
                             if x)),
        ("Python", machine.get("python_version")),
        ("torch", _first(rows, "torch")),
        ("triton", _first(rows, "triton") or "not installed"),
        ("CUDA", _first(rows, "cuda") or "none (CPU build of torch)"),
        ("intra-op threads", _first(rows, "threads")),
        ("commit", revision),
    ]
    lines = [f"# Benchmark results: {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in fields if v not in (None, "")]
    lines += ["", "Times are medians in ms (on CUDA, of CUDA-event times around each run, "
              "after warm-up). GFLOP/s = 2 × the model's MACs (the papers' count, the same "
              "for every backend; ×3 for forward+backward) / time. Peak memory is the growth "
              "during one run. max |diff| is the largest difference from the `reference` "
              "backend (— where the reference is too slow to run at that size).", ""]
    return lines


def pivot_tables(rows: list[dict]) -> list[str]:
    """One table of median times per suite, model, input, dtype and pass: rows are the
    scales (decoders) or inputs (encoders), columns the backends."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["model"], r["in_size"], r["dtype"], r["pass"])].append(r)
    suites = list(SUITE_TITLES)
    lines = []
    for key in sorted(groups, key=lambda k: (suites.index(k[0]) if k[0] in suites else 9, k)):
        suite, model, in_size, dtype, pass_ = key
        group = groups[key]
        names = sorted({r["backend"] for r in group}, key=_backend_key)
        cells = defaultdict(dict)
        for r in group:
            cells[(r["scale"], r["out_size"])][r["backend"]] = ms_text(r["seconds"])
        first = "scale" if suite != "encoder" else "input"
        lines += [f"### {SUITE_TITLES.get(suite, suite)}: {model}, {size_text(in_size)} input, "
                  f"{dtype}, {pass_}", "",
                  f"| {first} | output | " + " | ".join(f"{n} (ms)" for n in names) + " |",
                  "|---|---|" + "---:|" * len(names)]
        for scale, out_size in sorted(cells, key=lambda c: _scale_key(c[0])):
            label = scale_text(scale) if suite != "encoder" else size_text(in_size)
            row = [cells[(scale, out_size)].get(n, "") for n in names]
            lines.append(f"| {label} | {size_text(out_size)} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def full_table(rows: list[dict]) -> list[str]:
    """Every benchmark, one row each."""
    lines = ["| suite | model | backend | input | scale | output | dtype | pass | ms | "
             "GFLOP/s | peak MiB | max \\|diff\\| | rounds |",
             "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    order = sorted(rows, key=lambda r: (r["suite"], r["model"], r["dtype"], r["pass"],
                                        _scale_key(r["scale"]), _backend_key(r["backend"])))
    for r in order:
        lines.append(" | ".join([
            f"| {r['suite']}", r["model"], r["backend"], size_text(r["in_size"]),
            scale_text(r["scale"]) if r["suite"] != "encoder" else "—",
            size_text(r["out_size"]), r["dtype"], r["pass"], ms_text(r["seconds"]),
            _gflops(r.get("gflops")), _mib(r.get("peak_bytes")), _diff(r.get("max_diff")),
            f"{r.get('rounds', '')} |"]))
    return lines


def markdown(data: dict, rows: list[dict], title: str) -> str:
    return "\n".join(header(data, rows, title) + pivot_tables(rows)
                     + ["### All results", ""] + full_table(rows)) + "\n"


def chart(rows: list[dict], path: Path, title: str) -> bool:
    """Plot the sweep (time against scale, log axes) to ``path``; False when there is no
    sweep to plot. Asymmetric scales are hollow markers at √(s_y·s_x)."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on CI or the device machine
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    sweep = [r for r in rows if r["suite"] == "sweep"]
    if not sweep:
        return False
    models = sorted({r["model"] for r in sweep})
    passes = sorted({r["pass"] for r in sweep})
    names = sorted({r["backend"] for r in sweep}, key=_backend_key)
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    several_dtypes = len({r["dtype"] for r in sweep}) > 1
    ticks = sorted({r["scale"][0] for r in sweep
                    if r["scale"][0] == r["scale"][1] and float(r["scale"][0]).is_integer()})
    fig, axes = plt.subplots(len(passes), len(models), squeeze=False, sharex=True,
                             figsize=(3.6 * len(models) + 0.6, 3.2 * len(passes) + 0.8))
    for (i, pass_), (j, model) in ((p, m) for p in enumerate(passes) for m in enumerate(models)):
        ax = axes[i][j]
        lines = defaultdict(list)
        for r in sweep:
            if r["model"] == model and r["pass"] == pass_:
                lines[(r["backend"], r["dtype"], r["in_size"])].append(r)
        for (backend, dtype, in_size), points in sorted(
                lines.items(), key=lambda kv: (_backend_key(kv[0][0]), kv[0][1:])):
            label = f"{backend} {dtype}" if several_dtypes else backend
            style = dict(color=colours[backend], linestyle=DTYPE_STYLES.get(dtype, "-."))
            sym = sorted((r for r in points if r["scale"][0] == r["scale"][1]),
                         key=lambda r: r["scale"][0])
            ax.plot([r["scale"][0] for r in sym], [r["seconds"] * 1e3 for r in sym],
                    marker="o", markersize=3, label=label, **style)
            asym = [r for r in points if r["scale"][0] != r["scale"][1]]
            ax.plot([math.sqrt(math.prod(r["scale"])) for r in asym],
                    [r["seconds"] * 1e3 for r in asym], linestyle="none", marker="s",
                    markerfacecolor="none", color=colours[backend])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        # Plain numbers on the time axis: decades, and 2× and 5× of them as minor labels.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        in_sizes = sorted({size_text(k[2]) for k in lines})
        ax.set_title(f"{model} {pass_} ({', '.join(in_sizes)} input)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if i == len(passes) - 1:
            ax.set_xlabel("scale")
        if j == 0:
            ax.set_ylabel("time (ms)")
        ax.legend(fontsize=7)
    device = _first(rows, "device") or ""
    fig.suptitle(f"{title}: decoder time against scale, {device}, torch {_first(rows, 'torch')}"
                 f"\n(median per run; hollow squares: asymmetric scales, at √(sy·sx))",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    """Write the report; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="pytest-benchmark JSON (pytest bench --benchmark-json FILE)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR),
                   help="where to write <stem>.md and <stem>.png (default bench/results/)")
    args = p.parse_args(argv)
    try:
        data, rows = load(args.results)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"report: cannot read {args.results}: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print(f"report: {args.results} has no timed benchmarks from bench/ (was it written "
              f"with --benchmark-disable?)", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.results).name.removesuffix(".json")
    md = out / f"{stem}.md"
    md.write_text(markdown(data, rows, stem))
    print(f"wrote {md}")
    try:
        drawn = chart(rows, out / f"{stem}.png", stem)
    except ImportError:
        print("report: the chart needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    print(f"wrote {out / f'{stem}.png'}" if drawn else "no scale sweep in the results: no chart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
