"""implicit_kernels.apps.upscale: writes the requested size at the input's depth (8 or 16 bits,
grey or colour), with its alpha channel, ICC profile and orientation; refuses every
request the README lists with one line and exit status 2, before decoding anything; never
unpickles weights; Ctrl-C leaves no partial file; its tiled encoder and banded decoder
equal the plain ones."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageOps

import models
from implicit_kernels.apps import data as D
from implicit_kernels.apps import upscale as U
from implicit_kernels.apps.image16 import Image16
from implicit_kernels.apps.weights import WEIGHTS_FORMAT, save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODER = {"n_resblocks": 1, "n_feats": 8}
KWARGS = {"edsr-baseline-diif": {"coarse_hidden": [16, 16], "fine_hidden": [16, 16]},
          "edsr-baseline-liif": {"hidden_list": [16, 16]}}


def _tiny(name="edsr-baseline-diif"):
    torch.manual_seed(0)
    return models.make(name, encoder_kwargs=ENCODER, **KWARGS[name]).eval()


def _photo(h=20, w=30, seed=0) -> Image.Image:
    """A smooth random RGB photo (a 5×5 pattern enlarged)."""
    gen = torch.Generator().manual_seed(seed)
    return D.to_pil(torch.randint(0, 256, (3, 5, 5), generator=gen,
                                  dtype=torch.uint8)).resize((w, h))


@pytest.fixture
def files(tmp_path):
    """A 20x30 input photo and a tiny DIIF weights file."""
    img = tmp_path / "in.png"
    _photo().save(img)
    weights = tmp_path / "w.safetensors"
    save_weights({"format": WEIGHTS_FORMAT, "model": "edsr-baseline-diif",
                  "kwargs": KWARGS["edsr-baseline-diif"], "encoder_kwargs": ENCODER,
                  "state_dict": {k: v.half() for k, v in _tiny().state_dict().items()},
                  "step": 3}, weights)
    return tmp_path, str(img), str(weights)


def _run(*argv) -> int:
    return U.main([str(a) for a in argv])


def _sixteen_bit(img8: Image.Image):
    """The 16-bit twin of an 8-bit image (each value times 257: the same levels): a
    Pillow ``I;16`` image when grey, else an :class:`Image16`."""
    import numpy as np

    values = np.array(img8).astype(np.uint16) * 257
    return Image.fromarray(values) if values.ndim == 2 else Image16(values)


def _pixels(path) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(Image.open(path)).astype(np.int64))


def _depth_and_pixels(path) -> tuple:
    """``(bits per channel, H×W[×C] int64 pixels)`` of a PNG or TIFF file, read with
    pypng or tifffile (not Pillow, which reads 16-bit colour at 8 bits)."""
    import numpy as np
    import png
    import tifffile

    if str(path).endswith(".tif"):
        values = tifffile.imread(path)
        return values.dtype.itemsize * 8, torch.from_numpy(values.astype(np.int64))
    w, h, rows, info = png.Reader(filename=str(path)).read()
    values = np.vstack([np.asarray(r) for r in rows]).reshape(h, w, info["planes"])
    return info["bitdepth"], torch.from_numpy(values.astype(np.int64)).squeeze(-1)


def test_writes_the_requested_size(files, capsys):
    tmp, img, weights = files
    out, bic = str(tmp / "o.png"), str(tmp / "b.png")
    assert _run(img, "-o", out, "--scale", "2.5", "--weights", weights, "--bicubic", bic) == 0
    assert Image.open(out).size == (75, 50) and Image.open(bic).size == (75, 50)
    assert "20x30 -> 50x75 (8-bit colour)" in capsys.readouterr().out
    assert _run(img, "-o", out, "--size", "41x33", "--weights", weights, "--quiet", "--force") == 0
    assert Image.open(out).size == (33, 41)
    assert _run(img, "-o", out, "--scale", "2x3", "--weights", weights, "--quiet", "--force") == 0
    assert Image.open(out).size == (90, 40)
    assert sorted(os.listdir(tmp)) == ["b.png", "in.png", "o.png", "w.safetensors"]


# ---------------------------------------------------------------------------------------
# Refused requests: the README's list, walked
# ---------------------------------------------------------------------------------------

def _readme_usage_errors():
    """``[(request, argv, message)]`` from the README's table after ``<!-- usage-errors -->``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    _, marker, rest = text.partition("<!-- usage-errors -->\n")
    assert marker, "README.md has no <!-- usage-errors --> table"
    rows = []
    for line in rest.splitlines()[2:]:          # after the header and the |---| line
        if not line.startswith("|"):
            break
        request, example, message = (c.strip() for c in line.strip("|").split(" | "))
        rows.append((request, shlex.split(example.strip("`")), message.strip("`")))
    return rows


USAGE_ERRORS = _readme_usage_errors()


def test_the_readme_lists_the_usage_errors():
    assert len(USAGE_ERRORS) >= 30
    assert len({tuple(argv) for _, argv, _ in USAGE_ERRORS}) == len(USAGE_ERRORS)


@pytest.fixture
def usage_folder(tmp_path, monkeypatch, evil_pickle):
    """The folder the README's examples run in (the files the README names)."""
    monkeypatch.chdir(tmp_path)
    _photo().save("photo.png")
    _photo().save("existing.png")
    rgba = _photo().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save("rgba.png")
    _sixteen_bit(_photo().convert("L")).save("grey16.png")
    D.save_image(_sixteen_bit(_photo()), "rgb16.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "results").mkdir()
    torch.save({"format": WEIGHTS_FORMAT}, "empty.pt")
    marker = evil_pickle(tmp_path / "evil.pt", tmp_path.parent / f"{tmp_path.name}-pwned")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        # root writes anywhere: report the folder as not writable, as it is for a user.
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
            False if os.path.abspath(p) == str(locked) and mode & os.W_OK
            else access(p, mode, **kw)))
    yield tmp_path, marker
    locked.chmod(0o755)


def _listing(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                  for d, _, names in os.walk(folder) for f in names)


@pytest.mark.parametrize("request_, argv, message", USAGE_ERRORS,
                         ids=[r for r, _, _ in USAGE_ERRORS])
def test_every_usage_error_exits_2_with_one_line(usage_folder, capsys, request_, argv,
                                                  message):
    folder, marker = usage_folder
    before = _listing(folder)
    assert U.main(argv) == 2, request_
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("upscale: error: ") and message in err, err
    assert _listing(folder) == before          # nothing written, nothing left behind
    assert not marker.exists()                 # and no pickled code ran


def test_the_command_line_exits_2_with_one_line(tmp_path):
    """The real command (dispatcher, argparse, interpreter exit status)."""
    for argv in (["missing.png", "--scale", "2"], ["--scale", "2", "--nope"]):
        proc = subprocess.run([sys.executable, "-m", "implicit_kernels", "upscale", *argv],
                              cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("upscale: error: ")


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def test_the_input_and_existing_files_are_never_overwritten(files, capsys):
    tmp, img, weights = files
    original = open(img, "rb").read()
    for option in ("-o", "--bicubic"):
        extra = ["-o", str(tmp / "o.png")] if option == "--bicubic" else []
        assert _run(img, "--scale", "2", "--weights", weights, *extra, option, img,
                    "--force") == 2
        assert "is the input" in capsys.readouterr().err
        assert open(img, "rb").read() == original
    # The same file under another spelling.
    assert _run(img, "--scale", "2", "--weights", weights, "-o",
                os.path.join(tmp, ".", "in.png")) == 2
    (tmp / "o.png").write_bytes(b"keep")
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "o.png") == 2
    assert (tmp / "o.png").read_bytes() == b"keep"
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "o.png", "--force",
                "--quiet") == 0
    assert Image.open(tmp / "o.png").size == (60, 40)


def test_outputs_are_checked_before_decoding(files, monkeypatch):
    tmp, img, weights = files

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before checking the outputs")

    monkeypatch.setattr(U, "upscale", no_decoding)
    monkeypatch.setattr(D, "read_photo", no_decoding)
    assert _run(img, "--scale", "2", "--weights", weights, "-o", img) == 2
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "x" / "o.png") == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(files, capsys):
    tmp, img, weights = files
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert _run(img, "--scale", "2", "--weights", weights, "-o", locked / "o.png") == 2
    finally:
        locked.chmod(0o755)
    assert "is not writable" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Depth, alpha, ICC profile, orientation
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_is_read_and_written_at_full_depth(files, ext, mode, capsys):
    tmp, _, weights = files
    img8 = _photo().convert(mode)
    img8.save(tmp / f"i8{ext}")
    D.save_image(_sixteen_bit(img8), tmp / f"i16{ext}")
    for name in ("i8", "i16"):
        assert _run(tmp / f"{name}{ext}", "--scale", "2", "--weights", weights, "-o",
                    tmp / f"out_{name}{ext}", "--backend", "torch") == 0
    kind = "grey" if mode == "L" else "colour"
    out = capsys.readouterr()
    assert f"(8-bit {kind})" in out.out and f"(16-bit {kind})" in out.out and out.err == ""
    (bits8, a8), (bits16, a16) = (_depth_and_pixels(tmp / f"out_{n}{ext}") for n in ("i8", "i16"))
    assert (bits8, bits16) == (8, 16) and a16.shape == a8.shape == (40, 60) + (
        () if mode == "L" else (3,))
    # The same image at two depths: the same result, rounded to 8 or to 16 bits, so each
    # pixel (and the mean) differs by at most half an 8-bit step plus half a 16-bit one.
    bound = 0.5 + 0.5 / 257
    assert abs(float(a16.double().mean()) / 257 - float(a8.double().mean())) <= bound
    assert float((a16 / 257 - a8).abs().max()) <= bound
    assert (a16 % 257 != 0).any()              # finer than 8-bit levels


def test_16_bit_colour_keeps_alpha_icc_and_bicubic_depth(files):
    import numpy as np

    tmp, _, weights = files
    rgb = np.array(_photo()).astype(np.uint16) * 257
    alpha = torch.randint(0, 65536, (20, 30), generator=torch.Generator().manual_seed(1),
                          dtype=torch.int32)
    rgba = np.concatenate([rgb, alpha.numpy().astype(np.uint16)[..., None]], -1)
    D.save_image(Image16(rgba), tmp / "a.png", b"a profile")
    D.save_image(Image16(rgb), tmp / "rgb.png")
    for name in ("a", "rgb"):
        assert _run(tmp / f"{name}.png", "--scale", "2.5", "--weights", weights, "-o",
                    tmp / f"out_{name}.png", "--quiet", "--backend", "torch",
                    "--bicubic", tmp / f"bic_{name}.tif") == 0
    (bits, out), (_, plain) = (_depth_and_pixels(tmp / f"out_{n}.png") for n in ("a", "rgb"))
    assert bits == 16 and out.shape == (50, 75, 4)
    assert torch.equal(out[..., :3], plain)    # colour as without alpha
    expect = U.upsample_alpha(alpha[None].float() / 65535, (50, 75), 16)
    assert torch.equal(out[..., 3], expect[0].long())
    assert (out[..., 3] % 257 != 0).any()      # alpha at 16 bits too
    assert Image.open(tmp / "out_a.png").info.get("icc_profile") == b"a profile"
    bits, bicubic = _depth_and_pixels(tmp / "bic_a.tif")
    assert bits == 16 and bicubic.shape == (50, 75, 4)


def test_alpha_is_kept_and_upsampled_bicubically(files):
    tmp, _, weights = files
    rgba = _photo().convert("RGBA")
    alpha = torch.randint(0, 256, (1, 20, 30), dtype=torch.uint8)
    rgba.putalpha(Image.fromarray(alpha[0].numpy()))
    rgba.save(tmp / "a.png")
    rgba.convert("RGB").save(tmp / "rgb.png")
    for name in ("a", "rgb"):
        assert _run(tmp / f"{name}.png", "--scale", "2.5", "--weights", weights, "-o",
                    tmp / f"out_{name}.png", "--quiet", "--backend", "torch") == 0
    out, plain = _pixels(tmp / "out_a.png"), _pixels(tmp / "out_rgb.png")
    assert out.shape == (50, 75, 4)
    assert torch.equal(out[..., :3], plain)    # colour as without alpha
    expect = U.upsample_alpha(alpha.float() / 255, (50, 75))
    assert torch.equal(out[..., 3], expect[0].long())
    assert len(out[..., 3].unique()) > 2       # a real up-sampled channel, not a constant


def test_icc_profile_is_kept(files):
    from PIL import ImageCms

    tmp, img, weights = files
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _photo().save(tmp / "icc.png", icc_profile=icc)
    assert _run(tmp / "icc.png", "--scale", "2", "--weights", weights, "-o", tmp / "o.jpg",
                "--bicubic", tmp / "b.png", "--quiet") == 0
    assert Image.open(tmp / "o.jpg").info.get("icc_profile") == icc
    assert Image.open(tmp / "b.png").info.get("icc_profile") == icc
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "n.png", "--quiet") == 0
    assert "icc_profile" not in Image.open(tmp / "n.png").info


def test_exif_orientation_is_applied(files):
    tmp, _, weights = files
    exif = Image.Exif()
    exif[0x0112] = 6                            # shown rotated a quarter turn clockwise
    _photo().save(tmp / "turned.png", exif=exif)
    ImageOps.exif_transpose(Image.open(tmp / "turned.png")).save(tmp / "upright.png")
    assert Image.open(tmp / "upright.png").size == (20, 30)
    for name in ("turned", "upright"):
        assert _run(tmp / f"{name}.png", "--scale", "2", "--weights", weights, "-o",
                    tmp / f"out_{name}.png", "--quiet", "--backend", "torch") == 0
    assert Image.open(tmp / "out_turned.png").size == (40, 60)
    assert torch.equal(_pixels(tmp / "out_turned.png"), _pixels(tmp / "out_upright.png"))


# ---------------------------------------------------------------------------------------
# Weights are never unpickled
# ---------------------------------------------------------------------------------------

def test_pickled_weights_are_refused(files, capsys, evil_pickle, monkeypatch):
    tmp, img, _ = files
    for option, name in (("--model", "evil.pt"), ("--model", "sub/evil.pth"),
                         ("--weights", "evil")):
        (tmp / name).parent.mkdir(exist_ok=True)
        marker = evil_pickle(tmp / name)
        monkeypatch.chdir(tmp)
        assert _run(img, "--scale", "2", option, name, "-o", tmp / "o.png") == 2
        assert "refused to load" in capsys.readouterr().err
        assert not marker.exists() and not (tmp / "o.png").exists()


def test_a_file_named_like_a_shipped_model_is_not_read(files, evil_pickle, monkeypatch):
    tmp, img, _ = files
    monkeypatch.chdir(tmp)
    marker = evil_pickle(tmp / "edsr-baseline-diif")
    assert _run(img, "--scale", "1.5", "-o", tmp / "o.png", "--quiet") == 0
    assert _run(img, "--scale", "1.5", "-o", tmp / "o2.png", "--quiet", "--model",
                "edsr-baseline-diif") == 0
    assert not marker.exists()
    assert _pixels(tmp / "o.png").shape == (30, 45, 3)


# ---------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_decoding_exits_130_without_output(files, capsys, monkeypatch):
    tmp, img, weights = files
    monkeypatch.setattr(U, "upscale", _interrupt)
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "o.png") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err
    assert sorted(os.listdir(tmp)) == ["in.png", "w.safetensors"]


def test_ctrl_c_while_writing_leaves_no_partial_file(files, capsys, monkeypatch):
    tmp, img, weights = files
    (tmp / "o.png").write_bytes(b"keep")
    save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):
        save(self, fp, *args, **kwargs)          # a complete temporary file ...
        raise KeyboardInterrupt                  # ... interrupted before its rename

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "o.png", "--force") == 130
    assert (tmp / "o.png").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp)) == ["in.png", "o.png", "w.safetensors"]


# ---------------------------------------------------------------------------------------
# Tiles and bands
# ---------------------------------------------------------------------------------------

def test_tile_bound(files, capsys):
    tmp, img, weights = files
    model = _tiny()
    assert U.receptive_radius(model.encoder) == 4 and U.min_tile(model.encoder) == U.MIN_TILE
    assert U.min_tile(models.make("edsr-baseline-diif").encoder) == 68
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "o.png",
                "--tile", U.MIN_TILE - 1) == 2
    assert f"below {U.MIN_TILE}" in capsys.readouterr().err
    assert _run(img, "--scale", "2", "--weights", weights, "-o", tmp / "o.png",
                "--tile", U.MIN_TILE, "--quiet") == 0


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
    out16 = U.upscale(model, img, size, backend="torch", bits=16, grey=True)
    luma = (ref * ref.new_tensor(U.LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    assert out16.shape == (1, 31, 27) and out16.dtype == torch.uint16
    assert (out16.int() - (luma * 65535).round().int()).abs().max() <= 1


def test_bad_options_of_the_library_function():
    with pytest.raises(ValueError, match="bits"):
        U.upscale(_tiny(), torch.rand(1, 3, 4, 4), (8, 8), bits=12)
    assert re.fullmatch(r"\S+", U._one_line(ValueError("")))
