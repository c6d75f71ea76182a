"""Triton building blocks shared by the decoders' kernels: the fused two-layer MLP step
(forward and backward), poisoned outputs, and launching (autotuned on GPU, one fixed
configuration under the interpreter).  Pixel geometry lives in :mod:`.grid`.

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

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


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


# ----------------------------------------------------------------------------------------
# Launching
# ----------------------------------------------------------------------------------------

#: Tile of the interpreter (which runs each program in Python: few, large programs).
INTERPRETER_CONFIG = {"ROWS": 64, "BLOCK_N": 32}


def gpu_configs(rows="ROWS"):
    """The small autotuning list: a tile's activations and accumulator are
    ``[rows, 256]`` fp32 in registers (scripts/triton_compile_check.py prints registers
    and spills; (16, 32, 8) and (32, 16, 8) are the spill-free ones for full-fp32
    ``tl.dot``, which holds more operands in registers than tf32/bf16)."""
    return [triton.Config({rows: r, "BLOCK_N": n}, num_warps=w, num_stages=st)
            for r, n, w, st in ((16, 32, 4, 2), (16, 32, 8, 2), (32, 16, 8, 2), (32, 32, 4, 2),
                                (32, 32, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2))]


def autotuned(kernel, key, rows="ROWS"):
    """``kernel`` autotuned over :func:`gpu_configs` on GPU; itself under the interpreter."""
    return kernel if INTERPRET else triton.autotune(gpu_configs(rows), key=key)(kernel)


def block(width):
    """Register block for a width: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(width))


def launch(kernel, n_rows, *args, rows="ROWS", **meta):
    """Launch ``kernel`` over ``cdiv(n_rows, meta[rows])`` programs (times any extra grid
    axes given as ``grid_extra``), with the interpreter's fixed tile or the autotuner's."""
    extra = meta.pop("grid_extra", ())
    if INTERPRET:
        meta.update({rows: INTERPRETER_CONFIG["ROWS"], "BLOCK_N": INTERPRETER_CONFIG["BLOCK_N"]})
        kernel[(triton.cdiv(n_rows, meta[rows]), *extra)](*args, **meta)
    else:
        kernel[lambda m: (triton.cdiv(n_rows, m[rows]), *extra)](*args, **meta)


def empty(*shape, device, dtype):
    """``torch.empty`` for a kernel's output, poisoned when ``IK_POISON=1`` (as the C++
    operators' outputs; tests/conftest.py sets it): NaN, or -1 for integer indices, so an
    element a kernel forgets fails the tests instead of passing with stale memory."""
    out = torch.empty(*shape, device=device, dtype=dtype)
    if os.environ.get("IK_POISON") == "1":
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def precision(tensor):
    """``tl.dot`` input precision: tf32 for fp32 CUDA tensors when PyTorch allows it."""
    tf32 = (tensor.dtype == torch.float32 and tensor.is_cuda
            and torch.backends.cuda.matmul.allow_tf32)
    return "tf32" if tf32 else "ieee"
