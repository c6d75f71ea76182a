"""``python -m implicit_kernels upscale IN.png -o OUT.png --scale 3.7`` (or ``implicit-sr
upscale ...``): super-resolve a photograph with a trained model.

* ``--scale S`` (or ``AxB``: rows ×A, columns ×B) gives the output size
  ``round(h·A) × round(w·B)``; ``--size HxW`` gives it directly (rows first).
* ``--model`` is a shipped model name (default ``edsr-baseline-diif``) or a weights file /
  training checkpoint (:func:`implicit_kernels.weights.load_model`).
* ``--backend`` picks the ``F`` backend (default ``auto``).
* ``--tile N`` runs the encoder on ``N×N`` tiles of the input, each with a margin equal
  to the encoder's receptive-field radius, so the features, and hence the output, equal
  the untiled ones (up to float summation order) while the encoder's activations stay
  small; inputs above :data:`AUTO_TILE_PIXELS` are tiled automatically.  The decoder
  always works in bands of output rows (memory bounded at any output size), writing
  ``uint8`` rows into the result, with a progress bar on large outputs.
* ``--bicubic PATH`` also writes Pillow's bicubic up-sampling to the same size, for
  comparison.

Unreadable inputs, unknown models, scales below 1 and absurd output sizes (more than
``--max-pixels``) are refused with a message and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from torch import nn

from . import data as D
from . import geometry

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

__all__ = ["parse_size", "output_size", "receptive_radius", "encode", "upscale", "main"]


class UsageError(ValueError):
    """A bad command-line request (exit status 2)."""


def parse_size(text: str) -> tuple:
    """``"1080x1920"`` -> ``(1080, 1920)`` (rows, columns)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad --size {text!r}: use HxW in pixels, rows first, e.g. 1080x1920") from None
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


def receptive_radius(encoder: nn.Module) -> int:
    """How far (in input pixels) the encoder's output can depend on its input: the sum of
    the convolutions' half-widths (each zero-padded convolution spreads a tile's border
    error inwards by its half-width)."""
    r = 0
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            r += max((k - 1) // 2 * d for k, d in zip(m.kernel_size, m.dilation))
    return r


def encode(encoder: nn.Module, inp: torch.Tensor, tile: int | None = None,
           margin: int | None = None) -> torch.Tensor:
    """Encoder features of ``inp`` (``1×3×h×w``, normalised), computed whole or in
    ``tile×tile`` tiles each read with ``margin`` extra pixels around it (default: the
    receptive radius, which makes tiling exact)."""
    if not tile:
        return encoder(inp)
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
            tile: int | None = None, progress: bool | None = None) -> torch.Tensor:
    """Super-resolve ``img`` (``1×3×h×w`` in [0, 1]) to ``size`` with a decoder model.

    Returns the ``3×H×W`` ``uint8`` image (rounded).  ``progress=None`` shows a bar when
    the output has at least :data:`PROGRESS_PIXELS` pixels.
    """
    h_out, w_out = size
    decoder = type(model).__name__.lower()
    with torch.no_grad():
        inp = (img - 0.5) / 0.5
        feat = encode(model.encoder, inp, tile)
        out = torch.empty(3, h_out, w_out, dtype=torch.uint8)
        if decoder == "hiif":
            # HIIF's attention sums over every query of the image: bands would change it.
            bands = [(0, h_out)]
        else:
            rows = max(1, BAND_PIXELS // w_out)
            bands = [(r, min(h_out, r + rows)) for r in range(0, h_out, rows)]
        show = progress if progress is not None else h_out * w_out >= PROGRESS_PIXELS
        bar = None
        if show:
            try:
                from tqdm import tqdm
            except ImportError:  # the bar is a convenience, not a dependency
                tqdm = None
        if show and tqdm is not None:
            bar = tqdm(total=h_out * w_out, unit="px", unit_scale=True, desc="decoding",
                       file=sys.stderr, dynamic_ncols=True)
        try:
            for r0, r1 in bands:
                rgb = _decode_band(model, decoder, feat, inp, size, r0, r1, backend)
                out[:, r0:r1] = (rgb * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
                if bar is not None:
                    bar.update((r1 - r0) * w_out)
        finally:
            if bar is not None:
                bar.close()
    return out


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

    return str(importlib.resources.files(__package__) / "data" / "astronaut.png")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m implicit_kernels upscale",
        description="Super-resolve an image to any size with a trained implicit model.")
    p.add_argument("input", nargs="?",
                   help="PNG/JPEG image (default: the bundled 64x64 photograph)")
    p.add_argument("-o", "--output", help="output image (default: <input>_x<scale>.png here)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", help="factor, e.g. 3.7, or AxB for rows xA and columns xB")
    g.add_argument("--size", help="output size HxW in pixels, rows first, e.g. 1080x1920")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"shipped model name or weights/checkpoint path (default {DEFAULT_MODEL})")
    p.add_argument("--backend", default="auto", help="F backend (default auto)")
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    p.add_argument("--tile", type=int,
                   help=f"encode the input in NxN tiles (exact; default {AUTO_TILE} for inputs "
                        f"over {AUTO_TILE_PIXELS:,} pixels, else whole; 0: never tile)")
    p.add_argument("--bicubic", metavar="PATH",
                   help="also write Pillow's bicubic up-sampling to the same size")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse larger outputs (default {MAX_PIXELS:,})")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv=None) -> int:
    """Run the command; returns the exit status (2 for a refused request)."""
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except UsageError as exc:
        print(f"upscale: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        print(f"upscale: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


def _main(args) -> int:
    from PIL import Image

    from .weights import load_model

    if args.tile is not None and args.tile < 0:
        raise UsageError("--tile must be 0 (never) or a positive tile side")
    path = args.input or _bundled_photo()
    try:
        pil = D.read_image(path)
    except FileNotFoundError:
        raise UsageError(f"cannot read {path!r}: no such file") from None
    except Exception as exc:  # noqa: BLE001  (Pillow raises many types for bad files)
        raise UsageError(f"cannot read {path!r} as an image: {exc}") from None
    in_size = (pil.height, pil.width)
    scale = parse_scale(args.scale) if args.scale else None
    size = output_size(in_size, scale, parse_size(args.size) if args.size else None,
                       args.max_pixels)
    stem = os.path.splitext(os.path.basename(path))[0]
    output = args.output or f"{stem}_x{args.scale or args.size}.png"
    for target in filter(None, (output, args.bicubic)):
        ext = os.path.splitext(target)[1].lower()
        if ext not in Image.registered_extensions():
            raise UsageError(f"cannot write {target!r}: unknown image extension {ext!r} "
                             "(use .png or .jpg)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model, info = load_model(args.model, device=device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tile = args.tile
    if tile is None:
        tile = AUTO_TILE if in_size[0] * in_size[1] > AUTO_TILE_PIXELS else 0
    img = (D.to_tensor(pil).float() / 255).unsqueeze(0).to(device)
    start = time.perf_counter()
    sr = upscale(model, img, size, backend=args.backend, tile=tile or None,
                 progress=False if args.quiet else None)
    seconds = time.perf_counter() - start
    D.to_pil(sr).save(output)
    if args.bicubic:
        pil.resize((size[1], size[0]), Image.BICUBIC).save(args.bicubic)
    if not args.quiet:
        step = info.get("step")
        print(f"{info['model']}{f' (step {step})' if step is not None else ''}: "
              f"{in_size[0]}x{in_size[1]} -> {size[0]}x{size[1]} in {seconds:.2f} s on {device}; "
              f"wrote {output}" + (f" and {args.bicubic} (bicubic)" if args.bicubic else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
