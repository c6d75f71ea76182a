"""Training data for arbitrary-scale super-resolution: an image folder and a sampler of
LR/HR batches made the LIIF way (docs/liif-lte.md#training-recipe,
docs/diif.md#training-settings; docs/evaluation.md#liifs-protocol).

* :class:`ImageFolder` lists the PNG/JPEG files under a folder (recursively), reads them
  as ``uint8`` RGB, optionally shrinks very large ones and keeps them in memory.  Files
  that cannot be read, or are too small for the largest crop, are skipped with a warning
  and counted (``skipped``); a dataset never crashes on a bad file.
* :class:`PairSampler` draws one batch at a time: one scale for the whole batch (uniform
  in an interval, LIIF's U(1, 4) by default, or a choice from a list such as DIIF's
  {2, 2.5, 3, 3.5, 4}), a random HR crop per image, the LR made from that crop by Pillow's
  bicubic resize (docs/evaluation.md#liifs-protocol), random flips and transposition, and
  a random sample of HR pixels (or all of them) as the training targets.

For ``upscale``, :func:`read_photo` reads an image at its full depth (16-bit PNG/TIFF,
grey or colour, as 16 bits, not clipped; 16-bit colour through :mod:`.image16`), with
its alpha channel, ICC profile and EXIF orientation applied, and :func:`save_image`
writes a result atomically.

Every random choice comes from one ``torch.Generator`` (``PairSampler.generator``), so a
checkpoint of its state resumes the exact batch sequence.

Crop geometry: with ``lr_patch`` (LIIF), the LR side is fixed and the HR crop side is
``round(lr_patch * s)``; with ``hr_patch`` (DIIF), the LR side is
``floor(hr_patch / s + 1e-9)`` and the HR crop ``round(lr * s)`` (LIIF's test-time rule,
docs/diif.md#training-settings), so the LR/HR pair is an exact resize either way and the
effective scale is ``hr / lr``.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch

from implicit_kernels import geometry

from . import image16

#: File name endings the folder reads (case-insensitive).
EXTENSIONS = (".png", ".jpg", ".jpeg")

#: Pillow modes of 16-bit (or wider integer) grey images; read as 16 bits.
INT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Output formats that keep 16 bits per channel, and those that keep an alpha channel
#: (Pillow writes others at 8 bits, or cannot write the alpha channel).
FORMATS_16_BIT = ("PNG", "TIFF")
FORMATS_ALPHA = ("PNG", "TIFF", "WEBP")

__all__ = ["EXTENSIONS", "ImageFolder", "ScaleDist", "PairSampler", "Batch", "read_image",
           "to_tensor", "to_pil", "bicubic_resize", "lr_size_for", "crop_sizes", "max_hr_side",
           "Photo", "read_photo", "image_format", "photo_image", "save_image",
           "INT_GREY_MODES", "FORMATS_16_BIT", "FORMATS_ALPHA"]


def read_image(path: str, max_side: int | None = None):
    """Read ``path`` as an RGB ``PIL.Image`` (fully decoded); with ``max_side``, shrink it
    (Pillow bicubic, aspect kept) so its longer side is at most ``max_side``.

    Raises ``OSError`` (or a subclass) when the file is not a readable image.
    """
    from PIL import Image

    with Image.open(path) as im:
        if max_side and max(im.size) > max_side and im.format == "JPEG":
            # JPEG can decode at 1/2, 1/4, 1/8 size directly: much faster for 6K wallpapers.
            im.draft("RGB", (max_side, max_side))
        rgb = im.convert("RGB")
        rgb.load()
    if max_side and max(rgb.size) > max_side:
        w, h = rgb.size
        f = max_side / max(w, h)
        rgb = rgb.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)
    return rgb


@dataclass
class Photo:
    """An image read for super-resolution (:func:`read_photo`).

    ``rgb``: ``3×h×w`` float32 in [0, 1] (a grey image repeated in the three channels).
    ``alpha``: ``1×h×w`` float32 in [0, 1], or ``None``.  ``bits``: 8 or 16 per channel.
    ``grey``: the file had one colour channel (results are written grey).  ``icc``: the
    ICC profile to write with results (``None``: none, or the colour space changed on
    reading, e.g. CMYK).  ``image``: the image upright, in the mode results are written
    in: a ``PIL.Image`` (``L``, ``LA``, ``RGB``, ``RGBA``, ``I;16``) or, for 16-bit colour
    or grey with alpha, an :class:`~implicit_kernels.apps.image16.Image16`.  ``note``: a
    remark about the reading for the user, or ``None``.
    """
    rgb: torch.Tensor
    alpha: torch.Tensor | None
    bits: int
    grey: bool
    icc: bytes | None
    image: object
    note: str | None = None


def _decoded_16_bit_colour(im) -> bool:
    """Whether Pillow reads this file's 16-bit colour at 8 bits (it has no 16-bit colour
    mode): its raw mode says 16 bits but its mode is an 8-bit one.  Only layouts that
    :mod:`.image16` leaves to Pillow get here (CMYK, YCbCr, signed samples...)."""
    return im.mode not in INT_GREY_MODES and any(
        ";16" in str(getattr(t, "args", "")) for t in (im.tile or []))


def _eight_bit_note(im) -> str | None:
    """The note for a 16-bit file Pillow reads at 8 bits, or ``None``."""
    if not _decoded_16_bit_colour(im):
        return None
    return (f"this 16-bit {im.mode} file is read at 8 bits per channel (16 bits are kept "
            "for grey, grey with alpha, RGB and RGBA PNG and TIFF)")


def _has_alpha(im) -> bool:
    return im.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info


def _normalised_mode(im):
    """``(image, grey, bits)``: ``im`` converted to the mode a result is written in."""
    import numpy as np
    from PIL import Image

    if im.mode in INT_GREY_MODES:
        values = np.asarray(im).astype(np.int64).clip(0, 65535).astype(np.uint16)
        return Image.fromarray(values), True, 16
    grey = im.mode in ("1", "L", "LA", "La")
    alpha = _has_alpha(im)
    mode = ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")
    return (im if im.mode == mode else im.convert(mode)), grey, 8


def read_photo(path) -> Photo:
    """Read an image for super-resolution: upright (EXIF orientation applied), at its
    full depth (16-bit PNG/TIFF as 16 bits, grey or colour), with its alpha channel and
    ICC profile.

    Raises ``OSError`` (or another Pillow, pypng or tifffile error) when the file is not
    a readable image.
    """
    if image16.is_16_bit_colour(path):
        return _read_16_bit_colour(path)
    return _read_with_pillow(path)


def _read_with_pillow(path) -> Photo:
    """:func:`read_photo` of a file Pillow reads at its full depth (8 bits, 16-bit grey)."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        note = _eight_bit_note(im)
        original = im.mode
        # exif_transpose decodes the image and drops the orientation tag it applied.
        upright = ImageOps.exif_transpose(im)
    # An ICC profile describes the file's colour space: kept unless reading converted it.
    icc = upright.info.get("icc_profile") if original not in ("CMYK", "LAB") else None
    image, grey, bits = _normalised_mode(upright)
    values = np.array(image)
    alpha = image.mode in ("LA", "RGBA")
    return _photo(values.reshape(values.shape[:2] + (-1,)), bits, grey, alpha, icc, image, note)


def _read_16_bit_colour(path) -> Photo:
    """:func:`read_photo` of a 16-bit colour (or grey with alpha) PNG or TIFF."""
    pixels, icc = image16.read(path)
    channels = pixels.shape[-1]
    return _photo(pixels, 16, channels < 3, channels in (2, 4), icc, image16.Image16(pixels))


def _photo(values, bits: int, grey: bool, alpha: bool, icc, image, note=None) -> Photo:
    """A :class:`Photo` of ``H×W×C`` integer ``values`` of ``bits`` bits (grey or RGB,
    then alpha when ``alpha``)."""
    import numpy as np

    chw = torch.from_numpy(values.astype(np.float32)).permute(2, 0, 1) / ((1 << bits) - 1)
    colour = chw[:1].expand(3, -1, -1) if grey else chw[:3]
    return Photo(colour.contiguous(), chw[-1:].contiguous() if alpha else None, bits, grey,
                 icc or None, image, note)


def image_format(path) -> str | None:
    """Pillow's format name for a file name's extension (``"PNG"``), or ``None``."""
    from PIL import Image

    return Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower())


def photo_image(colour: torch.Tensor, alpha: torch.Tensor | None = None):
    """The image of quantised channels: ``colour`` ``1×H×W`` (grey) or ``3×H×W``, ``uint8``
    or ``uint16``, and an optional ``1×H×W`` ``alpha`` of the same dtype.

    A ``PIL.Image``, except for 16-bit colour or 16-bit grey with alpha, which Pillow
    cannot hold: an :class:`~implicit_kernels.apps.image16.Image16` then (PNG or TIFF only).
    """
    from PIL import Image

    if alpha is not None and alpha.dtype != colour.dtype:
        raise ValueError(f"alpha ({alpha.dtype}) and colour ({colour.dtype}) must have the "
                         "same dtype")
    chw = colour if alpha is None else torch.cat([colour, alpha])
    hwc = chw.permute(1, 2, 0).contiguous().cpu().numpy()
    if colour.dtype == torch.uint16 and hwc.shape[-1] > 1:
        return image16.Image16(hwc)
    return Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)


def save_image(image, path, icc: bytes | None = None) -> None:
    """Save ``image`` to ``path`` in the format its extension names, with the ICC
    profile ``icc``, atomically: a temporary file in the same folder, then
    ``os.replace``.  Whatever stops the write (an error, Ctrl-C) leaves no partial file,
    and an existing file at ``path`` stays as it was."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.part")
    extra = {"icc_profile": icc} if icc else {}
    try:
        image.save(tmp, format=image_format(path), **extra)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_tensor(img) -> torch.Tensor:
    """``PIL.Image`` (RGB) -> ``3×H×W`` uint8 tensor."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).contiguous()


def to_pil(t: torch.Tensor):
    """``3×H×W`` tensor (uint8, or float in [0, 1], rounded) -> ``PIL.Image``."""
    from PIL import Image

    if t.dtype != torch.uint8:
        t = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    hwc = t.permute(1, 2, 0).contiguous().cpu()
    return Image.frombytes("RGB", (hwc.shape[1], hwc.shape[0]), bytes(hwc.numpy()))


def bicubic_resize(t: torch.Tensor, size) -> torch.Tensor:
    """Resize a ``3×H×W`` uint8 tensor to ``size = (h, w)`` with Pillow's bicubic filter
    (antialiased when shrinking): the down-sampling of
    docs/evaluation.md#liifs-protocol.  Returns uint8."""
    from PIL import Image

    h, w = size
    return to_tensor(to_pil(t).resize((w, h), Image.BICUBIC))


def lr_size_for(hr_side: int, scale: float) -> int:
    """LR side for an HR side and scale: ``floor(hr / s + 1e-9)`` (LIIF's test rule)."""
    return int(math.floor(hr_side / scale + 1e-9))


def crop_sizes(scale: float, lr_patch: int | None, hr_patch: int | None) -> tuple:
    """``(lr side, hr side)`` of square training crops at ``scale``: from ``lr_patch``
    (LIIF: HR = ``round(lr * s)``) or ``hr_patch`` (DIIF: LR = ``floor(hr / s + 1e-9)``,
    HR = ``round(lr * s)``); exactly one is given."""
    lr = lr_patch if lr_patch is not None else lr_size_for(hr_patch, scale)
    return lr, int(math.floor(lr * scale + 0.5))


def max_hr_side(scale: "ScaleDist", lr_patch: int | None, hr_patch: int | None) -> int:
    """The largest HR crop side any scale of ``scale`` needs: images with a shorter side
    cannot be cropped and are skipped."""
    if lr_patch is not None:
        return crop_sizes(scale.high, lr_patch, None)[1]
    return hr_patch


class ImageFolder:
    """The readable PNG/JPEG images under ``root``, as ``3×H×W`` uint8 tensors.

    Args:
        root: folder searched recursively (symlinks followed); or a list of file paths.
        min_side: images whose shorter side (after ``max_side``) is below this are
            skipped, e.g. the largest HR crop training needs.
        max_side: shrink images whose longer side exceeds this (``None``: never).
            Wallpapers are often 4-6K JPEGs; shrinking them keeps memory small and
            reduces compression artefacts per pixel.
        cache: keep decoded images in memory (LIIF's ``in_memory``).  Either way every
            file is read once when the folder is built, to find the unreadable ones.

    Attributes:
        paths: the usable files, sorted.
        skipped: ``[(path, reason)]`` of files left out.
    """

    def __init__(self, root, *, min_side: int = 1, max_side: int | None = None,
                 cache: bool = True):
        if isinstance(root, (str, os.PathLike)):
            if not os.path.isdir(root):
                raise FileNotFoundError(f"image folder {os.fspath(root)!r} does not exist")
            candidates = sorted(
                os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True)
                for f in files if f.lower().endswith(EXTENSIONS))
        else:
            candidates = sorted(map(os.fspath, root))
        self.min_side, self.max_side, self.cache = min_side, max_side, cache
        self.paths, self.skipped, self._images = [], [], []
        for path in candidates:
            try:
                img = read_image(path, max_side)
            except Exception as exc:  # noqa: BLE001
                # Pillow raises OSError for unknown or truncated files, but ValueError,
                # SyntaxError or DecompressionBombError for some malformed ones: a bad
                # file must never stop a training run.
                self._skip(path, f"unreadable ({type(exc).__name__}: {exc})")
                continue
            if min(img.size) < min_side:
                self._skip(path, f"too small ({img.width}x{img.height} < {min_side} px)")
                continue
            self.paths.append(path)
            if cache:
                self._images.append(to_tensor(img))
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} of {len(candidates)} files skipped "
                          f"(unreadable or smaller than {min_side} px)", stacklevel=2)
        if not self.paths:
            raise ValueError(f"no usable PNG/JPEG images in {root!r} "
                             f"({len(self.skipped)} skipped)")

    def _skip(self, path, reason):
        self.skipped.append((path, reason))
        warnings.warn(f"skipping {path}: {reason}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.cache:
            return self._images[i]
        return to_tensor(read_image(self.paths[i], self.max_side))


@dataclass(frozen=True)
class ScaleDist:
    """Distribution of the per-batch scale: ``uniform`` over ``[low, high]`` or a uniform
    choice among ``choices``.  Built from config with :meth:`parse`."""
    low: float = 1.0
    high: float = 4.0
    choices: tuple = ()

    @classmethod
    def parse(cls, spec) -> "ScaleDist":
        """``{"uniform": [1, 4]}``, ``{"choices": [2, 2.5, 3]}``, ``[1, 4]`` (interval) or a
        single number (fixed scale)."""
        if isinstance(spec, dict):
            if set(spec) == {"uniform"}:
                low, high = (float(v) for v in spec["uniform"])
            elif set(spec) == {"choices"}:
                c = tuple(float(v) for v in spec["choices"])
                if not c or min(c) < 1:
                    raise ValueError(f"scale choices must be numbers >= 1, got {spec['choices']}")
                return cls(min(c), max(c), c)
            else:
                raise ValueError(f"scale must be {{uniform: [lo, hi]}} or {{choices: [...]}}, "
                                 f"got {spec!r}")
        elif isinstance(spec, (int, float)):
            low = high = float(spec)
        else:
            low, high = (float(v) for v in spec)
        if not 1 <= low <= high:
            raise ValueError(f"scale interval must satisfy 1 <= low <= high, got [{low}, {high}]")
        return cls(low, high)

    def sample(self, gen: torch.Generator) -> float:
        if self.choices:
            return self.choices[int(torch.randint(len(self.choices), (1,), generator=gen))]
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        return self.low + (self.high - self.low) * u


@dataclass
class Batch:
    """One training batch; all images share one scale.

    ``lr``: ``B×3×h×w`` float in [0, 1].  ``hr_size``: ``(H, W)`` of the HR crops (the
    decoders' output size).  ``pixels``: ``B×Q×2`` int64 (row, col) HR pixel indices of the
    targets (every pixel in raster order when ``sample_q`` is ``None``).  ``coord``,
    ``cell``: ``B×Q×2`` the same pixels as LIIF coordinates and cells.  ``rgb``: ``B×Q×3``
    target colours in [0, 1].  ``hr``: ``B×3×H×W`` the HR crops in [0, 1].  ``scale``: the
    drawn scale (the effective one is ``H / h``).
    """
    lr: torch.Tensor
    hr: torch.Tensor
    hr_size: tuple
    pixels: torch.Tensor
    coord: torch.Tensor
    cell: torch.Tensor
    rgb: torch.Tensor
    scale: float

    def to(self, device) -> "Batch":
        """This batch with its tensors on ``device``."""
        move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                for k, v in self.__dict__.items()}
        return Batch(**move)


class PairSampler:
    """Random LR/HR training batches from an :class:`ImageFolder`.

    Args:
        images: the source images.
        batch_size: images per batch.
        scale: a :class:`ScaleDist` or its config form (see :meth:`ScaleDist.parse`).
        lr_patch: LR side (LIIF: 48); HR crop ``round(lr_patch * s)``.
        hr_patch: HR side (DIIF: 192); LR ``floor(hr_patch / s + 1e-9)``.  Exactly one of
            ``lr_patch`` and ``hr_patch``.
        sample_q: HR pixels sampled per image without replacement (LIIF: 2304), or ``None``
            for every pixel of the crop.
        augment: random row flip, column flip and transpose (three coins, as LIIF; with
            square crops they generate all flips and 90° rotations).
        seed: seed of :attr:`generator`.
    """

    def __init__(self, images: ImageFolder, batch_size: int, *, scale=None,
                 lr_patch: int | None = None, hr_patch: int | None = None,
                 sample_q: int | None = 2304, augment: bool = True, seed: int = 0):
        if (lr_patch is None) == (hr_patch is None):
            raise ValueError("give exactly one of lr_patch and hr_patch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.batch_size = images, batch_size
        self.scale = scale if isinstance(scale, ScaleDist) else ScaleDist.parse(
            [1, 4] if scale is None else scale)
        self.lr_patch, self.hr_patch = lr_patch, hr_patch
        self.sample_q, self.augment = sample_q, augment
        self.generator = torch.Generator().manual_seed(seed)
        if lr_patch is not None and lr_patch < 1:
            raise ValueError(f"lr_patch must be >= 1, got {lr_patch}")
        if hr_patch is not None and lr_size_for(hr_patch, self.scale.high) < 1:
            raise ValueError(f"hr_patch {hr_patch} is smaller than the largest scale "
                             f"{self.scale.high}")
        if sample_q is not None and sample_q > self.sizes(self.scale.low)[1] ** 2:
            raise ValueError(f"sample_q {sample_q} exceeds the pixels of the smallest HR crop "
                             f"({self.sizes(self.scale.low)[1]}² at scale {self.scale.low})")

    def sizes(self, scale: float) -> tuple:
        """``(lr side, hr side)`` of the square crops at ``scale``."""
        return crop_sizes(scale, self.lr_patch, self.hr_patch)

    def max_hr_side(self) -> int:
        """The largest HR crop side of this sampler (the smallest usable image side)."""
        return max_hr_side(self.scale, self.lr_patch, self.hr_patch)

    def _randint(self, high: int) -> int:
        """Uniform integer in ``[0, high]`` (inclusive, as LIIF's crop positions)."""
        return int(torch.randint(high + 1, (1,), generator=self.generator))

    def _pair(self, scale: float):
        """One ``(lr uint8 3×h×h, hr uint8 3×H×H)`` pair at ``scale``."""
        lr_side, hr_side = self.sizes(scale)
        img = self.images[self._randint(len(self.images) - 1)]
        _, h, w = img.shape
        if min(h, w) < hr_side:
            raise ValueError(f"image {h}x{w} is smaller than the HR crop {hr_side}; build the "
                             f"ImageFolder with min_side={self.max_hr_side()}")
        y, x = self._randint(h - hr_side), self._randint(w - hr_side)
        hr = img[:, y:y + hr_side, x:x + hr_side]
        lr = bicubic_resize(hr, (lr_side, lr_side))
        if self.augment:
            flips = torch.rand(3, generator=self.generator) < 0.5
            if flips[0]:
                hr, lr = hr.flip(-2), lr.flip(-2)
            if flips[1]:
                hr, lr = hr.flip(-1), lr.flip(-1)
            if flips[2]:
                hr, lr = hr.transpose(-2, -1), lr.transpose(-2, -1)
        return lr, hr

    def next(self) -> Batch:
        """Draw the next batch."""
        scale = self.scale.sample(self.generator)
        pairs = [self._pair(scale) for _ in range(self.batch_size)]
        lr = torch.stack([p[0] for p in pairs]).float() / 255
        hr = torch.stack([p[1] for p in pairs]).float() / 255
        b, _, hh, ww = hr.shape
        if self.sample_q is None:
            flat = torch.arange(hh * ww).expand(b, -1)
        else:
            # Without replacement, per image (LIIF's sample_q).
            flat = torch.stack([torch.randperm(hh * ww, generator=self.generator)[:self.sample_q]
                                for _ in range(b)])
        pixels = torch.stack([flat // ww, flat % ww], dim=-1)
        rgb = hr.flatten(2).gather(2, flat.unsqueeze(1).expand(-1, 3, -1)).transpose(1, 2)
        coord = geometry.pixel_coord(pixels, (hh, ww))
        cell = torch.tensor([2 / hh, 2 / ww]).expand_as(coord)
        return Batch(lr, hr, (hh, ww), pixels, coord, cell, rgb.contiguous(), scale)
