// Small host helpers shared by the fused operators' orchestration (csrc/*_decode.cpp).
#pragma once

#include <ATen/ATen.h>

// Builds whose element-wise steps have CUDA kernels (csrc/cuda): CUDA builds, and the
// emulated build (IK_EMULATE_CUDA: the kernels compiled by the host compiler against
// csrc/emulation, run on CPU tensors; tests only).
#if defined(IK_WITH_CUDA) && defined(IK_EMULATE_CUDA)
#error "IK_WITH_CUDA and IK_EMULATE_CUDA exclude each other"
#endif
#if defined(IK_WITH_CUDA) || defined(IK_EMULATE_CUDA)
#define IK_CUDA_KERNELS
#endif

namespace ik {

#if defined(IK_CUDA_KERNELS)
// Whether t's element-wise steps run the CUDA kernels: CUDA tensors, or in the emulated
// build CPU tensors (its kernels run on the host).
inline bool runs_cuda_kernels(const at::Tensor& t) {
#if defined(IK_EMULATE_CUDA)
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}
#endif

// Whether an operator on t runs its dense layers in tiles of rows on the CPU
// (csrc/cpu/tiles.h): CPU tensors whose element-wise steps are the CPU loops.
inline bool runs_cpu_tiles(const at::Tensor& t) {
#if defined(IK_CUDA_KERNELS)
  return t.is_cpu() && !runs_cuda_kernels(t);
#else
  return t.is_cpu();
#endif
}

// Type the geometry, blending and scattered gradients accumulate in: float for half types.
inline at::ScalarType accumulate_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// The gradient of a Linear's weight whose input is narrow: gradᵀ·inputs (out, k) for grad
// (rows, out) and inputs (rows, k), formed in the inputs' dtype and returned contiguous in
// grad's.  Computed as (inputsᵀ·grad)ᵀ: with k a few columns, the transposed product runs
// several times slower on the CPU.
inline at::Tensor narrow_input_weight_grad(const at::Tensor& grad, const at::Tensor& inputs) {
  return at::mm(inputs.t(), grad.to(inputs.scalar_type())).t().contiguous().to(grad.scalar_type());
}

// A backward's incoming gradient: the forward output's shape, and the dtype and device
// of `like` (a tensor the forward took).  Checked before anything reads it, so a
// gradient on another device (a meta tensor, say) is refused instead of being read.
inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& like,
                           at::IntArrayRef shape, const char* op) {
  TORCH_CHECK(grad_out.device() == like.device(), op, ": grad_out must be on ", like.device(),
              ", got ", grad_out.device());
  TORCH_CHECK(grad_out.scalar_type() == like.scalar_type(), op, ": grad_out must have dtype ",
              like.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.sizes() == shape, op, ": grad_out must have shape ", shape, ", got ",
              grad_out.sizes());
}

// An output tensor an operator writes into (its `out` argument): `shape`, contiguous, with
// the dtype and device of `like`.
inline void check_given_output(const at::Tensor& out, const at::Tensor& like, at::IntArrayRef shape,
                               const char* op) {
  TORCH_CHECK(out.device() == like.device() && out.scalar_type() == like.scalar_type(), op,
              ": out must be ", like.scalar_type(), " on ", like.device(), ", got ",
              out.scalar_type(), " on ", out.device());
  TORCH_CHECK(out.sizes() == shape && out.is_contiguous(), op,
              ": out must be contiguous with shape ", shape, ", got ", out.sizes());
}

// The gradient of a gather of rows from a channels-last map: out[index[r]] += rows[r] for
// the rows (R, D) gathered at flat row `index` (R,) of `map` (..., D), accumulated in the
// rows' dtype; returned in map's shape and dtype.
inline at::Tensor scatter_rows_to_map(const at::Tensor& rows, const at::Tensor& index,
                                      const at::Tensor& map) {
  const int64_t d = map.size(-1);
  return at::zeros({map.numel() / d, d}, rows.options())
      .index_add_(0, index, rows)
      .to(map.scalar_type())
      .view(map.sizes());
}

// Positions that become indices (nearest LR pixel, hierarchy bits) must be finite: the
// float -> int64 conversion of NaN or infinity is undefined behaviour.
inline void check_finite(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == 0 || at::isfinite(t).all().item<bool>(), op, ": ", name,
              " must be finite (no NaN or infinity)");
}

}  // namespace ik
