// The tile GEMM kernel of tile_gemm.h: a 6 x 16 register block (12 ymm accumulators; per k
// two panel loads, six broadcasts of a's rows, twelve FMAs), looped panel by panel so a
// panel (in x 16 floats, 16 KB at in = 256) stays in L1 while the tile's rows stream from L2.
#include "tile_gemm.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define IK_TILE_GEMM 1
#endif

namespace ik {

#if defined(IK_TILE_GEMM)
namespace {

#define IK_AVX2_FMA __attribute__((target("avx2,fma")))

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// R rows (R <= 6) x 16 columns of c from one panel: accumulators start at the bias.
template <int R>
IK_AVX2_FMA __attribute__((always_inline)) inline void block(const float* a, int64_t lda,
                                                             const float* panel, int64_t in,
                                                             const float* bias, bool relu, float* c,
                                                             int64_t ldc) {
  __m256 acc[R][2];
  const __m256 b0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  const __m256 b1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc[r][0] = b0;
    acc[r][1] = b1;
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < in; ++k) {
    const __m256 w0 = _mm256_loadu_ps(panel + k * kPanelCols);
    const __m256 w1 = _mm256_loadu_ps(panel + k * kPanelCols + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    // max(0, x) returns its second operand x when x is NaN.
    _mm256_storeu_ps(c + r * ldc, relu ? _mm256_max_ps(zero, acc[r][0]) : acc[r][0]);
    _mm256_storeu_ps(c + r * ldc + 8, relu ? _mm256_max_ps(zero, acc[r][1]) : acc[r][1]);
  }
}

IK_AVX2_FMA inline float horizontal_sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// A layer narrower than a panel (an RGB head): per row, dot products of a's row with each
// of w's rows (out, in), up to four at a time so a's row is loaded once per four.
IK_AVX2_FMA void narrow_gemm_avx2(const float* a, int64_t lda, int64_t rows, int64_t in,
                                  const float* w, int64_t out, const float* bias, bool relu,
                                  float* c, int64_t ldc) {
  const int64_t vec_in = in - in % 8;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * lda;
    for (int64_t o0 = 0; o0 < out; o0 += 4) {
      const int n = static_cast<int>(std::min<int64_t>(4, out - o0));
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (int64_t k = 0; k < vec_in; k += 8) {
        const __m256 xv = _mm256_loadu_ps(x + k);
        for (int j = 0; j < n; ++j) {
          acc[j] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + (o0 + j) * in + k), acc[j]);
        }
      }
      for (int j = 0; j < n; ++j) {
        float sum = horizontal_sum(acc[j]);
        for (int64_t k = vec_in; k < in; ++k) sum += x[k] * w[(o0 + j) * in + k];
        if (bias) sum += bias[o0 + j];
        c[r * ldc + o0 + j] = relu && sum < 0.0f ? 0.0f : sum;
      }
    }
  }
}

IK_AVX2_FMA void tile_gemm_avx2(const float* a, int64_t lda, int64_t rows, int64_t in,
                                const float* packed, int64_t out, const float* bias, bool relu,
                                float* c, int64_t ldc) {
  for (int64_t col = 0; col < out; col += kPanelCols) {
    const float* panel = packed + col * in;
    const float* b = bias ? bias + col : nullptr;
    int64_t r = 0;
    for (; r + 6 <= rows; r += 6)
      block<6>(a + r * lda, lda, panel, in, b, relu, c + r * ldc + col, ldc);
    const float* ar = a + r * lda;
    float* cr = c + r * ldc + col;
    switch (rows - r) {
      case 5:
        block<5>(ar, lda, panel, in, b, relu, cr, ldc);
        break;
      case 4:
        block<4>(ar, lda, panel, in, b, relu, cr, ldc);
        break;
      case 3:
        block<3>(ar, lda, panel, in, b, relu, cr, ldc);
        break;
      case 2:
        block<2>(ar, lda, panel, in, b, relu, cr, ldc);
        break;
      case 1:
        block<1>(ar, lda, panel, in, b, relu, cr, ldc);
        break;
      default:
        break;
    }
  }
}

// Panel rows from 16 rows of w with contiguous rows (row stride s0): panel[k * 16 + j] =
// rows[j * s0 + k], eight k at a time as two 8 x 8 transposes in registers (a scalar loop
// packed a 256 x 256 weight in ~25 us, as long as the tile GEMM of ~20 rows).
IK_AVX2_FMA void pack_panel_avx2(const float* rows, int64_t s0, int64_t in, float* panel) {
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    for (int half = 0; half < 2; ++half) {
      const float* src = rows + half * 8 * s0 + k;
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + j * s0);
      __m256 t[8], u[8];
      for (int j = 0; j < 4; ++j) {
        t[2 * j] = _mm256_unpacklo_ps(r[2 * j], r[2 * j + 1]);
        t[2 * j + 1] = _mm256_unpackhi_ps(r[2 * j], r[2 * j + 1]);
      }
      for (int j = 0; j < 2; ++j) {
        u[4 * j] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], 0x44);
        u[4 * j + 1] = _mm256_shuffle_ps(t[4 * j], t[4 * j + 2], 0xEE);
        u[4 * j + 2] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], 0x44);
        u[4 * j + 3] = _mm256_shuffle_ps(t[4 * j + 1], t[4 * j + 3], 0xEE);
      }
      float* dst = panel + k * kPanelCols + half * 8;
      for (int j = 0; j < 4; ++j) {
        _mm256_storeu_ps(dst + j * kPanelCols, _mm256_permute2f128_ps(u[j], u[j + 4], 0x20));
        _mm256_storeu_ps(dst + (j + 4) * kPanelCols, _mm256_permute2f128_ps(u[j], u[j + 4], 0x31));
      }
    }
  }
  for (; k < in; ++k) {
    for (int64_t j = 0; j < kPanelCols; ++j) panel[k * kPanelCols + j] = rows[j * s0 + k];
  }
}

}  // namespace
#endif

at::Tensor pack_tile_weight(const at::Tensor& w) {
#if defined(IK_TILE_GEMM)
  if (!cpu_has_avx2_fma() || !w.is_cpu() || w.scalar_type() != at::kFloat || w.dim() != 2 ||
      w.size(0) == 0 || (w.size(0) > kPanelCols && w.size(0) % kPanelCols != 0) || w.size(1) == 0) {
    return at::Tensor();
  }
  const int64_t out = w.size(0), in = w.size(1);
  if (out < kPanelCols) return w.detach().contiguous();  // narrow_gemm_avx2 reads w
  // (out/16, in, 16) with panel p's row k = w[16p..16p+15, k], from any strides, reading
  // along w's contiguous dimension (ATen's copy of that strided view is a gather several
  // times slower, and small calls pack every weight): rows of w contiguous by register
  // transposes, columns contiguous (a transposed weight) by contiguous copies.
  at::Tensor packed = at::empty({out / kPanelCols, in, kPanelCols}, w.options());
  const at::Tensor src = w.detach();
  const float* wp = src.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  const int64_t s0 = src.stride(0), s1 = src.stride(1);
  if (s0 == 1 && s1 != 1) {
    // Columns contiguous (a transposed weight): column k of w is split into the panels'
    // row k, column after column.  (Panel after panel read 64 bytes of every column, a
    // stride the prefetcher does not follow: 4x slower.)
    for (int64_t k = 0; k < in; ++k) {
      for (int64_t p = 0; p < out / kPanelCols; ++p) {
        std::memcpy(dst + (p * in + k) * kPanelCols, wp + k * s1 + p * kPanelCols,
                    kPanelCols * sizeof(float));
      }
    }
    return packed;
  }
  for (int64_t p = 0; p < out / kPanelCols; ++p) {
    const float* rows = wp + p * kPanelCols * s0;
    float* panel = dst + p * in * kPanelCols;
    if (s1 == 1) {  // rows of w contiguous
      pack_panel_avx2(rows, s0, in, panel);
    } else {
      for (int64_t k = 0; k < in; ++k) {
        for (int64_t j = 0; j < kPanelCols; ++j) panel[k * kPanelCols + j] = rows[j * s0 + k * s1];
      }
    }
  }
  return packed;
#else
  (void)w;
  return at::Tensor();
#endif
}

void tile_gemm(const float* a, int64_t lda, int64_t rows, int64_t in, const float* packed,
               int64_t out, const float* bias, bool relu, float* c, int64_t ldc) {
#if defined(IK_TILE_GEMM)
  if (out < kPanelCols) return narrow_gemm_avx2(a, lda, rows, in, packed, out, bias, relu, c, ldc);
  tile_gemm_avx2(a, lda, rows, in, packed, out, bias, relu, c, ldc);
#else
  TORCH_CHECK(false, "implicit_kernels: the tile GEMM kernel is not built for this CPU");
#endif
}

}  // namespace ik
