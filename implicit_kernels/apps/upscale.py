"""``python -m implicit_kernels upscale IN.png -o OUT.png --scale 3.7`` (or ``implicit-sr
upscale ...``): super-resolve a photograph with a trained model.

* ``--scale S`` (or ``AxB``: rows ×A, columns ×B) gives the output size
  ``round(h·A) × round(w·B)``; ``--size HxW`` gives it directly (rows first).
* ``--model`` is a shipped model name (default ``edsr-baseline-diif``), or a weights file /
  training checkpoint whose name has a folder or an extension; ``--weights PATH`` takes
  any path (:func:`implicit_kernels.apps.weights.load_model`).  Files are never unpickled
  beyond tensors and plain data.
* ``--backend`` picks the ``F`` backend (default ``auto``), checked up front.
* ``--tile N`` runs the encoder on ``N×N`` tiles of the input, each with a margin equal
  to the encoder's receptive-field radius, so the features, and hence the output, equal
  the untiled ones (up to float summation order) while the encoder's activations stay
  small; inputs above :data:`AUTO_TILE_PIXELS` are tiled automatically.  Tiles smaller
  than :func:`min_tile` are refused: each tile recomputes its margin, so a tile of side
  ``t`` costs ``((t + 2r) / t)²`` times the untiled work (4× at ``t = 2r``, 4,761× at
  ``t = 1`` for EDSR-baseline's ``r = 34``).  The decoder always works in bands of output
  rows (memory bounded at any output size), with a progress bar on large outputs.
* The image is read upright (EXIF orientation applied), at its full depth: a 16-bit
  PNG/TIFF (grey, RGB or RGBA; colour through :mod:`.image16`) gives a 16-bit result,
  grey gives grey; an alpha channel is up-sampled with bicubic interpolation and kept at
  the input's depth; the ICC profile is written with the result.
* ``--bicubic PATH`` also writes Pillow's bicubic up-sampling to the same size, for
  comparison.
* Outputs are checked before anything is decoded (known extension, folder exists and is
  writable, not a directory, not the input, not existing unless ``--force``) and written
  atomically (a temporary file in the same folder, then ``os.replace``): Ctrl-C exits
  with status 130 and leaves no partial file.

Every refused request (README "Upscaling a photo" lists them) prints one line,
``upscale: error: ...``, on stderr and exits with status 2; other failures exit 1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from torch import nn

from implicit_kernels import backends, geometry

from . import data as D
from .weights import load_model, load_model_file

DEFAULT_MODEL = "edsr-baseline-diif"
#: Largest output accepted without ``--max-pixels`` (0.2 gigapixels: 600 MB as uint8).
MAX_PIXELS = 200_000_000
#: Inputs with more pixels than this are encoded in tiles unless ``--tile`` says otherwise.
AUTO_TILE_PIXELS = 1024 * 1024
AUTO_TILE = 512
#: Output pixels per decoded band (the ``F`` op chunks further inside a band).
BAND_PIXELS = 1 << 20
#: Outputs from this many pixels on show a progress bar.
PROGRESS_PIXELS = 1 << 22
#: Smallest ``--tile`` for any encoder (see :func:`min_tile`).
MIN_TILE = 16
#: ITU-R 601-2 luma weights (Pillow's RGB -> L): a grey input's result is written grey.
LUMA = (0.299, 0.587, 0.114)
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130

__all__ = ["parse_size", "parse_scale", "parse_device", "output_size", "receptive_radius",
           "global_receptive_field", "min_tile", "encode", "upscale", "upsample_alpha",
           "check_outputs", "main", "UsageError"]


class UsageError(ValueError):
    """A bad command-line request (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are :class:`UsageError` (one line, exit status 2)
    instead of a usage block."""

    def error(self, message):
        raise UsageError(message)


def parse_size(text: str) -> tuple:
    """``"1080x1920"`` -> ``(1080, 1920)`` (rows, columns)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad --size {text!r}: use HxW in pixels, rows first, "
                         "e.g. 1080x1920") from None
    if h < 1 or w < 1:
        raise UsageError(f"bad --size {text!r}: both sides must be positive")
    return h, w


def parse_scale(text: str) -> tuple:
    """``"3.7"`` -> ``(3.7, 3.7)``; ``"3x5"`` -> ``(3.0, 5.0)`` (rows ×, columns ×)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"bad --scale {text!r}: use a number like 3.7, or AxB") from None
    if len(values) not in (1, 2) or not all(map(math.isfinite, values)):
        raise UsageError(f"bad --scale {text!r}: use a number like 3.7, or AxB")
    return values[0], values[-1]


def output_size(in_size, scale=None, size=None, max_pixels: int = MAX_PIXELS) -> tuple:
    """The output ``(H, W)`` from a scale pair or an explicit size, checked: each side at
    least the input's (these models only up-sample) and at most ``max_pixels`` in all.

    Raises :class:`UsageError` with the reason.
    """
    if (scale is None) == (size is None):
        raise UsageError("give exactly one of --scale and --size")
    if size is None:
        if min(scale) < 1:
            raise UsageError(f"scale {min(scale):g} is below 1: these models only up-sample")
        size = tuple(int(math.floor(n * s + 0.5)) for n, s in zip(in_size, scale))
    if size[0] < in_size[0] or size[1] < in_size[1]:
        raise UsageError(f"output {size[0]}x{size[1]} is smaller than the input "
                         f"{in_size[0]}x{in_size[1]}: these models only up-sample")
    if size[0] * size[1] > max_pixels:
        raise UsageError(f"output {size[0]}x{size[1]} has {size[0] * size[1]:,} pixels, more "
                         f"than the limit of {max_pixels:,} (raise it with --max-pixels if "
                         "you really mean it)")
    return size


def parse_device(text: str | None) -> torch.device:
    """The ``--device``: default cuda when available, else cpu; checked to exist here."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"bad --device {text!r}: use cpu, cuda or cuda:N") from None
    if device.type == "meta":
        raise UsageError("--device meta holds no data: use cpu or cuda")
    try:
        torch.empty(1, device=device)
    except Exception as exc:  # noqa: BLE001  (AssertionError on CPU-only torch, RuntimeError...)
        raise UsageError(f"--device {text}: not available here ({_one_line(exc)})") from None
    return device


def receptive_radius(encoder: nn.Module) -> int:
    """How far (in input pixels) the encoder's output can depend on its input: the sum of
    the convolutions' half-widths (each zero-padded convolution spreads a tile's border
    error inwards by its half-width)."""
    r = 0
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            r += max((k - 1) // 2 * d for k, d in zip(m.kernel_size, m.dilation))
    return r


def global_receptive_field(encoder: nn.Module) -> bool:
    """Whether every output feature of ``encoder`` depends on the whole input (its
    ``global_receptive_field`` attribute, e.g. SwinIR's shifted-window attention and
    padding): such an encoder is never tiled."""
    return bool(getattr(encoder, "global_receptive_field", False))


def min_tile(encoder: nn.Module) -> int:
    """The smallest ``--tile`` accepted: twice the receptive radius (at most 4× the
    untiled encoder's work; smaller tiles cost quadratically more), and at least
    :data:`MIN_TILE`."""
    return max(MIN_TILE, 2 * receptive_radius(encoder))


def encode(encoder: nn.Module, inp: torch.Tensor, tile: int | None = None,
           margin: int | None = None) -> torch.Tensor:
    """Encoder features of ``inp`` (``1×3×h×w``, normalised), computed whole or in
    ``tile×tile`` tiles each read with ``margin`` extra pixels around it (default: the
    receptive radius, which makes tiling exact)."""
    if not tile:
        return encoder(inp)
    if global_receptive_field(encoder):
        raise ValueError(f"{type(encoder).__name__} cannot be encoded in tiles: every output "
                         "feature depends on the whole input")
    margin = receptive_radius(encoder) if margin is None else margin
    _, _, h, w = inp.shape
    feat = None
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            y0, x0 = max(0, y - margin), max(0, x - margin)
            y1, x1 = min(h, y + tile + margin), min(w, x + tile + margin)
            part = encoder(inp[:, :, y0:y1, x0:x1])
            if feat is None:
                feat = part.new_empty(part.shape[0], part.shape[1], h, w)
            th, tw = min(tile, h - y), min(tile, w - x)
            feat[:, :, y:y + th, x:x + tw] = part[:, :, y - y0:y - y0 + th, x - x0:x - x0 + tw]
    return feat


def upscale(model: nn.Module, img: torch.Tensor, size, *, backend: str = "auto",
            tile: int | None = None, progress: bool | None = None, bits: int = 8,
            grey: bool = False) -> torch.Tensor:
    """Super-resolve ``img`` (``1×3×h×w`` in [0, 1]) to ``size`` with a decoder model.

    Returns the ``3×H×W`` image rounded to ``bits`` (8: ``uint8``, 16: ``uint16``); with
    ``grey``, the ``1×H×W`` luma (:data:`LUMA`) of the result instead.  ``progress=None``
    shows a bar when the output has at least :data:`PROGRESS_PIXELS` pixels.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    h_out, w_out = size
    decoder = type(model).__name__.lower()
    with torch.no_grad():
        inp = (img - 0.5) / 0.5
        feat = encode(model.encoder, inp, tile)
        out = torch.empty(1 if grey else 3, h_out, w_out,
                          dtype=torch.uint8 if bits == 8 else torch.uint16)
        if decoder == "hiif":
            # HIIF's attention sums over every query of the image: bands would change it.
            bands = [(0, h_out)]
        else:
            rows = max(1, BAND_PIXELS // w_out)
            bands = [(r, min(h_out, r + rows)) for r in range(0, h_out, rows)]
        bar = _progress_bar(h_out * w_out, progress)
        try:
            for r0, r1 in bands:
                rgb = _decode_band(model, decoder, feat, inp, size, r0, r1, backend)
                out[:, r0:r1] = _quantise(rgb * 0.5 + 0.5, bits, grey).cpu()
                if bar is not None:
                    bar.update((r1 - r0) * w_out)
        finally:
            if bar is not None:
                bar.close()
    return out


def _progress_bar(pixels: int, progress: bool | None):
    """A tqdm bar over ``pixels`` output pixels, or ``None`` (not wanted, or no tqdm)."""
    if not (progress if progress is not None else pixels >= PROGRESS_PIXELS):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience, not a dependency
        return None
    return tqdm(total=pixels, unit="px", unit_scale=True, desc="decoding", file=sys.stderr,
                dynamic_ncols=True)


def _quantise(x: torch.Tensor, bits: int, grey: bool = False) -> torch.Tensor:
    """``C×H×W`` values in [0, 1] (clamped) rounded to ``bits`` unsigned integers; with
    ``grey``, their luma (``1×H×W``)."""
    x = x.clamp(0, 1)
    if grey:
        x = (x * x.new_tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    top = (1 << bits) - 1
    return x.mul(top).round().to(torch.uint8 if bits == 8 else torch.uint16)


def upsample_alpha(alpha: torch.Tensor, size, bits: int = 8) -> torch.Tensor:
    """An alpha channel (``1×h×w`` in [0, 1]) up-sampled to ``size`` with bicubic
    interpolation (a plain interpolator: the models are trained on colour), clamped and
    rounded to ``bits``."""
    up = torch.nn.functional.interpolate(alpha[None].float(), size=tuple(size), mode="bicubic",
                                         align_corners=False)[0]
    return _quantise(up, bits)


def _decode_band(model, decoder, feat, inp, size, r0, r1, backend):
    """Normalised RGB ``3×(r1-r0)×W`` of output rows ``[r0, r1)``."""
    h_out, w_out = size
    if (r0, r1) == (0, h_out):
        return model.decode(feat, inp, size, backend=backend)[0]
    rows = torch.arange(r0, r1, device=feat.device).repeat_interleave(w_out)
    cols = torch.arange(w_out, device=feat.device).repeat(r1 - r0)
    pix = torch.stack([rows, cols], dim=-1).unsqueeze(0)
    if decoder in ("diif", "dlte"):
        q = model.decode(feat, inp, size, pixels=pix, backend=backend)
    else:
        coord = geometry.pixel_coord(pix, size, feat.dtype)
        cell = torch.tensor([2 / h_out, 2 / w_out], device=feat.device,
                            dtype=feat.dtype).expand_as(coord)
        q = model.decode(feat, inp, None, coord=coord, cell=cell, backend=backend)
    return q[0].t().reshape(3, r1 - r0, w_out)


def _bundled_photo() -> str:
    import importlib.resources

    return str(importlib.resources.files(__package__) / "assets" / "astronaut.png")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m implicit_kernels upscale",
        description="Super-resolve an image to any size with a trained implicit model.")
    p.add_argument("input", nargs="?",
                   help="PNG/JPEG/TIFF/WebP image (default: the bundled 64x64 photograph)")
    p.add_argument("-o", "--output", help="output image (default: <input>_x<scale>.png here)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", help="factor, e.g. 3.7, or AxB for rows xA and columns xB")
    g.add_argument("--size", help="output size HxW in pixels, rows first, e.g. 1080x1920")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"shipped model name (default {DEFAULT_MODEL}), or a weights file "
                        "or checkpoint path with a folder or an extension (./mine, x.pt)")
    m.add_argument("--weights", metavar="PATH",
                   help="a weights file (.safetensors) or training checkpoint, any name")
    p.add_argument("--backend", default="auto", help="F backend (default auto)")
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    p.add_argument("--tile", type=int,
                   help=f"encode the input in NxN tiles (exact; default {AUTO_TILE} for inputs "
                        f"over {AUTO_TILE_PIXELS:,} pixels, else whole; 0: never tile; at "
                        f"least twice the encoder's receptive radius, {MIN_TILE} at least)")
    p.add_argument("--bicubic", metavar="PATH",
                   help="also write Pillow's bicubic up-sampling to the same size")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse larger outputs (default {MAX_PIXELS:,})")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (its lines joined), or its type's name."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv=None) -> int:
    """Run the command; returns the exit status: 0, 2 for a refused request, 130 after
    Ctrl-C, 1 for any other failure.  Each error is one line on stderr."""
    try:
        return _main(_parser().parse_args(argv))
    except UsageError as exc:
        print(f"upscale: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("upscale: interrupted; no partial output was left", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, OSError, ImportError, RuntimeError, MemoryError) as exc:
        print(f"upscale: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def check_outputs(targets, input_path: str, force: bool = False) -> None:
    """Refuse output paths that cannot or must not be written, before any work.

    ``targets``: ``[(option, path)]`` such as ``[("-o", "x.png"), ("--bicubic", "b.png")]``.
    Each must have a known image extension, lie in an existing writable folder, not be a
    directory, the input or another target, and not exist unless ``force``.

    Raises :class:`UsageError` naming the option and the reason.
    """
    seen = []
    for option, path in targets:
        if os.path.isdir(path):
            raise UsageError(f"{option} {path!r} is a directory: give a file name")
        ext = os.path.splitext(path)[1].lower()
        if D.image_format(path) is None:
            raise UsageError(f"cannot write {path!r}: unknown image extension {ext!r} "
                             "(use .png or .jpg)")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path!r}: folder {folder!r} is not writable")
        if _same_file(path, input_path):
            raise UsageError(f"{option} {path!r} is the input: choose another name")
        if any(_same_file(path, other) for other in seen):
            raise UsageError(f"-o and --bicubic name the same file {path!r}")
        if os.path.exists(path) and not force:
            raise UsageError(f"{option} {path!r} exists: pass --force to overwrite it")
        seen.append(path)


def _check_format(photo, targets) -> None:
    """Refuse formats that would silently lose the alpha channel or 16-bit depth."""
    for option, path in targets:
        fmt, ext = D.image_format(path), os.path.splitext(path)[1]
        # Depth first: the formats that keep 16 bits keep alpha too.
        if photo.bits == 16 and fmt not in D.FORMATS_16_BIT:
            raise UsageError(f"{option} {path!r}: {ext} cannot keep the input's 16 bits; "
                             "write .png or .tif")
        if photo.alpha is not None and fmt not in D.FORMATS_ALPHA:
            raise UsageError(f"{option} {path!r}: {ext} cannot keep the input's alpha "
                             "channel; write .png, .tif or .webp")


def _read_input(path: str):
    try:
        return D.read_photo(path)
    except FileNotFoundError:
        raise UsageError(f"cannot read {path!r}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"cannot read {path!r}: it is a directory") from None
    except Exception as exc:  # noqa: BLE001  (Pillow raises many types for bad files)
        raise UsageError(f"cannot read {path!r} as an image: {_one_line(exc)}") from None


def _load(args, device):
    """``(model, info)`` of ``--weights`` or ``--model``; unreadable, refused or unfit
    files are usage errors."""
    try:
        if args.weights is not None:
            return load_model_file(args.weights, device=device)
        return load_model(args.model, device=device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_model_options(model, args, device) -> None:
    """``--backend`` can run this model's decoder on ``device``; ``--tile`` is not below
    :func:`min_tile`."""
    decoder = type(model).__name__.lower()
    with torch.no_grad():
        feat = model.encoder(torch.zeros(1, 3, 1, 1, device=device))
    try:
        backends.resolve(args.backend, decoder, feat)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--backend {args.backend}: {_one_line(exc)}") from None
    if args.tile and global_receptive_field(model.encoder):
        raise UsageError(f"--tile {args.tile}: this model's encoder "
                         f"({type(model.encoder).__name__}) cannot be tiled exactly (its "
                         "features depend on the whole input); use --tile 0 or leave it out")
    smallest = min_tile(model.encoder)
    if args.tile and args.tile < smallest:
        raise UsageError(f"--tile {args.tile} is below {smallest}, the smallest tile for this "
                         f"encoder (twice its receptive radius of "
                         f"{receptive_radius(model.encoder)}, and {MIN_TILE} at least): "
                         "smaller tiles recompute their margins many times over; use 0 for "
                         "no tiling")


def _check_options(args) -> None:
    if args.tile is not None and args.tile < 0:
        raise UsageError("--tile must be 0 (never) or a tile side in pixels")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be positive, got {args.max_pixels}")


def _main(args) -> int:
    _check_options(args)
    device = parse_device(args.device)
    scale = parse_scale(args.scale) if args.scale else None
    size = parse_size(args.size) if args.size else None
    path = args.input or _bundled_photo()
    if not os.path.exists(path):
        raise UsageError(f"cannot read {path!r}: no such file")
    stem = os.path.splitext(os.path.basename(path))[0]
    output = args.output or f"{stem}_x{args.scale or args.size}.png"
    targets = [("-o", output)] + ([("--bicubic", args.bicubic)] if args.bicubic else [])
    check_outputs(targets, path, args.force)
    photo = _read_input(path)
    in_size = tuple(photo.rgb.shape[-2:])
    size = output_size(in_size, scale, size, args.max_pixels)
    _check_format(photo, targets)
    model, info = _load(args, device)
    _check_model_options(model, args, device)
    tile = args.tile
    if tile is None:
        big = in_size[0] * in_size[1] > AUTO_TILE_PIXELS
        tile = AUTO_TILE if big and not global_receptive_field(model.encoder) else 0
    if photo.note and not args.quiet:
        print(f"upscale: note: {photo.note}", file=sys.stderr)
    start = time.perf_counter()
    sr = upscale(model, photo.rgb.unsqueeze(0).to(device), size, backend=args.backend,
                 tile=tile or None, progress=False if args.quiet else None, bits=photo.bits,
                 grey=photo.grey)
    alpha = None if photo.alpha is None else upsample_alpha(photo.alpha, size, photo.bits)
    seconds = time.perf_counter() - start
    D.save_image(D.photo_image(sr, alpha), output, photo.icc)
    if args.bicubic:
        from PIL import Image

        D.save_image(photo.image.resize((size[1], size[0]), Image.BICUBIC), args.bicubic,
                     photo.icc)
    if not args.quiet:
        step = info.get("step")
        kind = f"{photo.bits}-bit {'grey' if photo.grey else 'colour'}" + (
            " with alpha" if photo.alpha is not None else "")
        print(f"{info['model']}{f' (step {step})' if step is not None else ''}: "
              f"{in_size[0]}x{in_size[1]} -> {size[0]}x{size[1]} ({kind}) in {seconds:.2f} s "
              f"on {device}; wrote {output}"
              + (f" and {args.bicubic} (bicubic)" if args.bicubic else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
