"""16-bit colour images, which Pillow cannot hold (it has no 16-bit colour mode).

PNG files are read and written with ``pypng`` and TIFF files with ``tifffile``, as
``H×W×C`` ``uint16`` arrays (``C``: 2 grey with alpha, 3 RGB, 4 RGBA):

* :func:`is_16_bit_colour` tells from a file's header (PNG ``IHDR`` bit depth 16 with
  colour type 2, 4 or 6; TIFF ``BitsPerSample`` 16, unsigned, RGB or grey with extra
  samples) whether it is such an image; other files stay with Pillow.
* :func:`read` returns the pixels upright (EXIF orientation applied) and the ICC
  profile; a PNG ``tRNS`` colour becomes an alpha channel, a TIFF's associated
  (premultiplied) alpha is divided out.
* :class:`Image16` holds an array with the two methods of ``PIL.Image`` that writing a
  result needs (``save`` and ``resize``), so results are saved like Pillow images.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np

__all__ = ["is_16_bit_colour", "read", "Image16", "orient"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: PNG colour types of grey with alpha, RGB and RGBA (grey alone stays with Pillow).
PNG_COLOUR_TYPES = (4, 2, 6)
#: TIFF Photometric values: grey (black is zero) and RGB.
TIFF_GREY, TIFF_RGB = 1, 2
#: TIFF ExtraSamples values of an alpha channel: associated (premultiplied), unassociated.
TIFF_ASSOCIATED_ALPHA, TIFF_UNASSOCIATED_ALPHA = 1, 2
EXIF_ORIENTATION = 0x0112
TOP = 65535

#: EXIF orientation -> how to make an ``H×W×C`` array upright (ImageOps.exif_transpose's
#: transposes, in numpy).
ORIENTATIONS = {
    2: lambda a: a[:, ::-1],                            # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],                         # ROTATE_180
    4: lambda a: a[::-1],                               # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),                  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),                       # ROTATE_270 (anticlockwise)
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),     # TRANSVERSE
    8: lambda a: np.rot90(a, 1),                        # ROTATE_90 (anticlockwise)
}
#: Channel count -> mode name (Pillow's names with ``;16``).  16-bit grey alone is
#: Pillow's ``I;16``.
MODES = {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}


def _require(module: str, package: str, what: str):
    """Import ``module`` or raise an ``ImportError`` saying which package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the package {package}: pip install {package}") from None


def _png():
    return _require("png", "pypng", "16-bit colour PNG")


def _tifffile():
    return _require("tifffile", "tifffile", "16-bit colour TIFF")


def orient(array: np.ndarray, orientation) -> np.ndarray:
    """``array`` (``H×W×C``) made upright for an EXIF ``orientation`` (1-8; others,
    ``None`` included, leave it as it is)."""
    turn = ORIENTATIONS.get(orientation)
    return array if turn is None else np.ascontiguousarray(turn(array))


# ---------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------

def _png_chunks(f):
    """``(type, data)`` of each chunk of the PNG file ``f`` (positioned after the
    signature), with the image data (``IDAT``) skipped, not read."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            f.seek(length, io.SEEK_CUR)
            data = b""
        else:
            data = f.read(length)
        f.seek(4, io.SEEK_CUR)                          # CRC (pypng checks it on decoding)
        yield kind, data
        if kind == b"IEND":
            return


def _png_is_16_bit_colour(f) -> bool:
    kind, ihdr = next(_png_chunks(f), (None, b""))
    return kind == b"IHDR" and len(ihdr) == 13 and ihdr[8] == 16 and ihdr[9] in PNG_COLOUR_TYPES


def _tiff_is_16_bit_colour(page) -> bool:
    """Whether tifffile reads this TIFF page, and Pillow would not at full depth: 16-bit
    unsigned RGB, or grey with extra samples (single-channel grey Pillow reads itself)."""
    return (page.bitspersample == 16 and page.sampleformat == 1
            and (page.photometric == TIFF_RGB
                 or (page.photometric == TIFF_GREY and page.samplesperpixel > 1)))


def is_16_bit_colour(path) -> bool:
    """Whether ``path`` is a 16-bit colour (or grey with alpha) PNG or TIFF, told from its
    header, not its name.  Raises ``OSError`` when the file cannot be opened."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head == PNG_SIGNATURE:
            return _png_is_16_bit_colour(f)
    if head[:4] in TIFF_SIGNATURES:
        with _tifffile().TiffFile(path) as tif:
            return _tiff_is_16_bit_colour(tif.pages[0])
    return False


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

def _exif_orientation(exif: bytes | None):
    """The orientation tag of raw EXIF data (``Exif\\0\\0`` header optional), or None."""
    if not exif:
        return None
    from PIL import Image

    tags = Image.Exif()
    tags.load(exif)
    return tags.get(EXIF_ORIENTATION)


def _png_metadata(path) -> tuple:
    """``(icc, orientation)`` of a PNG file: its ``iCCP`` profile (decompressed) and the
    orientation in its ``eXIf`` chunk, each ``None`` when absent."""
    icc = exif = None
    with open(path, "rb") as f:
        f.seek(len(PNG_SIGNATURE))
        for kind, data in _png_chunks(f):
            if kind == b"iCCP":
                # profile name, NUL, compression method (0: zlib), compressed profile
                icc = zlib.decompress(data[data.index(b"\0") + 2:])
            elif kind == b"eXIf":
                exif = data
    return icc, _exif_orientation(exif)


def _png_pixels(path) -> np.ndarray:
    """A 16-bit PNG's pixels, ``H×W×C`` ``uint16``, its ``tRNS`` colour (if any) made an
    alpha channel (opaque except where a pixel equals that colour)."""
    width, height, rows, info = _png().Reader(filename=str(path)).read()
    planes = info["planes"]
    array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    array = array.reshape(height, width, planes)
    transparent = info.get("transparent")
    if transparent is not None and not info["alpha"]:
        clear = (array == np.asarray(transparent, dtype=np.uint16)).all(-1, keepdims=True)
        array = np.concatenate([array, np.where(clear, 0, TOP).astype(np.uint16)], -1)
    return array


def _tiff_channels(page, array: np.ndarray) -> np.ndarray:
    """A TIFF page's samples as ``H×W×C``: colour channels, then the alpha channel when
    the first extra sample is one (other extra samples are dropped); associated
    (premultiplied) alpha is divided out."""
    if sorted(page.axes) != ["S", "X", "Y"]:
        raise ValueError(f"unsupported TIFF layout {page.axes!r} (expected rows, columns "
                         "and samples)")
    array = array.transpose([page.axes.index(a) for a in "YXS"])
    colours = 3 if page.photometric == TIFF_RGB else 1
    extras = tuple(page.extrasamples or ())
    alpha = bool(extras) and extras[0] in (TIFF_ASSOCIATED_ALPHA, TIFF_UNASSOCIATED_ALPHA)
    array = array[..., :colours + alpha]
    if alpha and extras[0] == TIFF_ASSOCIATED_ALPHA:
        a = array[..., -1:].astype(np.float64)
        colour = np.divide(array[..., :-1] * float(TOP), a, out=np.zeros(a.shape[:2] + (colours,)),
                           where=a > 0)
        array = np.concatenate([colour.round().clip(0, TOP).astype(np.uint16), array[..., -1:]], -1)
    return np.ascontiguousarray(array)


def _tiff_pixels_and_metadata(path) -> tuple:
    """``(pixels, icc, orientation)`` of a 16-bit TIFF's first page."""
    with _tifffile().TiffFile(path) as tif:
        page = tif.pages[0]
        icc = page.tags.valueof("InterColorProfile")
        orientation = page.tags.valueof("Orientation")
        pixels = _tiff_channels(page, page.asarray())
    orientation = None if orientation is None else int(orientation)
    return pixels, None if icc is None else bytes(icc), orientation


def read(path) -> tuple:
    """``(pixels, icc)`` of a file :func:`is_16_bit_colour` accepts: ``H×W×C`` ``uint16``
    upright (EXIF orientation applied), and the ICC profile bytes or ``None``."""
    with open(path, "rb") as f:
        is_png = f.read(8) == PNG_SIGNATURE
    if is_png:
        icc, orientation = _png_metadata(path)
        pixels = _png_pixels(path)
    else:
        pixels, icc, orientation = _tiff_pixels_and_metadata(path)
    return orient(pixels, orientation), icc or None


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

def _icc_chunk(icc: bytes) -> tuple:
    """A PNG ``iCCP`` chunk holding the profile ``icc``."""
    return b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)


def _write_png(f, array: np.ndarray, icc: bytes | None) -> None:
    png = _png()
    height, width, channels = array.shape
    writer = png.Writer(width, height, greyscale=channels < 3, alpha=channels in (2, 4),
                        bitdepth=16)
    rows = array.reshape(height, width * channels)
    if not icc:
        writer.write(f, rows)
        return
    buffer = io.BytesIO()
    writer.write(buffer, rows)
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    png.write_chunks(f, chunks[:1] + [_icc_chunk(icc)] + chunks[1:])   # right after IHDR


def _write_tiff(f, array: np.ndarray, icc: bytes | None) -> None:
    channels = array.shape[-1]
    _tifffile().imwrite(f, array, photometric="rgb" if channels >= 3 else "minisblack",
                        extrasamples=["unassalpha"] if channels in (2, 4) else None,
                        iccprofile=icc or None)


WRITERS = {"PNG": _write_png, "TIFF": _write_tiff}


class Image16:
    """A 16-bit image (``H×W×C`` ``uint16`` ``array``, ``C`` 2 to 4: grey with alpha, RGB,
    RGBA) saved and resized like a ``PIL.Image``."""

    def __init__(self, array: np.ndarray):
        if array.dtype != np.uint16 or array.ndim != 3 or array.shape[-1] not in MODES:
            raise ValueError(f"Image16 holds H×W×C uint16 arrays with 2 to 4 channels, got "
                             f"{array.dtype} {array.shape}")
        self.array = np.ascontiguousarray(array)

    @property
    def mode(self) -> str:
        """``"LA;16"``, ``"RGB;16"`` or ``"RGBA;16"``."""
        return MODES[self.array.shape[-1]]

    @property
    def size(self) -> tuple:
        """``(width, height)``, as Pillow's."""
        return self.array.shape[1], self.array.shape[0]

    def save(self, fp, format: str, icc_profile: bytes | None = None) -> None:  # noqa: A002
        """Write to ``fp`` (a path or binary file) as ``format`` (``"PNG"`` or ``"TIFF"``),
        with the ICC profile ``icc_profile``.  Raises ``ValueError`` for other formats."""
        writer = WRITERS.get(format)
        if writer is None:
            raise ValueError(f"16-bit colour can be written as PNG or TIFF, not {format}")
        if hasattr(fp, "write"):
            writer(fp, self.array, icc_profile)
            return
        with open(fp, "wb") as f:
            writer(f, self.array, icc_profile)

    def resize(self, size, resample) -> "Image16":
        """Resized to ``size = (width, height)`` with Pillow's filter ``resample`` on each
        channel in float32; colour is premultiplied by alpha while resizing, as Pillow
        does for RGBA."""
        values = self.array.astype(np.float32)
        alpha = self.array.shape[-1] in (2, 4)
        if alpha:
            values[..., :-1] *= values[..., -1:] / TOP
        out = np.stack([_resize_plane(values[..., c], size, resample)
                        for c in range(values.shape[-1])], -1)
        if alpha:
            a = out[..., -1:]
            np.divide(out[..., :-1] * TOP, a, out=out[..., :-1], where=a > 0)
            out[..., :-1] *= a > 0
        return Image16(out.round().clip(0, TOP).astype(np.uint16))


def _resize_plane(plane: np.ndarray, size, resample) -> np.ndarray:
    """One float32 channel resized with Pillow (mode ``F``), rows then columns, clipped to
    ``[0, 65535]`` after each pass as Pillow's integer modes are."""
    from PIL import Image

    width, height = size
    wide = Image.fromarray(plane).resize((width, plane.shape[0]), resample)
    wide = Image.fromarray(np.asarray(wide).clip(0, TOP))
    return np.asarray(wide.resize((width, height), resample)).clip(0, TOP)
