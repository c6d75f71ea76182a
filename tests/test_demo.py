"""The demo (``python -m implicit_kernels demo``) and the command dispatcher, on tiny settings."""
from __future__ import annotations

import pytest
import torch

from implicit_kernels import __main__ as cli
from implicit_kernels import backends
from implicit_kernels.apps import demo

models = pytest.importorskip("models")


@pytest.fixture
def tiny_png(tmp_path):
    from PIL import Image

    path = tmp_path / "tiny.png"
    pixels = (torch.rand(6, 7, 3) * 255).to(torch.uint8)
    Image.frombytes("RGB", (7, 6), pixels.numpy().tobytes()).save(path)
    return str(path)


def test_run_one_row_per_backend_and_scale():
    model = models.make("edsr-baseline-diif", encoder_kwargs={"n_resblocks": 1, "n_feats": 8},
                        coarse_hidden=(16, 16), fine_hidden=(16, 16)).eval()
    img = torch.rand(1, 3, 6, 7)
    scales = [(2.0, 2.0), (2.5, 2.5), (2.0, 3.0)]
    rows, skipped, auto = demo.run(model, "edsr-baseline-diif", img, scales)
    feat = model.encoder(img)
    available = [n for n, (ok, _) in backends.available_backends("diif", feat).items() if ok]
    assert len(rows) == len(available) * len(scales)
    assert {(r.backend, r.scale) for r in rows} == {(b, s) for b in available for s in scales}
    assert rows[0].backend == "reference"
    assert {r.out_size for r in rows} == {(12, 14), (15, 18), (12, 21)}
    assert all(r.max_diff < 1e-4 for r in rows)
    assert auto == {s: backends.auto_choice("diif", feat, h * w)
                    for s, (h, w) in zip(scales, [(12, 14), (15, 18), (12, 21)])}
    assert not set(auto.values()) & set(skipped)


def test_slow_auto_flags_a_slower_choice():
    def row(backend, scale, seconds):
        return demo.Row(backend, scale, (8, 8), 0.1, seconds, None, 0.0)
    rows = [row("reference", (2, 2), 9.0), row("torch", (2, 2), 1.0), row("cpu", (2, 2), 1.05),
            row("reference", (3, 3), 9.0), row("torch", (3, 3), 1.0), row("cpu", (3, 3), 1.2)]
    assert demo.slow_auto(rows, {(2, 2): "cpu"}) == []  # within 10 %
    assert demo.slow_auto(rows, {(2, 2): "torch", (3, 3): "torch"}) == []
    lines = demo.slow_auto(rows, {(2, 2): "cpu", (3, 3): "cpu"})
    assert len(lines) == 1 and "slower than torch at ×3: cpu took 1.200 s" in lines[0]


def test_cli_random_weights(tiny_png, capsys):
    assert cli.main(["demo", "--image", tiny_png, "--scales", "1.5", "--random",
                     "--backends", "torch"]) == 0
    assert "RANDOM weights (seed 0)" in capsys.readouterr().out


def test_cli_prints_table(tiny_png, capsys):
    assert cli.main(["demo", "--image", tiny_png, "--scales", "1.5,1x2"]) == 0
    out = capsys.readouterr().out
    assert "with shipped weights (step" in out and '"auto" picks:' in out
    header, _, *body = out.split("\n")[1:]
    rows = [line.split() for line in body if line.split() and line.split()[0] in backends.BACKENDS]
    n_available = len([n for n in backends.BACKENDS if not backends.unavailable_reasons(
        n, "diif", torch.zeros(1, 64, 6, 7))])
    assert len(rows) == 2 * n_available
    assert {row[2] for row in rows} == {"9x11", "6x14"}
    assert all(float(row[-1]) < 1e-4 for row in rows)


@pytest.mark.parametrize("argv, message", [
    (["--scales", "0.5"], "each >= 1"),
    (["--scales", "2,two"], "bad scale"),
    (["--backends", "no-such-backend", "--scales", "1"], "unknown backend"),
    (["--model", "edsr-baseline-nothing", "--scales", "1"], "unknown model"),
])
def test_cli_fails_clearly(tiny_png, capsys, argv, message):
    assert demo.main(argv + ["--image", tiny_png]) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo failed:") and message in err


def test_bundled_image():
    img = demo.load_image()
    assert img.shape == (1, 3, 64, 64) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.05


def test_parse_scales():
    assert demo.parse_scales("2, 2.7,3x5") == [(2, 2), (2.7, 2.7), (3, 5)]


def test_peak_memory_sees_an_allocation():
    with demo.PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(16 << 20)  # 64 MiB, touched
    del block
    if mem.peak is None:
        pytest.skip("no /proc/self/statm here")
    assert mem.peak >= 48 << 20


def test_dispatcher(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["cost", "edsr-baseline-diif", "90x160", "16"]) == 0
    assert "0.790T" in capsys.readouterr().out


def test_dispatcher_ctrl_c(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "main", interrupted)
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err == "demo: interrupted\n"
