// Tensor glue of the fused DIIF forward (csrc/diif_fused.h over the launcher of
// csrc/cuda/diif_fused.cu): pads every width to a multiple of 16 with zero weights and
// biases, allocates G and the output, and launches on the tensors' current stream.
// Compiled in CUDA builds and in the emulated build (csrc/emulation).
#include <ATen/ATen.h>

#include <vector>

#include "../cuda_glue.h"
#include "../diif_fused.h"
#include "../poison.h"
#include "diif_fused_cuda.h"
#include "tile_sizes.h"

namespace ik {
namespace diif {
namespace {

constexpr const char* kOp = "implicit_kernels::diif_decode";

// The arrays a launch reads, padded; kept alive until the launch is queued.
class Padded {
 public:
  // `t` as cuda::zero_padded to `sizes`.
  const void* operator()(const at::Tensor& t, at::IntArrayRef sizes) {
    kept_.push_back(cuda::zero_padded(t, sizes));
    return kept_.back().data_ptr();
  }

  FusedLayer layer(const at::Tensor& w, const at::Tensor& b) {
    const int64_t out = cuda::padded_width(w.size(0)), in = cuda::padded_width(w.size(1));
    return {(*this)(w, {out, in}), (*this)(b, {out}), static_cast<int>(in), static_cast<int>(out)};
  }

 private:
  std::vector<at::Tensor> kept_;
};

}  // namespace

bool fused_forward_fits(const Stages& st, int64_t width) {
  bool fits = width <= cuda::kMaxWidth && st.fine_wh.size(0) <= cuda::kMaxWidth &&
              st.coarse.weights.size() <= cuda::kMaxLayers &&
              st.fine.weights.size() <= cuda::kMaxLayers;
  for (const auto* mlp : {&st.coarse, &st.fine}) {
    for (const auto& w : mlp->weights) fits = fits && w.size(0) <= cuda::kMaxWidth;
  }
  return fits;
}

namespace {

// The fused kernels on the call's slices: the output (n, out), or with `g_only` the coarse
// kernel alone and its G (R, padded fine width).
at::Tensor run_fused(const at::Tensor& corner_proj, const at::Tensor& w_coord, const at::Tensor& b0,
                     const Stages& st, const Slices& sl, const Dims& dims, bool g_only) {
  const cuda::DeviceGuard guard(corner_proj.device());
  const int64_t width = corner_proj.size(3), fine_width = cuda::padded_width(st.fine_wh.size(0));
  const int64_t hidden = cuda::padded_width(st.fine_wh.size(1));
  const int64_t out_dim = st.fine.weights.back().size(0);
  Padded pad;
  FusedForward f{};
  f.type = cuda::dtype_of(corner_proj.scalar_type(), kOp);
  f.dims = dims;
  f.rows = sl.coords.size(0);
  f.coords = sl.coords.data_ptr();
  f.corners = sl.corners.data_ptr<int64_t>();
  f.corner_proj = corner_proj.data_ptr();
  f.corner_rows = corner_proj.numel() / width;
  f.corner_width = static_cast<int>(width);
  f.width = static_cast<int>(cuda::padded_width(width));
  f.w_coord = pad(w_coord, {f.width, kCoordInputs});
  f.b0 = pad(b0, {f.width});
  f.coarse_count = static_cast<int>(st.coarse.weights.size());
  for (int l = 0; l < f.coarse_count; ++l) {
    f.coarse[l] = pad.layer(st.coarse.weights[l], st.coarse.biases[l]);
  }
  f.fine_wh = pad(st.fine_wh, {fine_width, hidden});
  f.hidden = static_cast<int>(hidden);
  f.fine_width = static_cast<int>(fine_width);
  f.n = g_only ? 0 : sl.pixels.size(0);
  f.hidden_blend = !g_only && f.n < f.rows;
  const at::Tensor vertex_rows =
      empty_poisoned({f.rows, f.hidden_blend ? hidden : fine_width}, corner_proj.options());
  f.vertex_rows = vertex_rows.data_ptr();
  f.pixels = sl.pixels.data_ptr<int64_t>();
  f.slice_of = sl.slice_of.data_ptr<int64_t>();
  f.fine_wd = pad(st.fine_wd, {fine_width, 2});
  f.fine_b0 = pad(st.fine_b0, {fine_width});
  f.fine_count = static_cast<int>(st.fine.weights.size());
  for (int l = 0; l < f.fine_count; ++l) {
    f.fine[l] = pad.layer(st.fine.weights[l], st.fine.biases[l]);
  }
  const at::Tensor out = empty_poisoned({f.n, out_dim}, corner_proj.options());
  f.out = out.data_ptr();
  f.out_dim = static_cast<int>(out_dim);
  cuda::check_launch(launch_diif_fused_forward(f, cuda::stream_of(corner_proj)), kOp,
                     "fused forward");
  return g_only ? vertex_rows : out;
}

}  // namespace

at::Tensor fused_forward_cuda(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                              const at::Tensor& b0, const Stages& st, const Slices& sl,
                              const Dims& dims) {
  return run_fused(corner_proj, w_coord, b0, st, sl, dims, false);
}

at::Tensor fused_slice_vertex_g(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                                const at::Tensor& b0, const Stages& st, const Slices& sl,
                                const Dims& dims) {
  return run_fused(corner_proj, w_coord, b0, st, sl, dims, true);
}

}  // namespace diif
}  // namespace ik
