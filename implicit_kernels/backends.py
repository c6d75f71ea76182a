"""Backend registry: which implementation of a decoder runs, and why another cannot.

A backend is a package with one module per decoder it implements (``liif``, ``lte``,
``diif``, ``dlte``, ``hiif``), each defining the function of the same name with the
shared signature of ARCHITECTURE.md (and optionally ``prepare_<decoder>`` and
``raster_<decoder>``, see :func:`resolve` and :func:`resolve_raster`).  ``"auto"``
picks the first backend in :data:`AUTO_ORDER` that can run the given input and is not
measured slower there (:data:`CPU_WITH_GRAD_FROM`); ``"reference"`` is the oracle and is
never picked automatically.

Backend modules are imported, and their input-independent requirements checked, once
when a backend is registered, so that resolving a backend at call time is plain Python
on the input's device and dtype: ``torch.compile`` traces it as constants.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

DECODERS = ("liif", "lte", "diif", "dlte", "hiif")
#: Variants of a decoder implemented by functions of the same module (variant -> decoder):
#: DIIF without slice ensemble (the paper's "w/o se" ablation); HIIF with the public
#: code's level codes (``F.hiif_decode(level_codes="public")``).
VARIANTS = {"diif_without_ensemble": "diif", "hiif_public_codes": "hiif"}


@dataclass(frozen=True)
class Backend:
    """A named implementation.

    ``module`` is the package holding one module per decoder; ``requirements()`` lists
    reasons the backend cannot run at all here (evaluated once, at registration);
    ``device_type`` and ``dtypes`` restrict the inputs it takes (``None``: any).
    ``float32_positions``: with float16/bfloat16 features it takes query positions
    (``coord``, ``cell``) in float32, so they are not rounded to the features' dtype.
    """
    name: str
    module: str
    description: str
    requirements: Callable[[], list] = lambda: []
    device_type: str | None = None
    dtypes: tuple | None = None
    float32_positions: bool = False
    # Filled at registration: requirement reasons, {decoder: (prepare, decode)},
    # {decoder: raster hook} for the decoders whose module has one.
    table: dict = field(default_factory=dict, compare=False, repr=False)

    def reasons(self, decoder: str, feat: torch.Tensor | None = None) -> list:
        """Why this backend cannot run ``decoder`` on ``feat`` (empty list: it can)."""
        reasons = list(self.table["requirements"])
        if not reasons and decoder not in self.table["functions"]:
            reasons.append(f"backend {self.name!r} does not implement {decoder}")
        if feat is not None:
            if self.device_type is not None and feat.device.type != self.device_type:
                reasons.append(f"feat is on {feat.device.type}, this backend runs on "
                               f"{self.device_type}")
            if self.dtypes is not None and feat.dtype not in self.dtypes:
                reasons.append(f"dtype {feat.dtype} is not supported (takes "
                               f"{', '.join(str(d) for d in self.dtypes)})")
        return reasons


BACKENDS: dict[str, Backend] = {}


def _no_preparation(feat, params):
    return params


def register(backend: Backend) -> Backend:
    """Import the backend's decoder modules, check its requirements, and add it
    (replacing one of the same name)."""
    requirements = list(backend.requirements())
    functions, rasters = {}, {}
    if not requirements:
        for decoder in DECODERS + tuple(VARIANTS):
            name = f"{backend.module}.{VARIANTS.get(decoder, decoder)}"
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                continue
            if hasattr(module, decoder):
                prepare = getattr(module, f"prepare_{decoder}", _no_preparation)
                functions[decoder] = (prepare, getattr(module, decoder))
                if hasattr(module, f"raster_{decoder}"):
                    rasters[decoder] = getattr(module, f"raster_{decoder}")
    backend.table.update(requirements=requirements, functions=functions, rasters=rasters)
    BACKENDS[backend.name] = backend
    return backend


def _extension_requirements(cuda: bool):
    def requirements():
        from . import _extension

        reasons = list(_extension.reasons())
        if not reasons and cuda and not _extension.with_cuda():
            reasons.append("implicit_kernels._C was built without CUDA (see README, Build flags)")
        return reasons
    return requirements


register(Backend("reference", "implicit_kernels.reference",
                 "paper-faithful PyTorch: the specification in code (the oracle)",
                 float32_positions=True))
register(Backend("torch", "implicit_kernels.torch_impl",
                 "pure PyTorch with the exact algebraic splits of docs/diif.md",
                 float32_positions=True))
register(Backend("cpu", "implicit_kernels.compiled",
                 "fused C++ operators on CPU (implicit_kernels._C)",
                 _extension_requirements(cuda=False), "cpu", (torch.float32, torch.float64)))
register(Backend("cuda", "implicit_kernels.compiled",
                 "fused CUDA operators (implicit_kernels._C built with CUDA)",
                 _extension_requirements(cuda=True), "cuda",
                 (torch.float32, torch.float64, torch.float16, torch.bfloat16)))

def _triton_requirements():
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return ["triton is not installed"]
    if not _TRITON_INTERPRET and not torch.cuda.is_available():
        return ["no CUDA GPU (set TRITON_INTERPRET=1 before importing triton to run the "
                "kernels on CPU tensors in Triton's interpreter)"]
    return []


# Under Triton's interpreter the kernels run on CPU tensors; compiled, on CUDA only.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
register(Backend("triton", "implicit_kernels.triton",
                 "Triton kernels (DIIF, DLTE, LIIF, LTE, HIIF; CUDA, or CPU under "
                 "TRITON_INTERPRET=1)",
                 _triton_requirements, None if _TRITON_INTERPRET else "cuda",
                 (torch.float32, torch.float16, torch.bfloat16), float32_positions=True))

#: Preference of "auto", fastest first.  "triton" is explicit-only until it is measured
#: against "cuda" on a GPU.
AUTO_ORDER = ["cuda", "cpu", "torch"]

#: Where "auto" skips "cpu" for "torch": with gradients, a fused CPU backward that is
#: slower than PyTorch's autograd of the split form on small calls.  Queries per call (over
#: the batch) from which "cpu" is faster forward+backward, by decoder (absent: at every
#: size); forward alone, "cpu" is at least as fast at every size.  Measured with
#: scripts/calibrate_auto.py (paper widths, fp32, 2 threads; crossings interpolated
#: log-linearly between measured sizes, bench/NOTES.md).  Empty since HIIF's attention
#: keeps its record and its small calls' autograd is C++: every decoder's "cpu" backward
#: is measured faster from 100 queries (HIIF 0.91-0.95 of "torch"'s time there).
CPU_WITH_GRAD_FROM: dict = {}


def unavailable_reasons(name: str, decoder: str, feat: torch.Tensor | None = None) -> list:
    """Why backend ``name`` cannot run ``decoder`` on ``feat`` (empty list: it can)."""
    return BACKENDS[name].reasons(decoder, feat)


def auto_choice(decoder: str, feat: torch.Tensor, queries: int = 0, grad: bool = False) -> str:
    """The backend name ``"auto"`` resolves to for ``decoder`` on ``feat``, for a call of
    ``queries`` output queries (over the batch), with gradients or not (``grad``)."""
    for candidate in AUTO_ORDER:
        if candidate == "cpu" and grad and queries < CPU_WITH_GRAD_FROM.get(decoder, 0):
            continue
        if not unavailable_reasons(candidate, decoder, feat):
            return candidate
    raise RuntimeError(f"no backend can run {decoder} on this input")


def _chosen(name: str, decoder: str, feat: torch.Tensor, queries: int, grad: bool) -> Backend:
    """The backend ``name`` (``"auto"`` allowed) stands for, checked to run ``decoder`` on
    ``feat``."""
    if name == "auto":
        name = os.environ.get("IK_BACKEND", "auto")
    if name == "auto":
        name = auto_choice(decoder, feat, queries, grad)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: "
                         f"{('auto',) + tuple(BACKENDS)}")
    reasons = unavailable_reasons(name, decoder, feat)
    if reasons:
        raise RuntimeError(f"backend {name!r} cannot run {decoder}: " + "; ".join(reasons))
    return BACKENDS[name]


def resolve(name: str, decoder: str, feat: torch.Tensor, queries: int = 0, grad: bool = False):
    """``(prepare, decode)`` for ``decoder`` under backend ``name`` (``"auto"`` allowed;
    it weighs ``queries``, the call's output queries over the batch, and ``grad``, whether
    gradients will be taken: :func:`auto_choice`).

    ``prepare(feat, params) -> params`` runs once per call of the public op, before its
    chunks: a backend puts there the work that depends only on the feature map (e.g. the
    per-LR-pixel first-layer projections), so chunking does not repeat it.  It is the
    module's optional ``prepare_<decoder>``; by default params pass unchanged.

    The environment variable ``IK_BACKEND`` overrides ``"auto"`` for experiments.
    Raises ``ValueError`` for an unknown name and ``RuntimeError`` listing the reasons
    when the backend cannot run this input.
    """
    return _chosen(name, decoder, feat, queries, grad).table["functions"][decoder]


def choose(name: str, decoder: str, feat: torch.Tensor, queries: int = 0,
           grad: bool = False) -> str:
    """The concrete backend name ``name`` stands for (``"auto"`` resolved as in
    :func:`resolve`), checked to run ``decoder`` on ``feat``: resolve once, then look up
    several of the backend's functions by that name."""
    return _chosen(name, decoder, feat, queries, grad).name


def resolve_raster(name: str, decoder: str, feat: torch.Tensor, queries: int = 0,
                   grad: bool = False):
    """The backend's optional grid hook for ``decoder``, or ``None``: the module's
    ``raster_<decoder>``.  A pixel decoder's (DIIF) is ``raster_diif(feat, size, params,
    slicing, chunk_size, default_chunk) -> (decode, chunk_size)``, where
    ``decode(start, stop)`` decodes raster positions ``[start, stop)`` of every image
    (``B×(stop-start)×3``) without the pixel list's bookkeeping, and the chunk size may be
    the backend's own when ``default_chunk`` (the caller left it at its default).  HIIF's
    is ``raster_hiif(feat, inp, size, params, positions, chunk_size, normalizer) ->
    B×3×H×W``: the whole grid with global attention, each chunk's positions made from the
    grid (in dtype ``positions``) instead of whole-grid ones.  ``queries`` and ``grad``:
    as :func:`resolve` (the same call must resolve to the same backend)."""
    return _chosen(name, decoder, feat, queries, grad).table["rasters"].get(decoder)


def resolve_queries(name: str, decoder: str, feat: torch.Tensor, queries: int = 0,
                    grad: bool = False):
    """:func:`resolve` for a decoder of query positions (LIIF, LTE, HIIF), plus the dtype
    of the positions the backend takes: float32 with half-precision features where it
    takes float32 positions (``Backend.float32_positions``), else ``feat``'s dtype."""
    chosen = _chosen(name, decoder, feat, queries, grad)
    half = feat.dtype in (torch.float16, torch.bfloat16)
    positions = torch.float32 if half and chosen.float32_positions else feat.dtype
    return (*chosen.table["functions"][decoder], positions)


def available_backends(decoder: str = "diif", feat: torch.Tensor | None = None) -> dict:
    """``{name: (ok, reasons)}`` for every registered backend."""
    out = {}
    for name in BACKENDS:
        reasons = unavailable_reasons(name, decoder, feat)
        out[name] = (not reasons, reasons)
    return out
