"""ONNX export (`implicit_kernels/export.py`): onnxruntime against PyTorch within 1e-4
(fp32) for EDSR-baseline-LIIF, -LTE, -DIIF and -HIIF at a non-integer and an asymmetric
scale, the command line, and the errors.  Needs the optional extras (`pip install
.[onnx]`); skipped with the reason without them."""
from __future__ import annotations

import pytest
import torch

import models
from implicit_kernels import export as E

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .[onnx])")
pytest.importorskip("onnx", reason="onnx not installed (pip install .[onnx])")
pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install .[onnx])")

#: Narrow encoder and decoders: the exported graph does not depend on the widths.
ENCODER = {"n_resblocks": 1, "n_feats": 8}
NARROW = {"liif": {"hidden_list": (16, 16)},
          "lte": {"hidden_dim": 16, "hidden_list": (16, 16)},
          "diif": {"coarse_hidden": (16, 16), "fine_hidden": (16,)},
          "hiif": {"dim": 16, "hidden_dim": 16, "levels": 3, "heads": 4}}
IN_SIZE = (6, 8)
#: ×2.5 (non-integer) and ×2 by ×3 (asymmetric) from 6×8.
OUT_SIZES = {"x2.5": (15, 20), "x2-by-x3": (12, 24)}


def _run(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": image.numpy()})[0])


@pytest.mark.parametrize("scale", list(OUT_SIZES))
@pytest.mark.parametrize("decoder", list(NARROW))
def test_onnxruntime_matches_pytorch(decoder, scale, tmp_path):
    torch.manual_seed(0)
    model = models.make(f"edsr-baseline-{decoder}", encoder_kwargs=ENCODER,
                        **NARROW[decoder]).eval()
    out_size = OUT_SIZES[scale]
    path = E.export_onnx(model, str(tmp_path / "m.onnx"), IN_SIZE, out_size, batch=2)
    image = torch.rand(2, 3, *IN_SIZE)   # fresh: not the tracing example
    got = _run(path, image)
    with torch.no_grad():
        want = models.upscale(model, image, out_size, backend="reference")
    assert got.shape == (2, 3, *out_size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "liif.onnx"
    assert E.main(["edsr-baseline-liif", "--size", "6x8", "--scale", "2.5", "--out",
                   str(out)]) == 0
    assert "6x8 -> 15x20" in capsys.readouterr().out
    with torch.no_grad():
        image = torch.rand(1, 3, 6, 8)
        got = _run(out, image)
    assert got.shape == (1, 3, 15, 20)


def test_errors(tmp_path, capsys):
    target = str(tmp_path / "x.onnx")
    assert E.main(["edsr-baseline", "--size", "6x8", "--scale", "2", "--out", target]) == 1
    assert "encoder alone" in capsys.readouterr().err
    assert E.main(["edsr-baseline-liif", "--size", "6x", "--scale", "2", "--out", target]) == 1
    assert "bad --size" in capsys.readouterr().err
    assert E.main(["edsr-baseline-liif", "--size", "6x8", "--out-size", "3x4",
                   "--out", target]) == 1
    assert "export failed" in capsys.readouterr().err
