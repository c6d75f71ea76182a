"""Reference models: encoders (EDSR-baseline, RDN, SwinIR) and implicit decoders (LIIF, LTE, DIIF,
DLTE, HIIF) as ``nn.Module`` s whose decoders call :mod:`implicit_kernels.functional`.

Build by name with :func:`make`: an encoder alone (``"edsr-baseline"``, ``"rdn"``, ``"swinir"``) or
``"<encoder>-<decoder>"`` (e.g. ``"edsr-baseline-diif"``).  Decoder models take the
*normalised* LR image ``(x - 0.5) / 0.5``; :func:`upscale` wraps that for ``[0, 1]`` images.

This package depends on ``implicit_kernels``; of ``implicit_kernels`` only the application layer,
``implicit_kernels.apps``, imports it.
"""
from __future__ import annotations

import torch
from torch import nn

from .diif import DIIF
from .dlte import DLTE
from .edsr import EDSR
from .hiif import HIIF
from .liif import LIIF
from .lte import LTE
from .mlp import MLP, DecoderModel
from .rdn import RDN
from .swinir import SwinIR

#: Encoder constructors by name; their defaults are the papers' configurations.
ENCODERS = {"edsr-baseline": EDSR, "rdn": RDN, "swinir": SwinIR}
#: Decoder model classes by name; each takes the encoder as first argument.
DECODERS = {"liif": LIIF, "lte": LTE, "diif": DIIF, "dlte": DLTE, "hiif": HIIF}

__all__ = ["make", "names", "count_parameters", "upscale", "ENCODERS", "DECODERS",
           "EDSR", "RDN", "SwinIR", "LIIF", "LTE", "DIIF", "DLTE", "HIIF", "MLP", "DecoderModel"]


def names() -> list[str]:
    """Every name :func:`make` accepts: the encoders, then each encoder-decoder pair."""
    return list(ENCODERS) + [f"{e}-{d}" for e in ENCODERS for d in DECODERS]


def make(name: str, *, encoder_kwargs: dict | None = None, **kwargs) -> nn.Module:
    """Build a model by name with PyTorch's default initialisation.

    Args:
        name: one of :func:`names`, e.g. ``"rdn"`` or ``"edsr-baseline-liif"``.
        encoder_kwargs: constructor arguments of the encoder of an encoder-decoder pair
            (e.g. ``{"n_resblocks": 2, "n_feats": 8}`` for a small test model).
        **kwargs: constructor arguments of the decoder model, or of the encoder when
            ``name`` is an encoder alone.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name in ENCODERS:
        if encoder_kwargs:
            raise ValueError("encoder_kwargs is for encoder-decoder names; pass the "
                             "encoder's arguments as keywords")
        return ENCODERS[name](**kwargs)
    encoder, _, decoder = name.rpartition("-")
    if encoder not in ENCODERS or decoder not in DECODERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    return DECODERS[decoder](ENCODERS[encoder](**(encoder_kwargs or {})), **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (frozen ones, such as EDSR's mean shifts, excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def upscale(model: nn.Module, img: torch.Tensor, size, **kwargs) -> torch.Tensor:
    """Super-resolve ``img`` (``B×3×h×w`` in [0, 1]) to ``size = (H_out, W_out)``.

    Normalises to ``(img - 0.5) / 0.5``, runs ``model(inp, size, **kwargs)`` and maps the
    result back with ``*0.5 + 0.5``, clamped to [0, 1]: ``B×3×H_out×W_out``.
    """
    out = model((img - 0.5) / 0.5, size, **kwargs)
    return (out * 0.5 + 0.5).clamp(0, 1)
