"""Building blocks shared by the decoder models: the ``MLP`` parameter container and the
``DecoderModel`` base class (encoder + decoder parameters + ``forward``).

The decoders' arithmetic lives in :mod:`implicit_kernels.functional`; the modules here only
hold parameters under the state-dict names that ops expects (ARCHITECTURE.md).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """``layers`` = Linear, ReLU, Linear, ReLU, ..., as in the official LIIF ``MLP``.

    Args:
        in_dim: input width.
        out_dim: width of a final Linear without activation, or ``None`` to end after the
            last hidden layer's ReLU (DIIF's coarse stage).
        hidden_list: widths of the hidden Linear layers (each followed by a ReLU).

    The Linear layers sit at ``layers.0, layers.2, ...`` (the ReLUs take the odd indices).
    ``layers`` maps ``(..., in_dim)`` to ``(..., out_dim or hidden_list[-1])``.
    """

    def __init__(self, in_dim: int, out_dim: int | None, hidden_list: Sequence[int]):
        super().__init__()
        widths = [in_dim, *hidden_list]
        if out_dim is None and not hidden_list:
            raise ValueError("an MLP without output layer needs at least one hidden layer")
        modules = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            modules += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        if out_dim is not None:
            modules.append(nn.Linear(widths[-1], out_dim))
        self.layers = nn.Sequential(*modules)
        self.out_dim = widths[-1] if out_dim is None else out_dim


class DecoderModel(nn.Module):
    """An encoder (``self.encoder``, with an ``out_dim`` attribute) followed by an
    implicit decoder whose parameters are this module's other parameters.

    Subclasses implement ``decode(feat, inp, size, **options)`` with the matching
    ``implicit_kernels.functional`` op.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def decoder_params(self) -> dict[str, torch.Tensor]:
        """``{state-dict name: parameter}`` of everything but ``encoder.*`` — the
        ``params`` argument of the functional op."""
        return {name: p for name, p in self.named_parameters()
                if not name.startswith("encoder.")}

    def forward(self, inp: torch.Tensor, size=None, *, encoder_autocast=None,
                **options) -> torch.Tensor:
        """Encode the normalised LR image ``inp`` (``B×3×h×w``, ``(x - 0.5) / 0.5``) and
        decode it.

        Args:
            inp: normalised LR image.
            size: ``(H_out, W_out)`` for a whole output grid, or ``None`` with query
                options (``coord``/``cell``, or ``pixels`` for DIIF/DLTE).
            encoder_autocast: ``None``, or a dtype (``torch.bfloat16``) in which the
                encoder alone runs under ``torch.autocast`` (mixed precision: its
                convolutions in that dtype, its parameters and gradients unchanged); its
                features are cast back to ``inp``'s dtype for the decoder.
            **options: the subclass's ``decode`` keywords (``backend``, ``chunk_size``,
                ``coord``, ``cell``, ...).

        Returns:
            ``B×3×H_out×W_out``, or ``B×Q×3`` in query mode; normalised RGB.
        """
        if encoder_autocast is None:
            feat = self.encoder(inp)
        else:
            with torch.autocast(inp.device.type, dtype=encoder_autocast):
                feat = self.encoder(inp)
            feat = feat.to(inp.dtype)
        return self.decode(feat, inp, size, **options)
