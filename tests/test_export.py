"""ONNX export (`implicit_kernels/apps/export.py`): onnxruntime against PyTorch within 1e-4
(fp32) at a non-integer and an asymmetric scale, for EDSR-baseline-LIIF, -LTE and -HIIF
from ONE dynamic export (query form, any output size) and for EDSR-baseline-DIIF from
one fixed-size export per size; the command line, and the errors.  Needs the optional
extras (`pip install .[onnx]`); skipped with the reason without them."""
from __future__ import annotations

import pytest
import torch

import models
from implicit_kernels.apps import export as E

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


def _run(path, image, **queries):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy(), **{k: v.numpy() for k, v in queries.items()}}
    return torch.from_numpy(session.run(None, feed)[0])


def _model(decoder):
    torch.manual_seed(0)
    return models.make(f"edsr-baseline-{decoder}", encoder_kwargs=ENCODER,
                       **NARROW[decoder]).eval()


@pytest.mark.parametrize("decoder", ["liif", "lte", "hiif"])
def test_dynamic_export_any_output_size(decoder, tmp_path):
    """One file, traced at a third size, decodes both output sizes as the reference
    backend's grid decode (HIIF: its global attention over all queries of the output)
    and a set of scattered points as the query-mode decode."""
    model = _model(decoder)
    assert E.supports_dynamic(model)
    path = E.export_onnx(model, str(tmp_path / "m.onnx"), IN_SIZE, (9, 11), batch=2,
                         dynamic=True)
    image = torch.rand(2, 3, *IN_SIZE)   # fresh: not the tracing example
    for out_size in OUT_SIZES.values():
        coord, cell = E.query_grid(out_size, 2, centres=E.grid_centres(model))
        got = E.to_image(_run(path, image, coord=coord, cell=cell), out_size)
        with torch.no_grad():
            want = models.upscale(model, image, out_size, backend="reference")
        assert got.shape == (2, 3, *out_size)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # Scattered points (5 queries: another Q), as query mode decodes them.
    coord = torch.rand(2, 5, 2) * 2 - 1
    cell = torch.full((2, 5, 2), 2 / 13)
    got = _run(path, image, coord=coord, cell=cell)
    with torch.no_grad():
        want = (model((image - 0.5) / 0.5, coord=coord, cell=cell, backend="reference")
                * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("option", [{"level_codes": "public"}, {"normalizer": "sqrt_n"}])
def test_dynamic_export_hiif_options(option, tmp_path):
    """HIIF's public-code centres (query_grid with grid_centres) and its sqrt(Q) divisor
    (a symbolic root in the graph)."""
    torch.manual_seed(0)
    model = models.make("edsr-baseline-hiif", encoder_kwargs=ENCODER, **NARROW["hiif"],
                        **option).eval()
    path = E.export_onnx(model, str(tmp_path / "m.onnx"), IN_SIZE, dynamic=True)
    image = torch.rand(1, 3, *IN_SIZE)
    for out_size in OUT_SIZES.values():
        coord, cell = E.query_grid(out_size, 1, centres=E.grid_centres(model))
        got = E.to_image(_run(path, image, coord=coord, cell=cell), out_size)
        with torch.no_grad():
            want = models.upscale(model, image, out_size, backend="reference")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_query_grid_is_the_grid_decode_geometry():
    coord, cell = E.query_grid((3, 5), 2)
    assert coord.shape == cell.shape == (2, 15, 2)
    torch.testing.assert_close(coord[1, 7], torch.tensor([0.0, 0.0]))   # centre pixel (1, 2)
    torch.testing.assert_close(cell[0, 0], torch.tensor([2 / 3, 2 / 5]))
    sr = torch.arange(2 * 15 * 3.0).reshape(2, 15, 3)
    img = E.to_image(sr, (3, 5))
    assert img.shape == (2, 3, 3, 5) and img[1, 2, 1, 2] == sr[1, 7, 2]
    assert (E.to_image(sr.numpy(), (3, 5)) == img.numpy()).all()


@pytest.mark.parametrize("scale", list(OUT_SIZES))
@pytest.mark.parametrize("decoder", ["diif"])
def test_fixed_size_export_matches_pytorch(decoder, scale, tmp_path):
    model = _model(decoder)
    assert not E.supports_dynamic(model)
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
    assert E.main(["edsr-baseline-liif", "--size", "6x8", "--out", target]) == 1
    assert "give --scale or --out-size" in capsys.readouterr().err
    assert E.main(["edsr-baseline-diif", "--size", "6x8", "--dynamic", "--out", target]) == 1
    assert "fixed output size only" in capsys.readouterr().err
