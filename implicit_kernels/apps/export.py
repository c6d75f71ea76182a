"""ONNX export of a whole model (encoder + decoder) through the ``torch`` backend.

Two forms, both for one fixed batch and input size:

* **grid** (every decoder): ``image`` (``B×3×h×w`` in [0, 1]) → ``sr``
  (``B×3×H_out×W_out`` in [0, 1]: normalised, decoded, mapped back and clamped, as
  :func:`models.upscale`) for one fixed output size: the decoder builds its query grid
  (and DIIF/DLTE their slices) from that size in Python, so it is a constant of the graph.
* **dynamic** (decoders with a query mode, ``coord``/``cell``: LIIF, LTE, HIIF):
  ``image``, ``coord`` (``B×Q×2``) and ``cell`` (``B×Q×2``) → ``sr`` (``B×Q×3`` in
  [0, 1]) with the query count ``Q`` symbolic, so one file decodes any output size (feed
  :func:`query_grid`'s coordinates, reshape with :func:`to_image`) or any set of points.
  HIIF's global attention sums over the ``Q`` queries of the call, so one call with all
  the queries of an output grid is the package's grid decode.  DIIF and DLTE decode
  output pixels by their group and slice, whose number and extent follow from the output
  size through integer divisions (``floor((2i+1)·h / (2·H_out))``) and whose slices are
  found per size in Python: they export in the grid form only.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (needs ``onnxscript``; weights
are embedded, one file); the whole decode is one chunk, so the graph has no loop.
Optional dependencies: ``pip install .[onnx]`` (onnx, onnxruntime, onnxscript).

Command line::

    python -m implicit_kernels export edsr-baseline-liif --size 48x48 --scale 2.5 --out m.onnx
    python -m implicit_kernels export edsr-baseline-diif --size 48x64 --out-size 96x192 --out m.onnx
    python -m implicit_kernels export edsr-baseline-liif --size 48x48 --dynamic --out m.onnx
"""
from __future__ import annotations

import argparse
import inspect
import sys

import torch
from torch import nn

import models
from implicit_kernels import _validate as check
from implicit_kernels import geometry

from .weights import load_model

__all__ = ["ExportWrapper", "QueryWrapper", "export_onnx", "query_grid", "supports_dynamic",
           "to_image", "main"]
#: Chunk size that makes any decode one chunk.
ONE_CHUNK = 1 << 40
#: Default ONNX opset.
OPSET = 18


def _decoder_name(model: nn.Module) -> str:
    return type(model).__name__.lower()


class ExportWrapper(nn.Module):
    """``model`` as an image-to-image function through the ``torch`` backend in one
    chunk: ``B×3×h×w`` in [0, 1] → ``B×3×H_out×W_out`` in [0, 1].

    Args:
        model: a ``models`` decoder model (encoder + decoder), in eval mode.
        out_size: ``(H_out, W_out)``.
        options: extra keywords of the model's ``decode`` (e.g. HIIF's ``normalizer``).
    """

    def __init__(self, model: nn.Module, out_size, **options):
        super().__init__()
        self.model = model
        self.out_size = tuple(int(n) for n in out_size)
        self.options = options

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model((image - 0.5) / 0.5, self.out_size, backend="torch",
                         chunk_size=ONE_CHUNK, **self.options)
        return (out * 0.5 + 0.5).clamp(0, 1)


class QueryWrapper(nn.Module):
    """``model`` in query mode through the ``torch`` backend in one chunk:
    ``(image B×3×h×w in [0, 1], coord B×Q×2, cell B×Q×2)`` → ``B×Q×3`` in [0, 1].

    Args:
        model: a ``models`` decoder model with a query mode (:func:`supports_dynamic`).
        options: extra keywords of the model's ``decode``.
    """

    def __init__(self, model: nn.Module, **options):
        super().__init__()
        self.model = model
        self.options = options

    def forward(self, image: torch.Tensor, coord: torch.Tensor,
                cell: torch.Tensor) -> torch.Tensor:
        out = self.model((image - 0.5) / 0.5, None, coord=coord, cell=cell, backend="torch",
                         chunk_size=ONE_CHUNK, **self.options)
        return (out * 0.5 + 0.5).clamp(0, 1)


def supports_dynamic(model: nn.Module) -> bool:
    """Whether ``model``'s decoder has a query mode (``coord``/``cell``: LIIF, LTE, HIIF),
    so that it exports with a dynamic output size."""
    decode = getattr(model, "decode", None)
    return decode is not None and {"coord", "cell"} <= set(inspect.signature(decode).parameters)


def grid_centres(model: nn.Module | None = None) -> str:
    """How ``model``'s grid decode rounds the output pixel centres
    (``geometry.CENTRES``): HIIF's ``level_codes``, else ``"project"``."""
    return getattr(model, "level_codes", None) or "project"


def query_grid(out_size, batch: int = 1, *, centres: str = "project"):
    """``(coord, cell)``, each ``batch×(H_out·W_out)×2`` float32, of every pixel of an
    ``(H_out, W_out)`` output in raster order: the queries, with the geometry, of the
    package's grid decode (pixel centres rounded as ``centres``; HIIF with
    ``level_codes="public"``: ``"public"``, see :func:`grid_centres`).  Feed them to a
    dynamic export (``.numpy()``) and reshape its ``sr`` with :func:`to_image`."""
    ho, wo = (check.positive_int(int(n), "out_size") for n in out_size)
    coord = geometry.make_coord((ho, wo), centres=centres).reshape(1, ho * wo, 2)
    cell = torch.tensor([2 / ho, 2 / wo], dtype=torch.float32).expand(1, ho * wo, 2)
    return (coord.expand(batch, -1, 2).contiguous(), cell.expand(batch, -1, 2).contiguous())


def to_image(sr, out_size):
    """A dynamic export's ``sr`` (``B×Q×3``, ``Q = H_out·W_out`` in raster order; a tensor
    or a NumPy array) as ``B×3×H_out×W_out``."""
    ho, wo = out_size
    x = sr.reshape(sr.shape[0], ho, wo, 3)
    return x.permute(0, 3, 1, 2) if isinstance(x, torch.Tensor) else x.transpose(0, 3, 1, 2)


def export_onnx(model: nn.Module, path: str, in_size, out_size=None, *, batch: int = 1,
                opset: int = OPSET, dynamic: bool = False, **options) -> str:
    """Write ``model`` (encoder + decoder) as ONNX to ``path``; return ``path``.

    Args:
        model: a ``models`` decoder model; exported in eval mode, on CPU, in float32
            (the model itself is moved and cast).
        path: output ``.onnx`` file (weights embedded).
        in_size: ``(h, w)`` of the input image.
        out_size: ``(H_out, W_out)``, each at least the input's: the graph's output size,
            or with ``dynamic`` only the size traced (default: twice the input's).
        batch: the batch size of the graph.
        opset: ONNX opset version.
        dynamic: export the query form (inputs ``image``, ``coord``, ``cell``; output
            ``sr`` ``B×Q×3``) with ``Q`` dynamic: any output size from one file.  Only
            for decoders with a query mode (LIIF, LTE, HIIF; see the module docstring).
        **options: extra keywords of the model's ``decode``.

    Raises:
        ImportError: onnx or onnxscript is not installed (``pip install .[onnx]``).
        ValueError: invalid sizes (from the decoder's checks); ``dynamic`` for a decoder
            without a query mode (DIIF, DLTE).
    """
    _require_exporter()
    model = model.eval().float().cpu()
    h, w = (int(n) for n in in_size)
    image = torch.rand(batch, 3, h, w)
    if not dynamic:
        if out_size is None:
            raise ValueError("out_size is needed for a fixed-size export (or pass dynamic=True)")
        wrapper = ExportWrapper(model, out_size, **options).eval()
        with torch.no_grad():
            wrapper(image)   # the decoder's own checks, with their messages, before tracing
            torch.onnx.export(wrapper, (image,), path, dynamo=True, input_names=["image"],
                              output_names=["sr"], opset_version=opset, external_data=False,
                              verbose=False)
        return path
    if not supports_dynamic(model):
        raise ValueError(f"{_decoder_name(model)} has no query mode (coord/cell): its "
                         "grouping and slicing follow from the output size, so it exports "
                         "with a fixed output size only (drop --dynamic, give --scale or "
                         "--out-size)")
    check.output_size(tuple(out_size or (2 * h, 2 * w)), image, "out_size")
    coord, cell = query_grid(out_size or (2 * h, 2 * w), batch, centres=grid_centres(model))
    wrapper = QueryWrapper(model, **options).eval()
    queries = torch.export.Dim("queries", min=1, max=min(check.MAX_OUTPUT_PIXELS,
                                                         ONE_CHUNK // batch))
    with torch.no_grad():
        wrapper(image, coord, cell)   # the decoder's own checks, before tracing
        # optimize=False: onnxscript's optimiser drops LIIF's ``+ 1e-9`` in the ensemble
        # areas (x + tiny as x), which turns a query exactly on an LR pixel centre's row or
        # column (all four areas 0) into 0/0 = NaN; onnxruntime optimises the graph itself.
        torch.onnx.export(wrapper, (image, coord, cell), path, dynamo=True,
                          input_names=["image", "coord", "cell"], output_names=["sr"],
                          dynamic_shapes={"image": None, "coord": {1: queries},
                                          "cell": {1: queries}},
                          opset_version=opset, external_data=False, optimize=False,
                          verbose=False)
    return path


def _require_exporter() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install .[onnx] "
                          "(onnx, onnxruntime, onnxscript)")


def _pair(text: str, what: str, kind=int):
    parts = text.lower().split("x")
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad {what} {text!r}: expected N or AxB") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"bad {what} {text!r}: expected N or AxB with positive numbers")
    return values


def main(argv=None) -> int:
    """``python -m implicit_kernels export MODEL --size HxW (--scale S | --out-size HxW |
    --dynamic) --out FILE``."""
    p = argparse.ArgumentParser(prog="python -m implicit_kernels export",
                                description="Export encoder + decoder to ONNX (torch backend) "
                                            "with a fixed output size, or any (--dynamic: "
                                            "LIIF, LTE, HIIF).")
    p.add_argument("model", help="a shipped model (edsr-baseline-diif, edsr-baseline-liif), a "
                                 "weights file / checkpoint path, or any models.make name "
                                 "(random weights)")
    p.add_argument("--size", required=True, help="input size HxW (rows x columns)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scale", help="output = round(input x S); S or AxB (rows xA, columns xB)")
    g.add_argument("--out-size", help="output size HxW")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic output size (LIIF, LTE, HIIF): the graph takes image, coord "
                        "(BxQx2) and cell (BxQx2) with Q any, and returns sr (BxQx3), so one "
                        "file decodes any output size (export.query_grid builds coord and "
                        "cell); --scale / --out-size then only set the size traced (default "
                        "x2). DIIF and DLTE export with a fixed output size only")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = p.parse_args(argv)
    try:
        in_size = _pair(args.size, "--size")
        if args.out_size:
            out_size = _pair(args.out_size, "--out-size")
        elif args.scale:
            scale = _pair(args.scale, "--scale", float)
            out_size = tuple(int(n * s + 0.5) for n, s in zip(in_size, scale))
        elif args.dynamic:
            out_size = None
        else:
            raise ValueError("give --scale or --out-size (or --dynamic)")
        model, note = _load_model(args.model)
        export_onnx(model, args.out, in_size, out_size, batch=args.batch, opset=args.opset,
                    dynamic=args.dynamic)
    except (ValueError, ImportError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    what = ("any output size (inputs image, coord, cell)" if args.dynamic
            else f"{out_size[0]}x{out_size[1]}")
    print(f"wrote {args.out}: {args.model}{note} {in_size[0]}x{in_size[1]} -> {what}")
    return 0


def _load_model(name: str):
    """``(model, note)``: a shipped model or a weights file / checkpoint (as ``upscale
    --model`` reads them), else a ``models.make`` name with random weights."""
    try:
        return load_model(name)[0], ""
    except ValueError:
        if name not in models.names():
            raise
    if name in models.ENCODERS:
        raise ValueError(f"{name!r} is an encoder alone; export an encoder-decoder model")
    return models.make(name), " (random weights)"
