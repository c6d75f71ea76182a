"""ONNX export of a whole model (encoder + decoder) through the ``torch`` backend.

The graph takes an RGB image in [0, 1] (``image``, ``B×3×h×w``) and returns the
super-resolved image in [0, 1] (``sr``, ``B×3×H_out×W_out``: normalised, decoded, mapped
back and clamped, as :func:`models.upscale`), for one fixed batch, input and output size.
Every decoder builds its query grid (and DIIF/DLTE their slices) from those sizes in
Python, so they are constants of the graph; a query count left symbolic is specialised by
the exporter too (the functional ops' validation reads it), so there is no dynamic
output size yet: export one file per size.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (needs ``onnxscript``; weights
are embedded, one file); the whole decode is one chunk, so the graph has no loop.
Optional dependencies: ``pip install .[onnx]`` (onnx, onnxruntime, onnxscript).

Command line::

    python -m implicit_kernels export edsr-baseline-liif --size 48x48 --scale 2.5 --out m.onnx
    python -m implicit_kernels export edsr-baseline-diif --size 48x64 --out-size 96x192 --out m.onnx
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

__all__ = ["ExportWrapper", "export_onnx", "main"]
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


def export_onnx(model: nn.Module, path: str, in_size, out_size, *, batch: int = 1,
                opset: int = OPSET, **options) -> str:
    """Write ``model`` (encoder + decoder) as ONNX to ``path``; return ``path``.

    Args:
        model: a ``models`` decoder model; exported in eval mode, on CPU, in float32
            (the model itself is moved and cast).
        path: output ``.onnx`` file (weights embedded).
        in_size: ``(h, w)`` of the input image.
        out_size: ``(H_out, W_out)``, each at least the input's.
        batch: the batch size of the graph.
        opset: ONNX opset version.
        **options: extra keywords of the model's ``decode``.

    Raises:
        ImportError: onnx or onnxscript is not installed (``pip install .[onnx]``).
        ValueError: invalid sizes (from the decoder's checks).
    """
    _require_exporter()
    model = model.eval().float().cpu()
    wrapper = ExportWrapper(model, out_size, **options).eval()
    h, w = (int(n) for n in in_size)
    image = torch.rand(batch, 3, h, w)
    with torch.no_grad():
        wrapper(image)   # the decoder's own checks, with their messages, before tracing
        torch.onnx.export(wrapper, (image,), path, dynamo=True, input_names=["image"],
                          output_names=["sr"], opset_version=opset, external_data=False,
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
    """``python -m implicit_kernels export MODEL --size HxW (--scale S | --out-size HxW)
    --out FILE``."""
    p = argparse.ArgumentParser(prog="python -m implicit_kernels export",
                                description="Export encoder + decoder to ONNX (torch backend).")
    p.add_argument("model", help="a shipped model (edsr-baseline-diif, edsr-baseline-liif), a "
                                 "weights file / checkpoint path, or any models.make name "
                                 "(random weights)")
    p.add_argument("--size", required=True, help="input size HxW (rows x columns)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", help="output = round(input x S); S or AxB (rows xA, columns xB)")
    g.add_argument("--out-size", help="output size HxW")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = p.parse_args(argv)
    try:
        in_size = _pair(args.size, "--size")
        if args.out_size:
            out_size = _pair(args.out_size, "--out-size")
        else:
            scale = _pair(args.scale, "--scale", float)
            out_size = tuple(int(n * s + 0.5) for n, s in zip(in_size, scale))
        model, note = _load_model(args.model)
        export_onnx(model, args.out, in_size, out_size, batch=args.batch, opset=args.opset)
    except (ValueError, ImportError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {args.model}{note} {in_size[0]}x{in_size[1]} -> "
          f"{out_size[0]}x{out_size[1]}")
    return 0


def _load_model(name: str):
    """``(model, note)``: a shipped model or a weights file / checkpoint (as ``upscale
    --model`` reads them), else a ``models.make`` name with random weights."""
    import models

    from .weights import load_model

    try:
        return load_model(name)[0], ""
    except ValueError:
        if name not in models.names():
            raise
    if name in models.ENCODERS:
        raise ValueError(f"{name!r} is an encoder alone; export an encoder-decoder model")
    return models.make(name), " (random weights)"
