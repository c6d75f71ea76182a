"""HIIF (Jiang et al., CVPR 2025): encoder + 3×3 conv + hierarchical level blocks and
multi-head linear attention, decoded by ``F.hiif_decode``.

The official code is not reachable; the layout and state-dict keys follow a public
derivative (docs/hiif.md; keys: docs/hiif.md#state-dict-keys): ``encoder.*``, ``freq.*``
(the 3×3 conv), ``fc_layers.{l}.{norm,fc1,fc2}.*``,
``conv{0,1}.{qkv_proj,kln,vln,proj1,proj2}.*``.

Parameters: 1,735,071 for the decoder with its 3×3 conv (1,587,359 without) at the paper's
widths on a 64-channel encoder; the paper reports +1.33M over the encoder — a gap of about
0.4M that no natural variant closes (docs/hiif.md#parameter-count lists the readings that
reach 1.33M).
``level_codes="public"`` reproduces the public code's level codes at exact ties
(docs/hiif.md#level-codes-at-ties).
"""
from __future__ import annotations

from torch import nn

from implicit_kernels import functional as F

from .mlp import DecoderModel


class LevelBlock(nn.Module):
    """Parameters of one level: LayerNorm (``norm``), Linear (``fc1``), GELU, Linear
    (``fc2``); no residual (the widths never agree)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)


class LinearAttention(nn.Module):
    """Parameters of one multi-head linear attention block: ``qkv_proj`` Linear(dim, 3·dim)
    (head-interleaved q, k, v), LayerNorms ``kln``/``vln`` over one head's channels shared
    by all heads, and the residual GELU MLP ``proj1``/``proj2`` (dim → dim → dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.kln = nn.LayerNorm(dim // heads)
        self.vln = nn.LayerNorm(dim // heads)
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)


class HIIF(DecoderModel):
    """Hierarchical encoding based implicit image function (docs/hiif.md).

    Args:
        encoder: module with ``out_dim`` channels ``C``.
        dim: channels of the 3×3 conv ``freq`` and of the level/attention features
            (paper 256).
        hidden_dim: hidden width of each level block (256).
        levels: number of level blocks ``L`` (paper 6; at least 2): level 0 takes
            ``4·dim + 4`` inputs, levels ``1..L-1`` take ``dim + 2``, the last gives RGB.
        heads: attention heads (paper 16); each attends over ``dim // heads`` channels.
        normalizer: default divisor of ``KᵀV``: ``"n"`` (public code) or ``"sqrt_n"``
            (the paper's Eq. 10).
        level_codes: default rounding of the positions behind the level codes:
            ``"project"`` or ``"public"`` (the public code's, bit for bit; for its
            checkpoints: docs/hiif.md).
    """

    def __init__(self, encoder: nn.Module, dim: int = 256, hidden_dim: int = 256,
                 levels: int = 6, heads: int = 16, normalizer: str = "n",
                 level_codes: str = "project"):
        super().__init__(encoder)
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        if normalizer not in ("n", "sqrt_n"):
            raise ValueError(f"normalizer must be 'n' or 'sqrt_n', got {normalizer!r}")
        if level_codes not in ("project", "public"):
            raise ValueError(f"level_codes must be 'project' or 'public', got {level_codes!r}")
        self.normalizer = normalizer
        self.level_codes = level_codes
        self.freq = nn.Conv2d(encoder.out_dim, dim, 3, padding=1)
        # Level 0 sees the four weighted codes, the cell and its 2 hierarchical bits.
        ins = [4 * dim + 4] + [dim + 2] * (levels - 1)
        outs = [dim] * (levels - 1) + [3]
        self.fc_layers = nn.ModuleList([LevelBlock(i, hidden_dim, o) for i, o in zip(ins, outs)])
        self.conv0 = LinearAttention(dim, heads)
        self.conv1 = LinearAttention(dim, heads)

    def decode(self, feat, inp, size=None, *, coord=None, cell=None, normalizer=None,
               attention="global", strip_rows=None, level_codes=None, backend="auto",
               chunk_size=F.DEFAULT_CHUNK_SIZE):
        """Decode encoder features ``feat`` (``B×C×H×W``, before the ``freq`` conv) with
        the normalised LR image ``inp`` (``B×3×h×w``, the bilinear skip).
        ``normalizer=None`` and ``level_codes=None`` use the model's.  Other arguments and the
        result as :func:`implicit_kernels.functional.hiif_decode`."""
        return F.hiif_decode(feat, inp, size, self.decoder_params(), coord=coord, cell=cell,
                             normalizer=normalizer or self.normalizer, attention=attention,
                             strip_rows=strip_rows, level_codes=level_codes or self.level_codes,
                             backend=backend, chunk_size=chunk_size)
