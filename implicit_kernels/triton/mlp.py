"""The MLP building blocks of the decoders' Triton kernels: the fused two-layer step
(forward and backward), its activations, and a rank-one update for narrow first layers.
Launching the kernels lives in :mod:`.launch`, pixel geometry in :mod:`.grid`.

The MLP step is ``act(x·W1ᵀ + b1)·W2ᵀ`` for a tile of ``ROWS`` rows held in registers:
the hidden layer is formed ``BLOCK_N`` columns at a time and consumed at once, so a chain
of such steps keeps every wide activation on chip.  Its backward recomputes each hidden
chunk, writes the chunk's activation and pre-activation gradient to memory (the weight
gradients are then two plain GEMMs, ``dW2 = gyᵀ·h`` and ``dW1 = δᵀ·x``, done by the
caller with ``torch.matmul``) and returns the gradient of ``x`` in registers.

Weights are row-major ``out × in`` (``torch.nn.Linear``); dot operands are cast to the
weights' dtype (fp32, or bf16/fp16 storage); accumulation is fp32.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def add_outer(acc, x, w_ptr, stride, cols, cols_ok):
    """``acc + x ⊗ w``: ``x`` a ``[R]`` column of inputs, ``w`` a weight column read with
    ``stride`` between output rows (``[R, BLOCK]`` fp32)."""
    w = tl.load(w_ptr + cols * stride, mask=cols_ok, other=0.0).to(tl.float32)
    return acc + x[:, None] * w[None, :]


# ----------------------------------------------------------------------------------------
# Activations (ACT: "relu" or "gelu", exact erf GELU as torch's default)
# ----------------------------------------------------------------------------------------

@triton.jit
def activation(z, ACT: tl.constexpr):
    if ACT == "gelu":
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    else:
        return tl.maximum(z, 0.0)


@triton.jit
def activation_grad(z, ACT: tl.constexpr):
    """``act'(z)`` (ReLU's is 0 at 0, as autograd's)."""
    if ACT == "gelu":
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        return cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    else:
        return (z > 0).to(tl.float32)


# ----------------------------------------------------------------------------------------
# Two-layer step
# ----------------------------------------------------------------------------------------

@triton.jit
def _w1_chunk_t(w1_ptr, n, k, K, N):
    """``W1[n, :]ᵀ`` as ``[BLOCK_K, BLOCK_N]`` (zero outside ``K × N``)."""
    return tl.load(w1_ptr + n[None, :] * K + k[:, None], mask=(k[:, None] < K) & (n[None, :] < N),
                   other=0.0)


@triton.jit
def two_layers(x, w1_ptr, b1_ptr, w2_ptr, K, N, M,
               ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_M: tl.constexpr, PRECISION: tl.constexpr, ACT: tl.constexpr):
    """``act(x·W1ᵀ + b1)·W2ᵀ`` for ``x`` ``[ROWS, BLOCK_K]`` fp32 (columns ≥ K zero),
    ``W1`` ``N×K`` and ``W2`` ``M×N`` → ``[ROWS, BLOCK_M]`` fp32 (no second bias)."""
    k = tl.arange(0, BLOCK_K)
    m = tl.arange(0, BLOCK_M)
    xs = x.to(w1_ptr.dtype.element_ty)
    acc = tl.zeros([ROWS, BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        b1 = tl.load(b1_ptr + n, mask=n < N, other=0.0).to(tl.float32)
        z = tl.dot(xs, _w1_chunk_t(w1_ptr, n, k, K, N), input_precision=PRECISION) + b1[None, :]
        # Columns ≥ N are zero in W2's chunk, so act(b1 = 0) there adds nothing.
        w2t = tl.load(w2_ptr + m[None, :] * N + n[:, None],
                      mask=(n[:, None] < N) & (m[None, :] < M), other=0.0)
        acc += tl.dot(activation(z, ACT).to(w2_ptr.dtype.element_ty), w2t,
                      input_precision=PRECISION)
    return acc


@triton.jit
def two_layers_backward(x, gy, w1_ptr, b1_ptr, w2_ptr, K, N, M, rows, rows_ok,
                        hidden_ptr, delta_ptr,
                        ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_M: tl.constexpr, PRECISION: tl.constexpr, ACT: tl.constexpr):
    """Backward of :func:`two_layers` for a tile: ``gy`` ``[ROWS, BLOCK_M]`` fp32 is the
    gradient of its output (columns ≥ M zero).

    Writes, for the tile's ``rows`` (``[ROWS]`` int64, ``rows_ok`` mask), the hidden
    activation ``h = act(z)`` to ``hidden_ptr`` and ``δ = (gy·W2) ⊙ act'(z)`` to
    ``delta_ptr`` (both ``rows × N`` row-major, in their buffers' dtypes), and returns
    ``dx = δ·W1`` ``[ROWS, BLOCK_K]`` fp32."""
    k = tl.arange(0, BLOCK_K)
    m = tl.arange(0, BLOCK_M)
    xs = x.to(w1_ptr.dtype.element_ty)
    gys = gy.to(w2_ptr.dtype.element_ty)
    dx = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        w1t = _w1_chunk_t(w1_ptr, n, k, K, N)
        b1 = tl.load(b1_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.dot(xs, w1t, input_precision=PRECISION) + b1[None, :]
        w2 = tl.load(w2_ptr + m[:, None] * N + n[None, :],
                     mask=(m[:, None] < M) & n_ok[None, :], other=0.0)
        delta = tl.dot(gys, w2, input_precision=PRECISION) * activation_grad(z, ACT)
        out = rows[:, None] * N + n[None, :]
        ok = rows_ok[:, None] & n_ok[None, :]
        tl.store(hidden_ptr + out, activation(z, ACT).to(hidden_ptr.dtype.element_ty), mask=ok)
        tl.store(delta_ptr + out, delta.to(delta_ptr.dtype.element_ty), mask=ok)
        dx += tl.dot(delta.to(w1_ptr.dtype.element_ty), tl.trans(w1t), input_precision=PRECISION)
    return dx
