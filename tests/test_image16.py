"""implicit_kernels.apps.image16 and read_photo on 16-bit colour: PNG (pypng) and TIFF
(tifffile) files are detected from their headers, read and written at full depth,
exactly, with alpha (tRNS, associated or unassociated), ICC profile and EXIF
orientation; everything else stays with Pillow."""
from __future__ import annotations

import io
import sys
import zlib

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from implicit_kernels.apps import data as D
from implicit_kernels.apps import image16

ICC = b"not a real profile, but bytes to keep" * 3


def _deep(h=4, w=5, channels=3, seed=0) -> np.ndarray:
    """Random 16-bit pixels whose values differ below 8-bit resolution: each is an odd
    number, never a multiple of 257 (an 8-bit level widened)."""
    values = np.random.default_rng(seed).integers(0, 32767, (h, w, channels)) * 2 + 1
    values[values % 257 == 0] += 2
    return values.astype(np.uint16)


def _write_png(path, array, **options):
    """Write ``array`` with pypng directly (not through image16)."""
    h, w, c = array.shape
    png.Writer(w, h, greyscale=c < 3, alpha=c in (2, 4), bitdepth=16, **options).write(
        open(path, "wb"), array.reshape(h, w * c))


def _read_png(path) -> tuple:
    """``(bit depth, H×W×C array)`` read with pypng directly."""
    w, h, rows, info = png.Reader(filename=str(path)).read()
    return info["bitdepth"], np.vstack([np.asarray(r) for r in rows]).reshape(h, w, -1)


def _with_chunk(path, kind: bytes, data: bytes):
    """Insert a chunk right after the PNG's IHDR."""
    chunks = list(png.Reader(filename=str(path)).chunks())
    with open(path, "wb") as f:
        png.write_chunks(f, chunks[:1] + [(kind, data)] + chunks[1:])


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png_is_read_exactly_and_written_exactly(tmp_path, channels):
    pixels = _deep(channels=channels)
    _write_png(tmp_path / "in.png", pixels)
    assert image16.is_16_bit_colour(tmp_path / "in.png")
    got, icc = image16.read(tmp_path / "in.png")
    assert got.dtype == np.uint16 and np.array_equal(got, pixels) and icc is None
    image16.Image16(pixels).save(tmp_path / "out.png", "PNG", icc_profile=ICC)
    bits, back = _read_png(tmp_path / "out.png")
    assert bits == 16 and np.array_equal(back, pixels)
    assert image16.read(tmp_path / "out.png")[1] == ICC
    assert Image.open(tmp_path / "out.png").info["icc_profile"] == ICC   # a valid iCCP


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_tiff_is_read_exactly_and_written_exactly(tmp_path, channels):
    pixels = _deep(channels=channels)
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric="rgb" if channels > 2 else
                     "minisblack", extrasamples=["unassalpha"] if channels != 3 else None)
    assert image16.is_16_bit_colour(tmp_path / "in.tif")
    assert np.array_equal(image16.read(tmp_path / "in.tif")[0], pixels)
    image16.Image16(pixels).save(tmp_path / "out.tif", "TIFF", icc_profile=ICC)
    back = tifffile.imread(tmp_path / "out.tif")
    assert back.dtype == np.uint16 and np.array_equal(back, pixels)
    assert image16.read(tmp_path / "out.tif")[1] == ICC


def test_planar_tiff_and_associated_alpha(tmp_path):
    pixels = _deep(channels=4)
    pixels[0, 0, 3] = 0                                  # fully transparent pixel
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(pixels, -1, 0), photometric="rgb",
                     planarconfig="separate", extrasamples=["unassalpha"])
    assert np.array_equal(image16.read(tmp_path / "planar.tif")[0], pixels)
    alpha = pixels[..., 3:].astype(np.float64)
    premultiplied = (pixels[..., :3] * alpha / 65535).round().astype(np.uint16)
    tifffile.imwrite(tmp_path / "assoc.tif", np.concatenate([premultiplied, pixels[..., 3:]], -1),
                     photometric="rgb", extrasamples=["assocalpha"])
    got = image16.read(tmp_path / "assoc.tif")[0]
    assert np.array_equal(got[..., 3], pixels[..., 3])
    visible = pixels[..., 3] > 1000
    assert np.abs(got[visible, :3].astype(int) - pixels[visible, :3]).max() <= 65535 / 1000
    assert (got[0, 0, :3] == 0).all()


def test_png_transparent_colour_becomes_alpha(tmp_path):
    pixels = _deep()
    pixels[1, 2] = (7, 9, 11)
    _write_png(tmp_path / "t.png", pixels, transparent=(7, 9, 11))
    got = image16.read(tmp_path / "t.png")[0]
    assert got.shape == (4, 5, 4) and np.array_equal(got[..., :3], pixels)
    assert got[1, 2, 3] == 0 and (got[..., 3] == 65535).sum() == 19


def test_detection_reads_headers_not_names(tmp_path):
    _write_png(tmp_path / "colour.tif", _deep())         # a PNG under a TIFF name
    assert image16.is_16_bit_colour(tmp_path / "colour.tif")
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb8.png")
    Image.new("I;16", (3, 2)).save(tmp_path / "grey16.png")
    Image.new("I;16", (3, 2)).save(tmp_path / "grey16.tif")
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb8.tif")
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb.jpg")
    (tmp_path / "short.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for name in ("rgb8.png", "grey16.png", "grey16.tif", "rgb8.tif", "rgb.jpg", "short.png"):
        assert not image16.is_16_bit_colour(tmp_path / name), name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillows_exif_transpose(tmp_path, orientation):
    rgb = _deep(channels=3).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    expect = np.array(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert np.array_equal(image16.orient(rgb, orientation), expect)


def test_exif_orientation_of_16_bit_png_and_tiff(tmp_path):
    pixels = _deep(channels=3)
    upright = image16.orient(pixels, 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    _write_png(tmp_path / "turned.png", pixels)
    _with_chunk(tmp_path / "turned.png", b"eXIf", exif.tobytes())
    tifffile.imwrite(tmp_path / "turned.tif", pixels, photometric="rgb",
                     extratags=[(274, "H", 1, 6, True)])
    for name in ("turned.png", "turned.tif"):
        photo = D.read_photo(tmp_path / name)
        assert photo.rgb.shape == (3, 5, 4), name
        assert torch.equal((photo.rgb * 65535).round().permute(1, 2, 0).to(torch.int64),
                           torch.from_numpy(upright.astype(np.int64))), name


def test_read_photo_of_16_bit_colour(tmp_path):
    pixels = _deep(channels=4)
    _write_png(tmp_path / "rgba.png", pixels)
    _with_chunk(tmp_path / "rgba.png", b"iCCP", b"x\0\0" + zlib.compress(ICC))
    photo = D.read_photo(tmp_path / "rgba.png")
    assert (photo.bits, photo.grey, photo.icc, photo.note) == (16, False, ICC, None)
    assert photo.image.mode == "RGBA;16" and photo.image.size == (5, 4)
    assert torch.equal((photo.rgb * 65535).round().long(),
                       torch.from_numpy(pixels[..., :3].astype(np.int64)).permute(2, 0, 1))
    assert torch.equal((photo.alpha[0] * 65535).round().long(),
                       torch.from_numpy(pixels[..., 3].astype(np.int64)))
    _write_png(tmp_path / "la.png", _deep(channels=2))
    photo = D.read_photo(tmp_path / "la.png")
    assert (photo.bits, photo.grey, photo.alpha is not None) == (16, True, True)


def test_other_16_bit_colour_layouts_are_read_by_pillow_with_a_note(tmp_path):
    tifffile.imwrite(tmp_path / "cmyk.tif", _deep(channels=4), photometric="separated")
    photo = D.read_photo(tmp_path / "cmyk.tif")
    assert photo.bits == 8 and "read at 8 bits" in photo.note


def test_photo_image_and_save_image_of_16_bit_colour(tmp_path):
    pixels = _deep(channels=4)
    chw = torch.from_numpy(pixels.astype(np.int32)).permute(2, 0, 1).to(torch.uint16)
    image = D.photo_image(chw[:3], chw[3:])
    assert isinstance(image, image16.Image16) and image.mode == "RGBA;16"
    D.save_image(image, tmp_path / "a.png", ICC)
    D.save_image(image, tmp_path / "a.tif", ICC)
    assert np.array_equal(_read_png(tmp_path / "a.png")[1], pixels)
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif"), pixels)
    with pytest.raises(ValueError, match="PNG or TIFF"):
        D.save_image(image, tmp_path / "a.webp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.tif"]
    with pytest.raises(ValueError, match="same dtype"):
        D.photo_image(chw[:3], chw[3:].to(torch.uint8))
    assert D.photo_image(chw[:1]).mode == "I;16"          # 16-bit grey stays with Pillow


def test_resize_matches_pillow_on_8_bit_levels():
    rgba8 = _deep(6, 8, 4).astype(np.uint8)
    rgba8[..., 3] = 255                                   # opaque: no premultiplication
    expect = np.array(Image.fromarray(rgba8).resize((13, 11), Image.BICUBIC)).astype(float)
    got = image16.Image16(rgba8.astype(np.uint16) * 257).resize((13, 11), Image.BICUBIC)
    assert got.size == (13, 11) and got.array.dtype == np.uint16
    # Pillow's 8-bit resampling rounds in fixed point and between its two passes (rows,
    # then columns): within one and a half 8-bit steps; its clipping between passes too.
    assert np.abs(got.array / 257 - expect).max() <= 1.5


def test_missing_libraries_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "png", None)         # import png raises ImportError
    with pytest.raises(ImportError, match="pip install pypng"):
        image16.Image16(_deep()).save(io.BytesIO(), "PNG")
