"""A GELU hidden layer streamed into its second layer, ``BLOCK_N`` hidden columns at a time
(level 0's and each level's ``fc2(GELU(fc1(·)))``), and its backward.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .. import mlp


@triton.jit
def add(acc, z, w2_ptr, n, n_ok, m, M, N, PRECISION: tl.constexpr):
    """``acc + GELU(z)·W2[:, n]ᵀ``: hidden columns ``n`` into a second layer ``W2`` (``M×N``)."""
    w2t = tl.load(w2_ptr + m[None, :] * N + n[:, None], mask=n_ok[:, None] & (m[None, :] < M),
                  other=0.0)
    return acc + tl.dot(mlp.activation(z, "gelu").to(w2t.dtype), w2t, input_precision=PRECISION)


@triton.jit
def backward(z, gy, w2_ptr, n, n_ok, m, M, N, rows, rows_ok, hidden_ptr,
                           delta_ptr, PRECISION: tl.constexpr):
    """Backward of :func:`add` for the output gradient ``gy``: stores, per
    row (``rows × N``), ``GELU(z)`` to ``hidden`` and ``δ = (gy·W2[:, n]) ⊙ GELU'(z)`` to
    ``delta``, and returns ``δ``."""
    w2 = tl.load(w2_ptr + m[:, None] * N + n[None, :], mask=(m[:, None] < M) & n_ok[None, :],
                 other=0.0)
    delta = (tl.dot(gy.to(w2.dtype), w2, input_precision=PRECISION)
             * mlp.activation_grad(z, "gelu"))
    out = rows[:, None] * N + n[None, :]
    ok = rows_ok[:, None] & n_ok[None, :]
    tl.store(hidden_ptr + out, mlp.activation(z, "gelu"), mask=ok)
    tl.store(delta_ptr + out, delta, mask=ok)
    return delta
