"""bench/cpu_headline.py end to end on tiny sizes (8×8 → ×2, a training step on synthetic
images), and bench/machine.py's peak."""
from __future__ import annotations

import json
import platform

import pytest
import torch

from bench import cpu_headline, machine
from implicit_kernels import cost
from implicit_kernels.apps import data as D


def _images(folder, n=2, side=48):
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        small = torch.randint(0, 256, (3, side // 6, side // 6), generator=gen, dtype=torch.uint8)
        D.to_pil(small).resize((side, side)).save(folder / f"{i}.png")
    return folder


def test_peak_is_the_product_of_its_factors():
    peak = machine.measure(cores=2)
    assert peak.cores == 2
    assert {"clock", "units", "lanes"} <= set(peak.sources)
    if machine._probes() is not None and platform.machine() == "x86_64":
        assert peak.sources["clock"].startswith("measured")
        assert 0.3e9 < peak.clock_hz < 10e9  # best of many short runs, even on a busy machine
        assert peak.units >= 1 and peak.lanes in machine.LANES.values()
    if peak.gflops is not None:
        assert peak.gflops == pytest.approx(2 * peak.units * peak.lanes * 2 * peak.clock_hz / 1e9)
        assert f"{peak.gflops:,.1f} GFLOP/s" in peak.describe()


def test_headline_runs_end_to_end(tmp_path, capsys):
    images = _images(tmp_path / "images")
    out = tmp_path / "results"
    assert cpu_headline.main([
        "--sizes", "8:2", "--threads", "1", "--out-dir", str(out), "--train-steps", "1",
        "--train-set", f"data.root={images}", "--train-set", "train.batch_size=2",
        "--train-set", "data.hr_patch=24", "--train-set", "data.sample_q=32",
        "--train-set", "data.max_side=null"]) == 0
    printed = capsys.readouterr().out
    assert "fp32 FMA peak" in printed

    data = json.loads((out / "cpu-headline.json").read_text())
    rows = data["rows"]
    assert len(rows) == len(cost.DECODERS) * 2 * 2  # decoders × passes × backends
    for row in rows:
        assert row["status"] == "ok" and row["seconds"] > 0
        forward = cost.fused_macs(row["decoder"], (8, 8), (16, 16))
        assert row["macs"] == forward
        assert row["flop"] == 2 * forward * (3 if row["pass"] == "fwd+bwd" else 1)
        assert row["gflops"] == pytest.approx(row["flop"] / row["seconds"] / 1e9)
        if row["pass"] == "fwd+bwd":
            assert row["backward_bytes"] > 0
    assert data["header"]["threads"] == 1
    assert [t["backend"] for t in data["train_rows"]] == ["cpu", "torch", "cpu+encoder-bf16"]
    assert all(t["status"] == "ok" and t["seconds"] > 0 for t in data["train_rows"])

    md = (out / "cpu-headline.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| liif |")]
    assert len(table) == 2  # one row per pass, both backends side by side
    assert "speed-up" in md and "Training step" in md
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_a_backward_too_large_for_memory_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_headline, "available_memory", lambda: 1000)
    case = cpu_headline.Case("cpu-headline", "liif", "torch", (8, 8), (2, 2), torch.float32,
                             "fwd+bwd")
    row = cpu_headline.measure(case, repeat=1, peak_gflops=None)
    assert row["status"].startswith("skipped: needs ~")


def _row(decoder, side, scale, pass_, backend, seconds):
    return {"decoder": decoder, "in_size": [side, side], "scale": scale, "pass": pass_,
            "backend": backend, "seconds": seconds}


def test_a_partial_rerun_merges_into_the_earlier_report():
    """--merge: the rerun's rows replace the same cases, the others stay, in table order;
    the header names both runs."""
    before = {"header": {"date": "d0", "commit": "c0"},
              "rows": [_row("liif", 64, 4, "fwd", "cpu", 1.0),
                       _row("hiif", 64, 30, "fwd", "cpu", 2.0),
                       _row("diif", 48, 4, "fwd", "cpu", 3.0)],
              "train_rows": [{"backend": "cpu", "seconds": 0.5}]}
    run = [_row("diif", 48, 4, "fwd", "cpu", 4.0), _row("diif", 64, 4, "fwd+bwd", "torch", 5.0)]
    head, rows, train = cpu_headline.merged(before, {"date": "d1", "commit": "c1"}, run, [])
    assert [(r["decoder"], r["in_size"][0], r["pass"], r["seconds"]) for r in rows] == [
        ("liif", 64, "fwd", 1.0), ("diif", 64, "fwd+bwd", 5.0), ("diif", 48, "fwd", 4.0),
        ("hiif", 64, "fwd", 2.0)]
    assert train == before["train_rows"]
    assert head["date"] == "d1" and head["earlier"] == [{"date": "d0", "commit": "c0"}]
    # A second rerun lists both earlier runs, flat, in the report's header.
    head, _, _ = cpu_headline.merged({"header": head, "rows": rows, "train_rows": train},
                                     {"date": "d2", "commit": "c2"}, [], [])
    assert [e["date"] for e in head["earlier"]] == ["d1", "d0"]
    text = cpu_headline.markdown(dict(head, machine="m", cpu="x", threads=2, torch="t",
                                      repeat=1, peak_text=""), [], [])
    assert "| d2 (earlier rows: d1; d0) |" in text and "| c2 (earlier rows: c1; c0) |" in text
