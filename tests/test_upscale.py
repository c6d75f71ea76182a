"""implicit_kernels.upscale: writes the requested size, refuses bad requests with a
message, and its tiled encoder and banded decoder equal the plain ones."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import models
from implicit_kernels import data as D
from implicit_kernels import upscale as U

ENCODER = {"n_resblocks": 1, "n_feats": 8}
KWARGS = {"edsr-baseline-diif": {"coarse_hidden": [16, 16], "fine_hidden": [16, 16]},
          "edsr-baseline-liif": {"hidden_list": [16, 16]}}


def _tiny(name="edsr-baseline-diif"):
    torch.manual_seed(0)
    return models.make(name, encoder_kwargs=ENCODER, **KWARGS[name]).eval()


@pytest.fixture
def files(tmp_path):
    """A 20x30 input photo and a tiny DIIF weights file."""
    img = tmp_path / "in.png"
    D.to_pil(torch.randint(0, 256, (3, 5, 5), dtype=torch.uint8)).resize((30, 20)).save(img)
    weights = tmp_path / "w.pt"
    torch.save({"format": "implicit-kernels-weights/1", "model": "edsr-baseline-diif",
                "kwargs": KWARGS["edsr-baseline-diif"], "encoder_kwargs": ENCODER,
                "state_dict": {k: v.half() for k, v in _tiny().state_dict().items()},
                "step": 3}, weights)
    return tmp_path, str(img), str(weights)


def test_writes_the_requested_size(files, capsys):
    tmp, img, weights = files
    out, bic = str(tmp / "o.png"), str(tmp / "b.png")
    assert U.main([img, "-o", out, "--scale", "2.5", "--model", weights, "--bicubic", bic]) == 0
    assert Image.open(out).size == (75, 50) and Image.open(bic).size == (75, 50)
    assert "20x30 -> 50x75" in capsys.readouterr().out
    assert U.main([img, "-o", out, "--size", "41x33", "--model", weights, "--quiet"]) == 0
    assert Image.open(out).size == (33, 41)
    assert U.main([img, "-o", out, "--scale", "2x3", "--model", weights, "--quiet"]) == 0
    assert Image.open(out).size == (90, 40)


@pytest.mark.parametrize("args, message", [
    (["{missing}", "--scale", "2"], "no such file"),
    (["{garbage}", "--scale", "2"], "as an image"),
    (["{img}", "--scale", "2", "--model", "no-such-model"], "unknown model"),
    (["{img}", "--scale", "0.5"], "only up-sample"),
    (["{img}", "--size", "10x10"], "smaller than the input"),
    (["{img}", "--size", "100000x100000"], "more than the limit"),
    (["{img}", "--size", "big"], "bad --size"),
    (["{img}", "--scale", "nan"], "bad --scale"),
    (["{img}", "--scale", "2", "-o", "{tmp}/x.unknownext"], "unknown image extension"),
    (["{img}", "--scale", "2", "--tile", "-1"], "--tile"),
])
def test_refuses_bad_requests(files, capsys, args, message):
    tmp, img, weights = files
    (tmp / "garbage.png").write_bytes(b"\x89PNG not really")
    fill = {"missing": str(tmp / "missing.png"), "garbage": str(tmp / "garbage.png"),
            "img": img, "tmp": str(tmp)}
    argv = [a.format(**fill) for a in args]
    if "--model" not in argv:
        argv += ["--model", weights]
    if "-o" not in argv:
        argv += ["-o", str(tmp / "out.png")]
    assert U.main(argv) == 2
    err = capsys.readouterr().err
    assert "upscale: error:" in err and message in err
    assert not (tmp / "out.png").exists()


def test_scale_and_size_are_exclusive(files):
    _, img, weights = files
    with pytest.raises(SystemExit):
        U.main([img, "--scale", "2", "--size", "40x60", "--model", weights])


def test_tiled_encoder_equals_whole():
    model = _tiny()
    inp = torch.rand(1, 3, 23, 31) * 2 - 1
    with torch.no_grad():
        whole = model.encoder(inp)
        tiled = U.encode(model.encoder, inp, tile=8)
    assert U.receptive_radius(model.encoder) == 4   # head, 2 in the block, body end
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["edsr-baseline-diif", "edsr-baseline-liif"])
def test_banded_decode_equals_grid(monkeypatch, name):
    model = _tiny(name)
    img = torch.rand(1, 3, 9, 11)
    size = (31, 27)
    monkeypatch.setattr(U, "BAND_PIXELS", 100)  # several bands of 3 rows
    out = U.upscale(model, img, size, backend="torch", tile=4, progress=True)
    with torch.no_grad():
        ref = models.upscale(model, img, size, backend="torch")[0]
    expect = (ref * 255).round().to(torch.uint8)
    assert out.shape == (3, 31, 27) and out.dtype == torch.uint8
    assert (out.int() - expect.int()).abs().max() <= 1   # rounding of near-ties only
