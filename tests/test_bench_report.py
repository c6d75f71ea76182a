"""``python -m bench.report``: Markdown table and PNG chart from a small synthetic
pytest-benchmark JSON shaped like what ``pytest bench --benchmark-json`` writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("matplotlib", reason="the report's chart needs matplotlib")


def _bench(suite, model, backend, scale, seconds, *, in_size=(4, 6), dtype="float32",
           pass_="fwd", device_seconds=None, cuda=None, max_diff=1e-7):
    out_size = [round(n * s) for n, s in zip(in_size, scale)]
    info = {"suite": suite, "model": model, "backend": backend, "in_size": list(in_size),
            "scale": list(scale), "out_size": out_size, "dtype": dtype, "pass": pass_,
            "macs": 10 ** 9, "flop": 2 * 10 ** 9, "gflops": 2 / seconds, "peak_bytes": 3 << 20,
            "max_diff": max_diff, "device": "Test CPU (2 cores)", "torch": "2.13.0+cpu",
            "triton": "3.7.1", "cuda": cuda, "threads": 2, "rounds": 5}
    if device_seconds is not None:
        info["device_median_s"] = device_seconds
    return {"group": f"{suite} {model}", "name": f"test_{model}[{backend}-{scale}]",
            "fullname": f"bench/test_x.py::test_{model}[{backend}-{scale}]", "params": None,
            "extra_info": info,
            "stats": {"min": seconds, "max": seconds, "mean": seconds, "median": seconds,
                      "stddev": 0.0, "rounds": 5}}


def _results(benchmarks):
    return {"machine_info": {"node": "host", "system": "Linux", "machine": "x86_64",
                             "python_version": "3.11.7", "cpu": {"brand_raw": "Test CPU"}},
            "commit_info": {"id": "0123456789abcdef", "dirty": False},
            "datetime": "2026-11-23T12:00:00+00:00", "version": "5.2.3",
            "benchmarks": benchmarks}


def _report(tmp_path, results, name="cpu.json"):
    path = tmp_path / name
    path.write_text(json.dumps(results))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(path), "--out-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, out


def test_table_and_chart(tmp_path):
    benches = [_bench("sweep", "diif", b, (s, s), t * s)
               for b, t in (("reference", 0.0015), ("torch", 0.00075)) for s in (2, 4, 30)
               if not (b == "reference" and s == 30)]
    benches += [_bench("sweep", "diif", "torch", (2.5, 4), 0.004),
                _bench("sweep", "diif", "torch", (2, 2), 0.002, pass_="fwd+bwd", max_diff=None),
                _bench("encoder", "rdn", "eager", (1, 1), 1.2344, in_size=(24, 24)),
                {"name": "foreign", "stats": {"median": 1.0}}]  # no extra_info: ignored
    proc, out = _report(tmp_path, _results(benches))
    assert proc.returncode == 0, proc.stderr
    md = (out / "cpu.md").read_text()
    for line in ("| device | Test CPU (2 cores) |", "| torch | 2.13.0+cpu |",
                 "| triton | 3.7.1 |", "| CUDA | none (CPU build of torch) |",
                 "| Python | 3.11.7 |", "| commit | 0123456789ab |",
                 "### Scale sweep: diif, 4×6 input, float32, fwd",
                 "| scale | output | reference (ms) | torch (ms) |",
                 "| ×2 | 8×12 | 3.00 | 1.50 |",
                 "| ×30 | 120×180 |  | 22.5 |",
                 "| ×2.5×4 | 10×24 |  | 4.00 |",
                 "### Scale sweep: diif, 4×6 input, float32, fwd+bwd",
                 "### Encoders: rdn, 24×24 input, float32, fwd",
                 "| 24×24 | 24×24 | 1,234 |"):
        assert line in md, line
    # Symmetric scales in order, the asymmetric one last.
    assert md.index("| ×2 |") < md.index("| ×4 |") < md.index("| ×30 |") < md.index("| ×2.5×4 |")
    # The full table: GFLOP/s, peak MiB, difference ("—" where none was computed), rounds.
    assert ("| sweep | diif | torch | 4×6 | ×4 | 16×24 | float32 | fwd | 3.00 | 666.7 | 3.0 "
            "| 1.0e-07 | 5 |") in md
    assert "| fwd+bwd | 2.00 | 1,000.0 | 3.0 | — | 5 |" in md
    assert "foreign" not in md
    png = (out / "cpu.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_gpu_results_use_device_times(tmp_path):
    benches = [_bench("sweep", "liif", "torch", (s, s), 0.5, dtype=d, device_seconds=0.01 * s,
                      cuda="13.0", in_size=(180, 320))
               for s in (2, 12) for d in ("float32", "bfloat16")]
    benches.append(_bench("headline", "liif", "torch", (16, 16), 0.5, device_seconds=0.04,
                          cuda="13.0", in_size=(90, 160)))
    proc, out = _report(tmp_path, _results(benches), name="h100.json")
    assert proc.returncode == 0, proc.stderr
    md = (out / "h100.md").read_text()
    assert "| CUDA | 13.0 |" in md
    assert "| ×12 | 2160×3840 | 120 |" in md          # the event median, not the wall clock
    assert "### Headline: liif, 90×160 input, float32, fwd" in md
    assert "### Scale sweep: liif, 180×320 input, bfloat16, fwd" in md
    assert (out / "h100.png").stat().st_size > 10_000


def test_no_timed_benchmarks_is_an_error(tmp_path):
    proc, out = _report(tmp_path, _results([{"name": "x", "stats": None, "extra_info": {}}]))
    assert proc.returncode == 1
    assert "no timed benchmarks" in proc.stderr
    assert not (out / "cpu.md").exists()


def test_unreadable_json_is_an_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot read" in proc.stderr
