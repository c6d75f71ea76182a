"""SwinIR encoder (Liang et al., 2021) without up-sampler, as LTE uses it for SwinIR-LIIF/LTE.

Classical-SR configuration: a 3×3 conv to ``embed_dim`` = 180 channels, six residual Swin
Transformer blocks (RSTB) of six Swin layers each (6 heads, 8×8 windows, every second layer
shifted by 4, MLP ratio 2), each RSTB closed by a 3×3 conv and its residual; a LayerNorm,
a 3×3 conv plus the long skip, then a 3×3 conv to ``num_feat`` = 64 channels and a
LeakyReLU.  ``B×3×h×w`` → ``B×64×h×w``: the input is reflection-padded to a multiple of the
window and the features cropped back to ``h×w``.

State-dict keys are the official ones (``conv_first.*``, ``patch_embed.norm.*``,
``layers.{i}.residual_group.blocks.{j}.{norm1,attn,norm2,mlp}.*``,
``layers.{i}.residual_group.blocks.{j}.attn_mask`` for shifted layers,
``layers.{i}.conv.*``, ``norm.*``, ``conv_after_body.*``, ``conv_before_upsample.0.*``),
including the two buffers the official modules store (``attn.relative_position_index``
and the shifted layers' ``attn_mask`` for the training patch size), so published
SwinIR-LIIF/LTE checkpoints load with ``strict=True``.  The masks are recomputed for every
input size, so loaded buffers only have to match in shape.

Trainable parameters at the defaults: 11,603,044.  Self-contained (no ``timm``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as nnf
from torch import nn

#: Additive logit that keeps a shifted window's tokens from attending across the wrap.
MASKED_LOGIT = -100.0


def to_2tuple(x) -> tuple:
    """``(x, x)`` for a scalar, the pair itself for a 2-sequence."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected a pair, got {x!r}")
        return tuple(x)
    return (x, x)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of the residual branch ``x`` with probability
    ``p`` during training and scale the kept ones by ``1/(1-p)``; identity otherwise."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """:func:`drop_path` as a module (no parameters)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``B×H×W×C`` → ``(B·nW)×window²×C``, windows in raster order (H, W multiples of
    ``window``)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B·nW)×window²×C`` → ``B×H×W×C``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """``window²×window²`` int64: row of the relative-position bias table for each
    (query, key) token pair of a window, ``(dy + window - 1)·(2·window - 1) + dx + window - 1``."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(size, window: int, shift: int, device=None) -> torch.Tensor:
    """``nW×window²×window²`` additive mask of a window layer shifted by ``shift`` on a
    ``size = (H, W)`` map (multiples of ``window``): 0 between tokens of the same region
    of the rolled map, :data:`MASKED_LOGIT` between tokens that the roll brought
    together from opposite borders."""
    h, w = size

    def regions(n):
        # Three bands per axis: [0, n - window), [n - window, n - shift), [n - shift, n).
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    label = regions(h)[:, None] * 3 + regions(w)[None, :]
    label = window_partition(label[None, :, :, None].float(), window).squeeze(-1)
    differs = label[:, :, None] != label[:, None, :]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias
    (``relative_position_bias_table``: ``(2·window-1)²×heads``).

    ``forward(x, mask)``: ``x`` ``(B·nW)×N×dim`` with ``N = window²``, ``mask``
    ``nW×N×N`` or ``None`` → ``(B·nW)×N×dim``.
    """

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)              # bw × heads × n × n
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        logits = logits + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            logits = logits.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            logits = logits.view(bw, self.heads, n, n)
        out = logits.softmax(dim=-1) @ v                                # bw × heads × n × d
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``: ``(..., dim)`` → ``(..., dim)`` through ``hidden`` channels."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nnf.gelu(self.fc1(x)))


class SwinLayer(nn.Module):
    """One Swin Transformer layer (the official ``SwinTransformerBlock``): pre-norm
    (shifted-)window attention and pre-norm MLP, each with a residual and stochastic depth.

    A shifted layer stores the mask for the training resolution as the ``attn_mask``
    buffer (as the official module does, so checkpoints match); ``forward`` takes the mask
    for the actual size from :class:`SwinIR`.

    ``forward(x, size, mask)``: ``x`` ``B×(H·W)×dim`` → same shape.
    """

    def __init__(self, dim: int, resolution, heads: int, window: int, shift: int,
                 mlp_ratio: float, qkv_bias: bool, drop_path_p: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, qkv_bias)
        self.drop_path = DropPath(drop_path_p) if drop_path_p > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, size, mask: torch.Tensor | None) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_merge(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """The official ``BasicLayer``: ``blocks``, a list of :class:`SwinLayer`, alternately
    unshifted and shifted by half a window."""

    def __init__(self, dim, resolution, depth, heads, window, shift, mlp_ratio, qkv_bias,
                 drop_path_ps: Sequence[float]):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinLayer(dim, resolution, heads, window, 0 if i % 2 == 0 else shift, mlp_ratio,
                      qkv_bias, drop_path_ps[i]) for i in range(depth)])

    def forward(self, x, size, mask):
        for block in self.blocks:
            x = block(x, size, mask)
        return x


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing an RSTB and the body: ``"1conv"`` (a 3×3 conv) or ``"3conv"``
    (3×3 to dim/4, LeakyReLU(0.2), 1×1, LeakyReLU(0.2), 3×3 back: the light variant)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, padding=1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, padding=1), nn.LeakyReLU(0.2, True),
                             nn.Conv2d(dim // 4, dim // 4, 1), nn.LeakyReLU(0.2, True),
                             nn.Conv2d(dim // 4, dim, 3, padding=1))
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {kind!r}")


class RSTB(nn.Module):
    """Residual Swin Transformer block: ``x + conv(stage(x))`` (the stage on tokens, the
    conv on the ``B×dim×H×W`` map)."""

    def __init__(self, dim, resolution, depth, heads, window, shift, mlp_ratio, qkv_bias,
                 drop_path_ps, resi_connection):
        super().__init__()
        self.residual_group = SwinStage(dim, resolution, depth, heads, window, shift,
                                        mlp_ratio, qkv_bias, drop_path_ps)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, size, mask) -> torch.Tensor:
        y = self.residual_group(x, size, mask)
        return x + _to_tokens(self.conv(_to_map(y, size)))


class PatchNorm(nn.Module):
    """The official ``PatchEmbed`` with patch size 1: only its LayerNorm (``norm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``B×C×H×W`` → ``B×(H·W)×C``."""
    return x.flatten(2).transpose(1, 2)


def _to_map(x: torch.Tensor, size) -> torch.Tensor:
    """``B×(H·W)×C`` → ``B×C×H×W``."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, *size)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``B×C×h×w`` at the bottom and right to multiples of ``multiple`` by reflection,
    as the official ``check_image_size``.  Where one reflection cannot supply the rows
    (a side shorter than the padding + 1), it reflects again off the new border; a side
    of 1 is replicated."""
    for dim in (-2, -1):
        missing = (-x.shape[dim]) % multiple
        while missing:
            n = x.shape[dim]
            step = missing if n == 1 else min(missing, n - 1)
            pad = [0, step, 0, 0] if dim == -1 else [0, 0, 0, step]
            x = nnf.pad(x, pad, mode="replicate" if n == 1 else "reflect")
            missing -= step
    return x


class SwinIR(nn.Module):
    """SwinIR without up-sampler.  Defaults: the classical-SR configuration LTE uses for
    SwinIR-LIIF/LTE (11,603,044 trainable parameters).

    Args:
        img_size: training patch size; fixes the stored ``attn_mask`` buffers' shape
            and, as officially, shrinks the window (and drops the shift) when not larger
            than the window.  Any input size runs.
        in_chans: input channels.
        embed_dim: transformer width (180).
        depths, num_heads: layers and heads per RSTB (six stages of 6 and 6).
        window_size: attention window (8); inputs are padded to its multiples.
        mlp_ratio: MLP hidden width over ``embed_dim`` (2).
        qkv_bias: bias in the ``qkv`` projections.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over the layers
            (training only; 0.1).
        num_feat: output channels (64), after the final 3×3 conv and LeakyReLU.
        resi_connection: ``"1conv"`` or ``"3conv"`` (see :func:`residual_conv`).

    ``forward``: ``B×in_chans×h×w`` → ``B×num_feat×h×w`` (``out_dim = num_feat``).
    """

    #: Shifted windows chain attention across the whole image, and the padding depends
    #: on its size: features cannot be computed exactly in tiles.
    global_receptive_field = True

    def __init__(self, img_size=48, in_chans: int = 3, embed_dim: int = 180,
                 depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6), window_size: int = 8,
                 mlp_ratio: float = 2.0, qkv_bias: bool = True, drop_path_rate: float = 0.1,
                 num_feat: int = 64, resi_connection: str = "1conv"):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths ({len(depths)}) and num_heads ({len(num_heads)}) "
                             "must have one entry per stage")
        resolution = to_2tuple(img_size)
        self.window_size = window_size
        # Official rule: a window not smaller than the training patch covers it whole.
        window, shift = window_size, window_size // 2
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.layer_window, self.layer_shift = window, shift
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        self.patch_embed = PatchNorm(embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            RSTB(embed_dim, resolution, d, h, window, shift, mlp_ratio, qkv_bias,
                 rates[s:s + d], resi_connection)
            for d, h, s in zip(depths, num_heads, starts)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, padding=1),
                                                  nn.LeakyReLU(inplace=True))
        self.out_dim = num_feat
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer body on a padded ``B×embed_dim×H×W`` map → same shape."""
        size = tuple(x.shape[-2:])
        mask = None
        if self.layer_shift:
            mask = shifted_window_mask(size, self.layer_window, self.layer_shift, x.device)
            mask = mask.to(x.dtype)
        t = self.patch_embed(_to_tokens(x))
        for layer in self.layers:
            t = layer(t, size, mask)
        return _to_map(self.norm(t), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.conv_first(pad_to_multiple(x, self.window_size))
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_before_upsample(x)
        return x if x.shape[-2:] == (h, w) else x[..., :h, :w].contiguous()


def _init_weights(m: nn.Module) -> None:
    """The official initialisation: Linear weights truncated normal (std 0.02, cut at ±2)
    and zero biases; LayerNorms 1 and 0; convolutions keep PyTorch's default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
