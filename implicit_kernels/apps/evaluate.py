"""``python -m implicit_kernels eval``: PSNR of models and of bicubic over a folder of HR
images at a list of scales, by the protocol of docs/evaluation.md (LIIF's).

For each HR image and scale ``s``: ``h_lr = floor(h / s + 1e-9)`` (likewise ``w_lr``), the
HR cropped from the top-left to ``round(h_lr·s) × round(w_lr·s)``, the LR made from that
crop by Pillow's bicubic resize (the rule papers use for ×6 and up; with no dataset LR
images here it is used at every scale).  The model decodes the LR to the HR size (float
prediction, not rounded, as LIIF's test code); "bicubic" is Pillow's bicubic up-sampling
of the (``uint8``) LR.  PSNR on [0, 1] images:

* ``--protocol y`` (benchmark sets: Set5, Set14, B100, Urban100): the Y channel of the
  difference image, ``(65.738, 129.057, 25.064) / 256``, border of ``ceil(s)`` pixels
  shaved (``s`` itself for integer scales, as LIIF);
* ``--protocol rgb`` (DIV2K): RGB, border ``ceil(s) + 6``.

``PSNR = -10·log10(mean squared difference over the shaved region)``, averaged over the
images.  The table has a row per method (bicubic first) and a column per scale; it is
printed and written as Markdown (``--md``) and CSV (``--csv``).

``--data skimage`` evaluates on the colour photographs bundled in scikit-image's wheel
(:data:`SKIMAGE_IMAGES`; scikit-image is an optional dependency used only here), the
held-out test set of the shipped weights; ``--data card`` on a synthetic test card of flat
colour squares (:func:`colour_card`), which shows whether a model keeps flat areas flat.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import torch

import models

from . import data as D
from .weights import load_model, load_model_file, shipped

DEFAULT_SCALES = "2,3,3.7,4,6,8,12,18,24,30"
#: Held-out colour photographs from ``skimage.data``: name -> loader name.
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
#: ITU-R BT.601 luma coefficients for [0, 1] RGB, as LIIF's ``calc_psnr``.
Y_COEFFS = (65.738 / 256, 129.057 / 256, 25.064 / 256)

__all__ = ["DEFAULT_SCALES", "SKIMAGE_IMAGES", "psnr", "shave_for", "make_pair",
           "load_skimage", "colour_card", "evaluate", "format_markdown", "main"]


def shave_for(scale: float, protocol: str) -> int:
    """Border pixels shaved at ``scale``: ``ceil(s)`` (``"y"``) or ``ceil(s) + 6`` (``"rgb"``)."""
    if protocol not in ("y", "rgb"):
        raise ValueError(f"protocol must be 'y' or 'rgb', got {protocol!r}")
    s = math.ceil(scale - 1e-9)
    return s if protocol == "y" else s + 6


def psnr(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB of ``sr`` against ``hr`` (``3×H×W`` or ``B×3×H×W``, [0, 1]) over the
    image without a border of ``shave`` pixels, on RGB or on the Y channel of the
    difference (no offset is needed for a difference)."""
    diff = sr.double() - hr.double()
    if y_channel:
        w = diff.new_tensor(Y_COEFFS).view(3, 1, 1)
        diff = (diff * w).sum(dim=-3)
    if shave:
        diff = diff[..., shave:-shave, shave:-shave]
    if diff.numel() == 0:
        raise ValueError(f"shaving {shave} pixels leaves nothing of a {tuple(hr.shape[-2:])} image")
    mse = float(diff.pow(2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def make_pair(hr: torch.Tensor, scale: float):
    """``(lr, hr_crop)`` uint8 tensors from a ``3×H×W`` uint8 HR image (module docstring)."""
    _, h, w = hr.shape
    h_lr, w_lr = D.lr_size_for(h, scale), D.lr_size_for(w, scale)
    if min(h_lr, w_lr) < 1:
        raise ValueError(f"image {h}x{w} is too small for scale {scale:g}")
    crop = hr[:, :int(math.floor(h_lr * scale + 0.5)), :int(math.floor(w_lr * scale + 0.5))]
    return D.bicubic_resize(crop, (h_lr, w_lr)), crop


def load_skimage():
    """``[(name, 3×H×W uint8)]`` of :data:`SKIMAGE_IMAGES` (needs scikit-image)."""
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError("--data skimage needs scikit-image: pip install scikit-image") from exc
    out = []
    for name in SKIMAGE_IMAGES:
        arr = (skimage.data.stereo_motorcycle()[0] if name == "motorcycle"
               else getattr(skimage.data, name)())
        out.append((name, torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).contiguous()))
    return out


def colour_card(side: int = 240, squares: int = 6, seed: int = 0) -> torch.Tensor:
    """A synthetic test card, ``3×side×side`` uint8: a ``squares × squares`` board of flat
    squares, each of one random colour (fixed by ``seed``), with sharp edges between them."""
    gen = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (3, squares, squares), generator=gen, dtype=torch.uint8)
    cell = -(-side // squares)
    board = colours.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    return board[:, :side, :side].contiguous()


def load_folder(root: str):
    """``[(file name, 3×H×W uint8)]`` of the readable images of a folder."""
    folder = D.ImageFolder(root, cache=False)
    return [(os.path.basename(p), folder[i]) for i, p in enumerate(folder.paths)]


def evaluate(methods: dict, images, scales, protocol: str = "y", backend: str = "auto",
             device="cpu", progress: bool = True) -> dict:
    """Mean PSNR per method and scale.

    Args:
        methods: ``{label: model or None}``; ``None`` is bicubic.
        images: ``[(name, 3×H×W uint8)]``.
        scales: scales (floats ≥ 1).
        protocol: ``"y"`` or ``"rgb"`` (see :func:`shave_for`).

    Returns:
        ``{label: {scale: mean PSNR}}``.
    """
    from PIL import Image

    sums = {label: {s: 0.0 for s in scales} for label in methods}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images) * len(scales), unit="pair", desc="evaluating",
                   file=sys.stderr, dynamic_ncols=True)
    shaves = {s: shave_for(s, protocol) for s in scales}
    with torch.no_grad():
        for _, img in images:
            for s in scales:
                lr, hr = make_pair(img, s)
                hr_f = hr.float() / 255
                size = tuple(hr.shape[-2:])
                for label, model in methods.items():
                    if model is None:
                        up = D.to_pil(lr).resize((size[1], size[0]), Image.BICUBIC)
                        sr = D.to_tensor(up).float() / 255
                    else:
                        x = (lr.float() / 255).unsqueeze(0).to(device)
                        sr = models.upscale(model, x, size, backend=backend)[0].cpu()
                    sums[label][s] += psnr(sr, hr_f, shaves[s], protocol == "y")
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return {label: {s: v / len(images) for s, v in row.items()} for label, row in sums.items()}


def _scale_label(s: float) -> str:
    return f"×{s:g}"


def format_markdown(results: dict, scales) -> str:
    """A Markdown table: a row per method, a column per scale, PSNR in dB to 2 decimals."""
    lines = ["| method | " + " | ".join(_scale_label(s) for s in scales) + " |",
             "|---|" + "---:|" * len(scales)]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[s]:.2f}" for s in scales) + " |")
    return "\n".join(lines)


def format_text(results: dict, scales) -> str:
    """The table aligned for a terminal."""
    header = ["method"] + [_scale_label(s) for s in scales]
    body = [[label] + [f"{row[s]:.2f}" for s in scales] for label, row in results.items()]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header] + body)


def write_csv(results: dict, scales, path: str) -> None:
    """The table as CSV: ``method`` then one column per scale (header ``x2``, ``x3.7``...)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method"] + [f"x{s:g}" for s in scales])
        for label, row in results.items():
            w.writerow([label] + [f"{row[s]:.4f}" for s in scales])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m implicit_kernels eval",
        description="PSNR (docs/evaluation.md) of models and bicubic over HR images at several "
                    "scales.")
    p.add_argument("--model", action="append", default=[],
                   help="shipped model name, or weights/checkpoint path with a folder or an "
                        "extension (repeatable; default: every shipped model)")
    p.add_argument("--weights", action="append", default=[], metavar="PATH",
                   help="weights file or training checkpoint, any name (repeatable)")
    p.add_argument("--data", default="skimage",
                   help="folder of HR images, 'skimage' for scikit-image's colour "
                        "photographs (default), or 'card' for a synthetic card of flat "
                        "colour squares")
    p.add_argument("--scales", default=DEFAULT_SCALES,
                   help=f"comma-separated scales (default {DEFAULT_SCALES})")
    p.add_argument("--protocol", choices=("y", "rgb"), default="y",
                   help="y: Y channel, shave ceil(s) (benchmark sets, default); "
                        "rgb: RGB, shave ceil(s)+6 (DIV2K)")
    p.add_argument("--backend", default="auto", help="F backend (default auto)")
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    p.add_argument("--md", help="write the table as Markdown here")
    p.add_argument("--csv", help="write the table as CSV here")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    """Run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        print(f"eval: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


def _main(args) -> int:
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        raise ValueError(f"bad --scales {args.scales!r}: comma-separated numbers") from None
    if not scales or min(scales) < 1 or not all(map(math.isfinite, scales)):
        raise ValueError(f"bad --scales {args.scales!r}: every scale must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    methods = {"bicubic": None}
    loads = [(load_model, spec) for spec in args.model] + [
        (load_model_file, path) for path in args.weights]
    for load, spec in loads or [(load_model, name) for name in shipped()]:
        model, info = load(spec, device=device)
        step = info.get("step")
        methods[f"{info['model']}" + (f" ({step:,} steps)" if step is not None else "")] = model
    if args.data == "skimage":
        images = load_skimage()
    elif args.data == "card":
        images = [("card", colour_card())]
    else:
        images = load_folder(args.data)
    results = evaluate(methods, images, scales, args.protocol, args.backend, device,
                       progress=not args.no_progress)
    shave = "ceil(s)" if args.protocol == "y" else "ceil(s)+6"
    print(f"PSNR (dB), {'Y channel' if args.protocol == 'y' else 'RGB'}, shave {shave}, "
          f"mean over {len(images)} images of {args.data}: "
          + ", ".join(n for n, _ in images))
    print(format_text(results, scales))
    if args.md:
        with open(args.md, "w") as f:
            f.write(format_markdown(results, scales) + "\n")
    if args.csv:
        write_csv(results, scales, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
