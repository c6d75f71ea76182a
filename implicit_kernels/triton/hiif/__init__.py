"""HIIF decode in Triton: the operators ``implicit_kernels::hiif_<part>_triton``.

The C++ backend's decomposition, with the orchestration, per-LR-pixel maps, fakes and
autograd of :mod:`implicit_kernels.ops.hiif`: per chunk of queries,

* ``hiif_level0_triton`` (:mod:`.level0`): the four ensemble members, their area weights,
  the level-0 bits, LayerNorm in the folded form of ``torch_impl/hiif.py``, GELU and fc2;
* ``hiif_attention_stats_triton`` and ``hiif_attention_apply_triton`` (:mod:`.attention`):
  per head ``Σ k̂ᵀv̂`` over a tile, summed by PyTorch (the global reduction, its own pass),
  then ``x + proj2(GELU(proj1(x + q·M)))``;
* ``hiif_levels_triton`` (:mod:`.levels`): levels 1..L-1 chained with the activations in
  registers, each level's bits from ``coord`` in the kernel.

Shared device code: the query geometry (:mod:`.query_geometry`, bit-exact with
geometry.py) and the GELU hidden layer streamed into fc2 (:mod:`.hidden_chunk`).  The
operators and the backend functions: :mod:`.ops`.

Backward: one kernel per operator recomputes the tile's activations and carries the chain
rule through them (LayerNorms included), writing per row what the weight gradients need
(each Linear's input and pre-activation gradient ``δ``, fp32, bounded by the chunk), so
those are GEMMs (``dW = δᵀ·x``) in PyTorch; reductions over queries inside a kernel
(``dM``, the LayerNorm affines) are written per tile and summed by PyTorch, and level 0's
map gradient is scattered with ``tl.atomic_add``.

Supported: any widths up to :data:`.ops.MAX_WIDTH` (blocks are the next power of two ≥ the
width, ≥ 16 for ``tl.dot``, masked), one hidden width for levels 1..L-1, fp32 (tf32 when
``torch.backends.cuda.matmul.allow_tf32``) and fp16/bf16 storage with fp32 accumulation.
Positions (coord, cell) are not differentiated.
"""
from .ops import hiif, hiif_public_codes, prepare_hiif, prepare_hiif_public_codes

__all__ = ["hiif", "hiif_public_codes", "prepare_hiif", "prepare_hiif_public_codes"]
