// CPU loops of the fused HIIF operators' element-wise steps (ik/hiif_decode.h), declared in
// csrc/hiif_kernels.h.  Each loop runs the same inline functions the CUDA kernels run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../hiif_kernels.h"
#include "../poison.h"
#include "hiif_rows_cpu.h"

namespace ik {
namespace hiif {

std::tuple<at::Tensor, at::Tensor, at::Tensor> level0_sum_cpu(
    const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
    const at::Tensor& coord, const at::Tensor& cell, int64_t q, int64_t channels,
    bool public_centres) {
  const int64_t n = coord.size(0), h = maps.size(1), w = maps.size(2), hidden = row_sums.size(1);
  at::Tensor u = empty_poisoned({n, hidden}, maps.options());
  at::Tensor rows = empty_poisoned({n, 4}, maps.options().dtype(at::kLong));
  at::Tensor aux = empty_poisoned({n, kAuxWidth}, maps.options());
  int64_t* rp = rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(maps.scalar_type(), "hiif_level0_sum_cpu", [&] {
    const scalar_t* mp = maps.data_ptr<scalar_t>();
    const scalar_t* cp = coord.data_ptr<scalar_t>();
    const scalar_t* ep = cell.data_ptr<scalar_t>();
    const scalar_t* rs = row_sums.data_ptr<scalar_t>();
    const scalar_t* we = w_extra.data_ptr<scalar_t>();
    scalar_t* ap = aux.data_ptr<scalar_t>();
    scalar_t* out = u.data_ptr<scalar_t>();
    // A query reads four hidden-wide rows: a few dozen queries make a task.
    at::parallel_for(0, n, 32, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        scalar_t* a = ap + p * kAuxWidth;
        level0_stats<scalar_t>(cp[2 * p], cp[2 * p + 1], ep[2 * p], ep[2 * p + 1], p / q, h, w,
                               public_centres, mp, hidden, channels, rp + 4 * p, a);
        scalar_t* row = out + p * hidden;
        for (int64_t j = 0; j < hidden; ++j) {
          row[j] = level0_channel<scalar_t>(j, hidden, mp, rp + 4 * p, a, rs, we);
        }
      }
    });
  });
  return {u, rows, aux};
}

std::tuple<at::Tensor, at::Tensor> level_input_cpu(const at::Tensor& x, const at::Tensor& coord,
                                                   int64_t h, int64_t w, int64_t level,
                                                   bool public_centres) {
  const int64_t n = x.size(0), c = x.size(1), width = c + 2;
  at::Tensor y = empty_poisoned({n, width}, x.options());
  at::Tensor rstd = empty_poisoned({n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hiif_level_input_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cp = coord.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
    at::parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        rp[p] = normalise_level_row<scalar_t>(xp + p * c, c, cp[2 * p], cp[2 * p + 1], h, w, level,
                                              public_centres, yp + p * width);
      }
    });
  });
  return {y, rstd};
}

at::Tensor codes_cpu(const at::Tensor& coord, int64_t h, int64_t w, int64_t levels,
                     bool public_centres) {
  const int64_t n = coord.size(0);
  at::Tensor bits = empty_poisoned({n, levels, 2}, coord.options());
  AT_DISPATCH_FLOATING_TYPES(coord.scalar_type(), "hiif_codes_cpu", [&] {
    const scalar_t* cp = coord.data_ptr<scalar_t>();
    scalar_t* out = bits.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        scalar_t ly, lx;
        local_of<scalar_t>(cp[2 * p], cp[2 * p + 1], h, w, public_centres, &ly, &lx);
        for (int64_t l = 0; l < levels; ++l) {
          out[(p * levels + l) * 2] = level_bit(ly, static_cast<int>(l));
          out[(p * levels + l) * 2 + 1] = level_bit(lx, static_cast<int>(l));
        }
      }
    });
  });
  return bits;
}

}  // namespace hiif
}  // namespace ik
