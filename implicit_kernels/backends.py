"""Backend registry: which implementation of a decoder runs, and why another cannot.

A backend is a package with one module per decoder it implements (``liif``, ``lte``,
``diif``, ``dlte``, ``hiif``), each defining the function of the same name with the
shared signature of ARCHITECTURE.md (and optionally ``prepare_<decoder>``).  ``"auto"`` picks the first backend in :data:`AUTO_ORDER` that can run the
given input; ``"reference"`` is the oracle and is never picked automatically.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

DECODERS = ("liif", "lte", "diif", "dlte", "hiif")


@dataclass(frozen=True)
class Backend:
    """A named implementation: ``module`` is imported lazily; ``reasons(feat)`` lists why
    it cannot run on ``feat`` (empty when it can)."""
    name: str
    module: str
    reasons: Callable[[torch.Tensor | None], list]
    description: str


def _always(feat):
    return []


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add (or replace) a backend."""
    BACKENDS[backend.name] = backend


register(Backend("reference", "implicit_kernels.reference", _always,
                 "paper-faithful PyTorch: the specification in code (the oracle)"))
register(Backend("torch", "implicit_kernels.torch_impl", _always,
                 "pure PyTorch with SPEC.md §3's exact algebraic splits"))

#: Preference of "auto", fastest first. Later backends (cpu, cuda, triton) go in front.
AUTO_ORDER = ["torch"]


def _function(backend: Backend, decoder: str, prefix: str = ""):
    """``<backend package>.<decoder>.<prefix><decoder>``, or None if not implemented."""
    try:
        module = importlib.import_module(f"{backend.module}.{decoder}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{backend.module}.{decoder}":
            raise
        return None
    return getattr(module, prefix + decoder, None)


def unavailable_reasons(name: str, decoder: str, feat: torch.Tensor | None = None) -> list:
    """Why backend ``name`` cannot run ``decoder`` on ``feat`` (empty list: it can)."""
    backend = BACKENDS[name]
    reasons = list(backend.reasons(feat))
    if not reasons and _function(backend, decoder) is None:
        reasons.append(f"backend {name!r} does not implement {decoder}")
    return reasons


def _no_preparation(feat, params):
    return params


def resolve(name: str, decoder: str, feat: torch.Tensor):
    """``(prepare, decode)`` for ``decoder`` under backend ``name`` (``"auto"`` allowed).

    ``prepare(feat, params) -> params`` runs once per call of the public op, before its
    chunks: a backend puts there the work that depends only on the feature map (e.g. the
    per-LR-pixel first-layer projections), so chunking does not repeat it.  It is the
    module's optional ``prepare_<decoder>``; by default params pass unchanged.

    The environment variable ``IK_BACKEND`` overrides ``"auto"`` for experiments.
    Raises ``ValueError`` for an unknown name and ``RuntimeError`` listing the reasons
    when the backend cannot run this input.
    """
    if name == "auto":
        name = os.environ.get("IK_BACKEND", "auto")
    if name == "auto":
        name = auto_choice(decoder, feat)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: "
                         f"{('auto',) + tuple(BACKENDS)}")
    reasons = unavailable_reasons(name, decoder, feat)
    if reasons:
        raise RuntimeError(f"backend {name!r} cannot run {decoder}: " + "; ".join(reasons))
    backend = BACKENDS[name]
    prepare = _function(backend, decoder, "prepare_") or _no_preparation
    return prepare, _function(backend, decoder)


def auto_choice(decoder: str, feat: torch.Tensor) -> str:
    """The backend name ``"auto"`` resolves to for ``decoder`` on ``feat``."""
    for candidate in AUTO_ORDER:
        if not unavailable_reasons(candidate, decoder, feat):
            return candidate
    raise RuntimeError(f"no backend can run {decoder} on this input")


def available_backends(decoder: str = "diif", feat: torch.Tensor | None = None) -> dict:
    """``{name: (ok, reasons)}`` for every registered backend."""
    out = {}
    for name in BACKENDS:
        reasons = unavailable_reasons(name, decoder, feat)
        out[name] = (not reasons, reasons)
    return out
