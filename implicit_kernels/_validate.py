"""Input checks shared by every public op: each raises ``TypeError``/``ValueError`` naming
the offending argument before any backend runs."""
from __future__ import annotations

import math
from typing import Mapping

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Largest output a single call accepts, in pixels per image (×30 of a 1920×1080 input
#: fits); beyond it the requested size is a mistake rather than a need.
MAX_OUTPUT_PIXELS = 1 << 31


def tensor(x, name: str, *, ndim: int | None = None, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """Check that ``x`` is a tensor of rank ``ndim`` and one of ``dtypes``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    return x


def finite(x: torch.Tensor, name: str) -> None:
    """Reject NaN or infinite values (skipped under tracing, where data is not available)."""
    if _tracing() or x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def feature_map(feat, name: str = "feat") -> torch.Tensor:
    """A ``B×C×H×W`` floating feature map with a non-empty batch and spatial size."""
    tensor(feat, name, ndim=4)
    if feat.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no data: decode real "
                         "tensors (torch.compile traces the ops with fake tensors by itself)")
    b, c, h, w = feat.shape
    if b == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(feat.shape)})")
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"{name} must have non-zero channels and spatial size, "
                         f"got {tuple(feat.shape)}")
    finite(feat, name)
    return feat


def image(inp, feat: torch.Tensor, name: str = "inp") -> torch.Tensor:
    """The normalised ``B×3×h×w`` LR image used by the bilinear skip of LTE, DLTE and HIIF."""
    tensor(inp, name, ndim=4)
    b, _, h, w = feat.shape
    if tuple(inp.shape) != (b, 3, h, w):
        raise ValueError(f"{name} must have shape ({b}, 3, {h}, {w}) (the LR image the features "
                         f"were computed from), got {tuple(inp.shape)}")
    same_device_dtype(inp, feat, name)
    finite(inp, name)
    return inp


def same_device_dtype(x: torch.Tensor, feat: torch.Tensor, name: str) -> None:
    if x.device != feat.device:
        raise ValueError(f"{name} is on {x.device} but feat is on {feat.device}")
    if x.dtype != feat.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but feat has dtype {feat.dtype}")


def output_size(size, feat: torch.Tensor, name: str = "size") -> tuple[int, int]:
    """An ``(H_out, W_out)`` pair of ints, each at least the feature map's size (scale ≥ 1)."""
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"{name} must be a pair (H_out, W_out), got {size!r}")
    out = []
    for v in size:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise TypeError(f"{name} must hold integers, got {size!r}")
        out.append(v)
    h, w = feat.shape[-2:]
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{name} must be positive, got {tuple(out)}")
    if out[0] < h or out[1] < w:
        raise ValueError(
            f"{name}={tuple(out)} is smaller than the feature map ({h}, {w}): "
            "scales below 1 are not supported")
    if out[0] * out[1] > MAX_OUTPUT_PIXELS:
        raise ValueError(f"{name}={tuple(out)} is absurdly large "
                         f"({out[0] * out[1]:,} pixels per image)")
    return out[0], out[1]


def scaled_size(feat: torch.Tensor, scale) -> tuple[int, int]:
    """Output size for a scale factor (a number or a ``(s_y, s_x)`` pair): ``round(H·s_y)``."""
    sy, sx = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    for s in (sy, sx):
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s < 1:
            raise ValueError(f"scale must be finite and at least 1, got {scale!r}")
    h, w = feat.shape[-2:]
    return max(h, round(h * sy)), max(w, round(w * sx))


def queries(coord, cell, feat: torch.Tensor,
            positions: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query coordinates ``B×Q×2`` in [-1, 1] and cells ``B×Q×2`` (positive), returned in
    dtype ``positions`` (default ``feat``'s).  They must have ``feat``'s dtype, or be
    float32 where ``positions`` is float32 (half-precision features, a backend that takes
    float32 positions); half-precision ones are then widened, exactly."""
    positions = positions or feat.dtype
    tensor(coord, "coord", ndim=3)
    tensor(cell, "cell", ndim=3)
    b = feat.shape[0]
    if coord.shape[0] != b or coord.shape[2] != 2:
        raise ValueError(f"coord must have shape ({b}, Q, 2), got {tuple(coord.shape)}")
    if cell.shape != coord.shape:
        raise ValueError(f"cell must have the shape of coord {tuple(coord.shape)}, "
                         f"got {tuple(cell.shape)}")
    for x, name in ((coord, "coord"), (cell, "cell")):
        if x.device != feat.device:
            raise ValueError(f"{name} is on {x.device} but feat is on {feat.device}")
        if x.dtype not in (feat.dtype, positions):
            raise TypeError(f"{name} has dtype {x.dtype} but feat has dtype {feat.dtype}")
    coord, cell = coord.to(positions), cell.to(positions)
    finite(coord, "coord")
    finite(cell, "cell")
    if not _tracing() and coord.numel():
        if bool((coord.abs() > 1).any()):
            raise ValueError("coord must lie in [-1, 1] (normalised pixel-centre coordinates)")
        if bool((cell <= 0).any()):
            raise ValueError("cell must be positive "
                             "(the size of one output pixel, 2/H_out, 2/W_out)")
    return coord, cell


def pixels(pix, feat: torch.Tensor, size) -> torch.Tensor:
    """Integer output pixel indices ``B×Q×2`` (row, col) inside ``size``."""
    tensor(pix, "pixels", ndim=3, dtypes=(torch.int32, torch.int64))
    b = feat.shape[0]
    if pix.shape[0] != b or pix.shape[2] != 2:
        raise ValueError(f"pixels must have shape ({b}, Q, 2), got {tuple(pix.shape)}")
    if pix.device != feat.device:
        raise ValueError(f"pixels is on {pix.device} but feat is on {feat.device}")
    if not _tracing() and pix.numel():
        lo = pix.amin(dim=(0, 1))
        hi = pix.amax(dim=(0, 1))
        if bool((lo < 0).any()) or int(hi[0]) >= size[0] or int(hi[1]) >= size[1]:
            raise ValueError(f"pixels must index inside size={tuple(size)}")
    return pix.long()


def params(p, feat: torch.Tensor, shapes: Mapping[str, tuple], decoder: str,
           used: set | None = None) -> dict:
    """Check a decoder's parameter mapping against expected shapes.

    ``shapes`` maps each required key to a shape tuple whose entries are ints or ``None``
    (any size); the caller checks relations between sizes.  The keys are added to
    ``used`` (for :func:`only_known_keys`).
    """
    if not isinstance(p, Mapping):
        raise TypeError(f"params must be a mapping of {decoder} parameter names to tensors, "
                        f"got {type(p).__name__}")
    missing = [k for k in shapes if k not in p]
    if missing:
        raise ValueError(f"params is missing {decoder} parameters {missing}")
    for key, shape in shapes.items():
        t = tensor(p[key], f"params[{key!r}]", ndim=len(shape))
        for got, want in zip(t.shape, shape):
            if want is not None and got != want:
                raise ValueError(f"params[{key!r}] has shape {tuple(t.shape)}, expected {shape} "
                                 "(None = any)")
        same_device_dtype(t, feat, f"params[{key!r}]")
    if used is not None:
        used.update(shapes)
    return {k: p[k] for k in shapes}


def only_known_keys(p: Mapping, used: set, decoder: str) -> None:
    """Refuse keys of ``p`` that no check consumed: a misspelt or stray parameter (an extra
    layer's weights, say) would otherwise be ignored silently."""
    unknown = sorted(k for k in p.keys() if k not in used)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:6]) + (", ..." if len(unknown) > 6 else "")
        raise ValueError(f"params has {len(unknown)} key(s) that are not {decoder} parameters: "
                         f"{shown}")


def output_memory(shape, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse an output of ``shape`` that cannot fit in the memory available on ``device``
    now (before allocating it, so the error names the number instead of the allocator
    failing, or the machine swapping, halfway through a decode)."""
    if _tracing():
        return
    need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    free = available_memory(device)
    if free is not None and need > free:
        raise MemoryError(f"the output {tuple(shape)} {str(dtype).replace('torch.', '')} needs "
                          f"{_bytes(need)} but {device} has {_bytes(free)} available: decode "
                          "a smaller size, or query mode in pieces")


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def available_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated on ``device`` now (``None``: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def grad_out(grad: torch.Tensor, like: torch.Tensor, shape, op: str) -> None:
    """A raw backward operator's incoming gradient: ``shape``, and ``like``'s device and
    dtype.  The fake (meta) implementations check it as the kernels do: a gradient on
    the meta device with real arguments dispatches to them, and must not come back as
    uninitialised gradients."""
    if grad.device != like.device:
        raise RuntimeError(f"{op}: grad_out must be on {like.device}, got {grad.device}")
    if grad.dtype != like.dtype:
        raise RuntimeError(f"{op}: grad_out must have dtype {like.dtype}, got {grad.dtype}")
    if tuple(grad.shape) != tuple(shape):
        raise RuntimeError(f"{op}: grad_out must have shape {tuple(shape)}, got "
                           f"{tuple(grad.shape)}")


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def choice(v, name: str, options) -> str:
    if v not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {v!r}")
    return v


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def mlp(p, prefix: str, layer_ids, in_dim: int, out_dim: int | None, feat: torch.Tensor,
        decoder: str, used: set | None = None) -> list:
    """Check a chain of Linear layers ``{prefix}{i}.weight/.bias`` and return ``[(W, b), ...]``.

    The first layer must take ``in_dim`` inputs, each layer must take the previous one's
    outputs, and the last must give ``out_dim`` (``None``: any).
    """
    layers, width = [], in_dim
    for n, i in enumerate(layer_ids):
        last = n == len(layer_ids) - 1
        w_key, b_key = f"{prefix}{i}.weight", f"{prefix}{i}.bias"
        shapes = {w_key: (out_dim if last else None, width), b_key: (None,)}
        got = params(p, feat, shapes, decoder, used)
        w, b = got[w_key], got[b_key]
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"params[{b_key!r}] has {b.shape[0]} entries, expected {w.shape[0]}")
        layers.append((w, b))
        width = w.shape[0]
    return layers
