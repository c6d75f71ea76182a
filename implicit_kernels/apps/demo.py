"""``python -m implicit_kernels demo``: decode one image through every available backend.

Loads a small photograph (the bundled ``assets/astronaut.png`` unless ``--image`` is given),
loads the model's shipped weights (:mod:`implicit_kernels.apps.weights`; a model without
shipped weights, or ``--random``, gets random seeded weights: the demo is about speed,
memory and agreement between backends), runs the encoder once and decodes the features at several
scales, including a non-integer and an asymmetric one, with each backend.  It prints one
row per backend and scale: output size, the layer-count MACs of the decoder
(:mod:`implicit_kernels.cost`), time, peak memory and the largest difference from the
``"reference"`` backend (the oracle, always run first), then which backend ``"auto"``
picks.  It exits with status 1 and a message when a backend fails or disagrees.

Peak memory is measured on CUDA as the growth of ``torch.cuda.max_memory_allocated``
during the call; on CPU as the growth of the process's resident set size, **sampled**
every millisecond by a background thread reading ``/proc/self/statm`` (so a peak shorter
than a sample period can be missed, and memory the allocator already holds from earlier
calls is not counted again).  Where ``/proc`` is absent it prints ``n/a``.

The ``models`` package (the repository's reference ``nn.Module`` s) must be importable,
as for all of :mod:`implicit_kernels.apps`; the kernel package never imports it.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.resources
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import torch

import models
from implicit_kernels import backends, cost

from . import weights

DEFAULT_MODEL = "edsr-baseline-diif"
#: Rows ×, columns × ("AxB" is asymmetric); sized so the default run on the bundled
#: 64×64 image stays well under a minute on two CPU cores (the reference is the slow one).
DEFAULT_SCALES = "2,2.7,4,3x5"
#: Largest accepted difference from the reference, relative to the reference's magnitude
#: (fp32 kernels agree to ~1e-6; this leaves room for reassociated sums).
TOLERANCE = 1e-4

__all__ = ["Row", "PeakMemory", "parse_scales", "load_image", "run", "format_table", "main"]


@dataclass(frozen=True)
class Row:
    """One decode: ``backend`` at ``scale`` (rows ×, columns ×) to ``out_size`` (H, W)."""
    backend: str
    scale: tuple
    out_size: tuple
    gmacs: float
    seconds: float
    peak_bytes: int | None
    max_diff: float


class PeakMemory:
    """Context manager measuring the peak memory growth of the code it wraps, in bytes
    (``self.peak``; ``None`` where it cannot be measured).  See the module docstring."""

    def __init__(self, device: torch.device, period: float = 1e-3):
        self.device, self.period = device, period
        self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _rss() is not None:
            _release_freed_memory()
            self._base = self._max = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(self.period)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss()) - self._base
        return False


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _release_freed_memory() -> None:
    """Return memory freed by earlier runs to the system (glibc keeps it otherwise), so
    the next run's growth is measured from a clean baseline rather than hidden by reuse."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int | None:
    """Resident set size of this process in bytes (``None`` without ``/proc``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def parse_scales(text: str) -> list[tuple[float, float]]:
    """``"2,2.7,3x5"`` -> ``[(2, 2), (2.7, 2.7), (3, 5)]`` (row scale, column scale)."""
    scales = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"bad scale {item!r}: use numbers like 2, 2.7 or 3x5") from None
        if len(values) not in (1, 2) or min(values) < 1 or not all(map(math.isfinite, values)):
            raise ValueError(f"bad scale {item!r}: need one number or AxB, each >= 1")
        scales.append((values[0], values[-1]))
    return scales


def load_image(path: str | None = None) -> torch.Tensor:
    """``1×3×h×w`` float32 image in [0, 1] from ``path`` (default: the bundled photograph)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("the demo reads images with Pillow: pip install pillow") from exc
    if path is None:
        resource = importlib.resources.files(__package__) / "assets" / "astronaut.png"
        with importlib.resources.as_file(resource) as file, Image.open(file) as im:
            rgb = im.convert("RGB")
    else:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(rgb.height, rgb.width, 3).permute(2, 0, 1).unsqueeze(0).float() / 255


def _out_size(in_size, scale):
    # LIIF's rule: output side = LR side × scale, rounded.
    return tuple(int(math.floor(n * s + 0.5)) for n, s in zip(in_size, scale))


def _timed(fn, device, repeat):
    """``(result, best seconds, peak bytes of the first run)``."""
    best, result, peak = math.inf, None, None
    for i in range(repeat):
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        if i == 0:
            peak = mem.peak
    return result, best, peak


def run(model, model_name: str, img: torch.Tensor, scales, names=None, repeat: int = 1):
    """Encode ``img`` once and decode it with each backend at each scale.

    Args:
        model: a decoder model from ``models.make`` (``encoder``, ``decode``), in eval mode,
            on ``img``'s device.
        model_name: its registry name, ``"<encoder>-<decoder>"`` (selects the decoder's
            backends and the MAC count).
        img: ``1×3×h×w`` image in [0, 1].
        scales: ``(row scale, column scale)`` pairs, each ≥ 1.
        names: backends to run (``None``: every available one); ``"reference"`` always runs
            first, as the baseline of the difference column.
        repeat: runs per cell; the time is the best, the memory that of the first.

    Returns:
        ``(rows, skipped, auto)``: :class:`Row` s in backend-major order, ``{name: reasons}``
        of registered backends that cannot run here, and ``{scale: backend}``, the backend
        ``"auto"`` picks for each scale's decode.

    Raises:
        RuntimeError: a requested backend cannot run, or a result differs from the
            reference by more than :data:`TOLERANCE`.
    """
    decoder = model_name.rpartition("-")[2]
    device = img.device
    rows = []
    with torch.no_grad():
        inp = (img - 0.5) / 0.5
        feat = model.encoder(inp)
        status = backends.available_backends(decoder, feat)
        skipped = {n: reasons for n, (ok, reasons) in status.items() if not ok}
        if names is None:
            names = [n for n, (ok, _) in status.items() if ok]
        for name in names:
            if name not in status:
                raise RuntimeError(f"unknown backend {name!r}; registered: {', '.join(status)}")
            if name in skipped:
                raise RuntimeError(f"backend {name!r} cannot run {decoder} here: "
                                   + "; ".join(skipped[name]))
        names = ["reference"] + [n for n in names if n != "reference"]
        auto = {s: backends.auto_choice(decoder, feat, _out_size(img.shape[-2:], s)[0]
                                        * _out_size(img.shape[-2:], s)[1]) for s in scales}
        references = {}
        for name in names:
            for scale in scales:
                size = _out_size(img.shape[-2:], scale)
                out, seconds, peak = _timed(lambda: model.decode(feat, inp, size, backend=name),
                                            device, repeat)
                ref = references.setdefault(scale, out)
                diff = float((out - ref).abs().max())
                scale_of = max(1.0, float(ref.abs().max()))
                if not diff <= TOLERANCE * scale_of:
                    raise RuntimeError(f"backend {name!r} differs from the reference by {diff:.3g} "
                                       f"at scale {_scale_text(scale)} (tolerance "
                                       f"{TOLERANCE * scale_of:.3g})")
                macs = cost.count(model_name, img.shape[-2:], out_size=size).decoder_macs
                rows.append(Row(name, scale, size, macs / 1e9, seconds, peak, diff))
    return rows, skipped, auto


def slow_auto(rows, auto, margin: float = 0.10) -> list[str]:
    """One line per scale where ``auto``'s backend took more than ``margin`` longer than
    the fastest backend timed (``"reference"`` aside): "auto" should never pick a slower
    backend, so such a line is worth a look (or a rerun with ``--repeat``: a single run
    on a busy machine is noisy)."""
    lines = []
    for scale, chosen in auto.items():
        timed = {r.backend: r.seconds for r in rows
                 if r.scale == scale and r.backend != "reference"}
        if chosen not in timed or len(timed) < 2:
            continue
        best = min(timed, key=timed.get)
        if timed[chosen] > (1 + margin) * timed[best]:
            lines.append(f'"auto" is slower than {best} at {_scale_text(scale)}: {chosen} took '
                         f"{timed[chosen]:.3f} s, {best} {timed[best]:.3f} s "
                         f"(+{timed[chosen] / timed[best] - 1:.0%})")
    return lines


def _scale_text(scale) -> str:
    y, x = (f"{s:g}" for s in scale)
    return f"×{y}" if y == x else f"×{y}×{x}"


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.1f}"


def format_table(rows) -> str:
    """The rows as an aligned text table."""
    header = ("backend", "scale", "output HxW", "decoder GMAC", "time (s)", "peak MiB",
              "max |diff|")
    body = [(r.backend, _scale_text(r.scale), f"{r.out_size[0]}x{r.out_size[1]}",
             f"{r.gmacs:.2f}", f"{r.seconds:.3f}", _mib(r.peak_bytes), f"{r.max_diff:.2e}")
            for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(line, widths)))
             for line in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m implicit_kernels demo",
        description="Decode one image at several scales with every available backend and "
                    "compare time, memory and agreement with the reference. Uses the "
                    "model's shipped weights when there are some, else random ones.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"<encoder>-<decoder> from models.names() (default {DEFAULT_MODEL})")
    p.add_argument("--scales", default=DEFAULT_SCALES,
                   help=f"comma-separated scales, AxB for rows x A, columns x B "
                        f"(default {DEFAULT_SCALES})")
    p.add_argument("--backends", default=None,
                   help="comma-separated backend names (default: every available one); "
                        "the reference always runs")
    p.add_argument("--image", default=None,
                   help="input image (default: the bundled 64x64 photograph)")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per cell; the best time is shown (default 1)")
    p.add_argument("--random", action="store_true",
                   help="random (seeded) weights even where trained ones ship")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return p


def main(argv=None) -> int:
    """Run the demo; returns the process exit status (0 on success)."""
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except (RuntimeError, ValueError, OSError, ImportError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


def _main(args) -> int:
    scales = parse_scales(args.scales)
    if args.repeat < 1:
        raise ValueError("--repeat must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    img = load_image(args.image).to(device)
    if args.model in weights.shipped() and not args.random:
        model, info = weights.load_model(args.model, device=device)
        origin = (f"shipped weights (step {info['step']:,}; "
                  "see implicit_kernels/apps/weights/README.md)")
    else:
        torch.manual_seed(args.seed)
        model = models.make(args.model).eval().to(device)
        origin = f"RANDOM weights (seed {args.seed})"
    names = None if args.backends is None else [n.strip() for n in args.backends.split(",")]

    print(f"model {args.model} with {origin}, input {img.shape[-2]}x{img.shape[-1]} (HxW), "
          f"device {device}, torch {torch.__version__}")
    rows, skipped, auto = run(model, args.model, img, scales, names, args.repeat)
    print(format_table(rows))
    for name, reasons in skipped.items():
        print(f"not available: {name}: {'; '.join(reasons)}")
    picks = sorted(set(auto.values()))
    print('"auto" picks: ' + (picks[0] if len(picks) == 1 else ", ".join(
        f"{name} at {_scale_text(s)}" for s, name in auto.items())))
    for line in slow_auto(rows, auto):
        print(f"warning: {line}")
    if device.type == "cpu":
        print("peak MiB on CPU: growth of the resident set size, sampled every ~1 ms")
    return 0
