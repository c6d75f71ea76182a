"""implicit_kernels.apps.data: the image folder (skipping bad files) and the LR/HR pair sampler
(shapes, ranges, Pillow bicubic down-sampling, determinism)."""
from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from implicit_kernels import geometry
from implicit_kernels.apps import data as D


def _write_images(folder, sizes=((120, 100), (90, 130)), seed=0):
    """Random RGB images (smooth enough to survive JPEG) as PNG and JPEG in ``folder``."""
    gen = torch.Generator().manual_seed(seed)
    for i, (h, w) in enumerate(sizes):
        small = torch.randint(0, 256, (3, h // 4 + 1, w // 4 + 1), generator=gen, dtype=torch.uint8)
        img = D.to_pil(small).resize((w, h), Image.BILINEAR)
        img.save(folder / (f"img{i}.png" if i % 2 == 0 else f"img{i}.jpg"))
    return folder


def test_folder_skips_unreadable_and_tiny_files(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    D.to_pil(torch.zeros(3, 10, 10, dtype=torch.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skip"):
        folder = D.ImageFolder(tmp_path, min_side=64)
    assert len(folder) == 2
    reasons = dict(folder.skipped)
    assert len(reasons) == 2
    assert "unreadable" in reasons[str(tmp_path / "broken.png")]
    assert "too small" in reasons[str(tmp_path / "tiny.png")]
    img = folder[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 120, 100)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no usable"):
        D.ImageFolder(tmp_path)


def test_max_side_shrinks(tmp_path):
    folder = D.ImageFolder(_write_images(tmp_path), max_side=60)
    assert max(folder[0].shape[1:]) == 60 and max(folder[1].shape[1:]) == 60


@pytest.mark.parametrize("mode", ["hr_patch", "lr_patch"])
def test_batch_shapes_and_ranges(tmp_path, mode):
    folder = D.ImageFolder(_write_images(tmp_path))
    if mode == "hr_patch":
        sampler = D.PairSampler(folder, 3, scale={"choices": [2, 2.5, 3.5]}, hr_patch=48,
                                sample_q=100, seed=1)
    else:
        sampler = D.PairSampler(folder, 3, scale=[1, 4], lr_patch=16, sample_q=200, seed=1)
    for _ in range(5):
        b = sampler.next()
        lr_side, hr_side = sampler.sizes(b.scale)
        assert b.lr.shape == (3, 3, lr_side, lr_side)
        assert b.hr.shape == (3, 3, hr_side, hr_side) and b.hr_size == (hr_side, hr_side)
        if mode == "hr_patch":
            assert b.scale in (2, 2.5, 3.5) and hr_side <= 48
        else:
            assert 1 <= b.scale <= 4 and lr_side == 16
        q = sampler.sample_q
        assert b.pixels.shape == (3, q, 2) and b.pixels.dtype == torch.int64
        assert b.rgb.shape == (3, q, 3) and b.coord.shape == b.cell.shape == (3, q, 2)
        for t in (b.lr, b.hr, b.rgb):
            assert t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
        assert 0 <= b.pixels.min() and b.pixels.max() < hr_side
        # Sampled without replacement, targets are the HR pixels, coords their centres.
        flat = b.pixels[..., 0] * hr_side + b.pixels[..., 1]
        assert all(len(set(row.tolist())) == q for row in flat)
        for i in range(3):
            expect = b.hr[i][:, b.pixels[i, :, 0], b.pixels[i, :, 1]].t()
            assert torch.equal(b.rgb[i], expect)
        assert torch.equal(b.coord, geometry.pixel_coord(b.pixels, b.hr_size))
        assert torch.allclose(b.cell, torch.tensor([2 / hr_side, 2 / hr_side]).expand_as(b.cell))


def test_whole_patch_targets(tmp_path):
    folder = D.ImageFolder(_write_images(tmp_path))
    b = D.PairSampler(folder, 2, scale=3, hr_patch=30, sample_q=None).next()
    assert b.lr.shape[-1] == 10 and b.hr_size == (30, 30)
    assert torch.equal(b.rgb, b.hr.flatten(2).transpose(1, 2))


def test_lr_is_pillow_bicubic_of_hr(tmp_path):
    folder = D.ImageFolder(_write_images(tmp_path))
    sampler = D.PairSampler(folder, 2, scale={"choices": [2.5, 3]}, hr_patch=40, sample_q=None,
                            augment=False)
    for _ in range(3):
        b = sampler.next()
        for lr, hr in zip(b.lr, b.hr):
            hr_pil = D.to_pil(hr)
            expect = hr_pil.resize((lr.shape[-1], lr.shape[-2]), Image.BICUBIC)
            got = (lr * 255).round().to(torch.uint8)
            assert torch.equal(got, D.to_tensor(expect))


def test_sizes_follow_liif_rules():
    assert D.crop_sizes(2.5, None, 192) == (76, 190)
    assert D.crop_sizes(3.5, None, 192) == (54, 189)
    assert D.crop_sizes(1.5, 48, None) == (48, 72)
    assert D.max_hr_side(D.ScaleDist.parse([1, 4]), 48, None) == 192


def test_scale_parse_errors():
    for bad in ({"uniform": [0.5, 2]}, {"choices": []}, {"foo": 1}, [3, 2]):
        with pytest.raises(ValueError):
            D.ScaleDist.parse(bad)


def test_generator_state_replays_batches(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder warns about nothing
        folder = D.ImageFolder(_write_images(tmp_path))
    sampler = D.PairSampler(folder, 2, hr_patch=40, sample_q=50, seed=3)
    sampler.next()
    state = sampler.generator.get_state()
    a = sampler.next()
    sampler.generator.set_state(state)
    b = sampler.next()
    assert a.scale == b.scale and torch.equal(a.lr, b.lr) and torch.equal(a.pixels, b.pixels)


@pytest.mark.parametrize("make, grey, bits, alpha, mode", [
    (lambda: Image.new("1", (5, 4), 1), True, 8, False, "L"),
    (lambda: Image.new("L", (5, 4), 7), True, 8, False, "L"),
    (lambda: Image.new("LA", (5, 4), (7, 9)), True, 8, True, "LA"),
    (lambda: Image.new("I;16", (5, 4), 40000), True, 16, False, "I;16"),
    (lambda: Image.new("RGBA", (5, 4), (1, 2, 3, 4)), False, 8, True, "RGBA"),
    (lambda: Image.new("RGB", (5, 4), (1, 2, 3)).convert("P"), False, 8, False, "RGB"),
])
def test_read_photo_modes(tmp_path, make, grey, bits, alpha, mode):
    path = tmp_path / "x.png"
    make().save(path)
    photo = D.read_photo(path)
    assert (photo.grey, photo.bits, photo.alpha is not None, photo.image.mode) == (
        grey, bits, alpha, mode)
    assert photo.rgb.shape == (3, 4, 5) and photo.rgb.dtype == torch.float32
    assert 0 <= photo.rgb.min() and photo.rgb.max() <= 1
    if bits == 16:
        assert photo.rgb[0, 0, 0] == pytest.approx(40000 / 65535)


def test_read_photo_palette_transparency_and_cmyk(tmp_path):
    p = Image.new("P", (5, 4), 3)
    p.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30])
    p.save(tmp_path / "p.png", transparency=3)     # index 3 is transparent
    photo = D.read_photo(tmp_path / "p.png")
    assert photo.alpha is not None and float(photo.alpha.max()) == 0
    # A CMYK file's ICC profile describes CMYK: not written with the RGB result.
    Image.new("CMYK", (5, 4)).save(tmp_path / "c.jpg", icc_profile=b"fake cmyk profile")
    photo = D.read_photo(tmp_path / "c.jpg")
    assert photo.image.mode == "RGB" and photo.icc is None


def test_save_image_is_atomic(tmp_path):
    D.save_image(Image.new("RGB", (3, 2)), tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").size == (3, 2) and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(OSError):
        D.save_image(Image.new("I;16", (3, 2)), tmp_path / "a.jpg")   # JPEG has no 16 bits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
