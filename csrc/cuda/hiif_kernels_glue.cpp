// Tensor glue of the fused HIIF operators' CUDA kernels: implements the *_cuda steps of
// csrc/hiif_kernels.h by calling the launchers of hiif_kernels.cu on the current stream of
// the tensors' device.  Compiled in CUDA builds and in the emulated build (csrc/emulation).
#include <ATen/ATen.h>

#include "../cuda_glue.h"
#include "../hiif_kernels.h"
#include "../poison.h"
#include "hiif_kernels_cuda.h"

namespace ik {
namespace hiif {
namespace {

constexpr const char* kOp = "implicit_kernels::hiif";

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> level0_sum_cuda(
    const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
    const at::Tensor& coord, const at::Tensor& cell, int64_t q, int64_t channels,
    bool public_centres) {
  const cuda::DeviceGuard guard(maps.device());
  const int64_t n = coord.size(0), hidden = row_sums.size(1);
  at::Tensor u = empty_poisoned({n, hidden}, maps.options());
  at::Tensor rows = empty_poisoned({n, 4}, maps.options().dtype(at::kLong));
  at::Tensor aux =
      empty_poisoned({n, kAuxWidth}, maps.options().dtype(accumulate_type(maps.scalar_type())));
  cuda::check_launch(
      launch_level0_sum(maps.data_ptr(), row_sums.data_ptr(), w_extra.data_ptr(), coord.data_ptr(),
                        cell.data_ptr(), n, q, maps.size(1), maps.size(2), public_centres, hidden,
                        channels, cuda::dtype_of(maps.scalar_type(), kOp), u.data_ptr(),
                        rows.data_ptr<int64_t>(), aux.data_ptr(), cuda::stream_of(maps)),
      kOp, "level0_sum");
  return {u, rows, aux};
}

std::tuple<at::Tensor, at::Tensor> level_input_cuda(const at::Tensor& x, const at::Tensor& coord,
                                                    int64_t h, int64_t w, int64_t level,
                                                    bool public_centres) {
  const cuda::DeviceGuard guard(x.device());
  const int64_t n = x.size(0), c = x.size(1);
  at::Tensor y = empty_poisoned({n, c + 2}, x.options());
  at::Tensor rstd = empty_poisoned({n}, x.options().dtype(accumulate_type(x.scalar_type())));
  cuda::check_launch(
      launch_level_input(x.data_ptr(), coord.data_ptr(), n, c, h, w, public_centres,
                         static_cast<int>(level), cuda::dtype_of(x.scalar_type(), kOp),
                         y.data_ptr(), rstd.data_ptr(), cuda::stream_of(x)),
      kOp, "level_input");
  return {y, rstd};
}

at::Tensor codes_cuda(const at::Tensor& coord, int64_t h, int64_t w, int64_t levels,
                      bool public_centres) {
  const cuda::DeviceGuard guard(coord.device());
  TORCH_CHECK(coord.scalar_type() == at::kFloat || coord.scalar_type() == at::kDouble,
              "implicit_kernels::hiif_codes: coord must be float32 or float64 on CUDA, got ",
              coord.scalar_type());
  at::Tensor bits = empty_poisoned({coord.size(0), levels, 2}, coord.options());
  cuda::check_launch(
      launch_codes(coord.data_ptr(), coord.size(0), h, w, public_centres, static_cast<int>(levels),
                   cuda::dtype_of(coord.scalar_type(), kOp), bits.data_ptr(),
                   cuda::stream_of(coord)),
      kOp, "codes");
  return bits;
}

}  // namespace hiif
}  // namespace ik
