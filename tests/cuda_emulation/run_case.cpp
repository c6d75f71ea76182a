// Command-line driver of the emulation layer's tests (tests/test_cuda_emulation.py): runs
// one case of emulator_kernels.cu on the host and prints its result, or "error: " and the
// launch's error message with exit status 1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "emulator_kernels.h"

namespace {

namespace test = ik::emulator_test;
using test::BlockSumBug;

int report(cudaError_t error) {
  if (error == cudaSuccess) return 0;
  std::printf("error: %s\n", cudaGetErrorString(error));
  return 1;
}

// Integers -3..3: every partial sum is exact in float, whatever the order.
std::vector<float> inputs(int n) {
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i % 7 - 3 + (i % 5 == 0 ? 10 : 0));
  return x;
}

int block_sum(BlockSumBug bug) {
  const std::vector<float> x = inputs(1000);
  float sum = 0;
  const int status = report(ik::emulator_test::launch_block_sum(x.data(), 1000, &sum, bug));
  if (status == 0) std::printf("%.1f\n", sum);
  return status;
}

int warp_sum() {
  const std::vector<float> x = inputs(4 * 32);
  std::vector<float> sums(8);
  const int status = report(ik::emulator_test::launch_warp_sum(x.data(), 4, sums.data()));
  for (int i = 0; status == 0 && i < 8; ++i) std::printf("%.1f\n", sums[i]);
  return status;
}

int early_exit() {
  std::vector<int> out(64);
  return report(ik::emulator_test::launch_early_exit(out.data()));
}

std::vector<float> read_floats(const char* path) {
  std::ifstream file(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::vector<float> x(bytes.size() / sizeof(float));
  std::memcpy(x.data(), bytes.data(), x.size() * sizeof(float));
  return x;
}

void write_floats(const char* path, const std::vector<float>& x) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
}

// Reads float32 values from file `in`, writes their __half then __nv_bfloat16 roundings
// (as float32) to `out`.
int convert(const char* in, const char* out) {
  const std::vector<float> x = read_floats(in);
  const int n = static_cast<int>(x.size());
  std::vector<float> rounded(2 * n);
  const int status = report(test::launch_convert(x.data(), n, rounded.data(), rounded.data() + n));
  write_floats(out, rounded);
  return status;
}

int neighbour_sum_overrun() {
  const std::vector<float> x = inputs(1000);
  std::vector<float> out(1000);
  return report(test::launch_neighbour_sum_overrun(x.data(), 1000, out.data()));
}

// Prints dynamic_regions_kernel's output with `dynamic_bytes` of dynamic shared memory.
int dynamic_regions(int dynamic_bytes, int opt_in_bytes) {
  const std::vector<float> x = inputs(256);
  std::vector<float> out(256);
  const int status =
      report(test::launch_dynamic_regions(x.data(), out.data(), dynamic_bytes, opt_in_bytes));
  for (int i = 0; status == 0 && i < 256; ++i) std::printf("%.1f\n", out[i]);
  return status;
}

// n elements of T, 32-byte aligned as WMMA requires of global pointers.
template <typename T>
std::unique_ptr<T[], void (*)(void*)> aligned(size_t n) {
  const size_t bytes = (n * sizeof(T) + 31) / 32 * 32;
  return {static_cast<T*>(std::aligned_alloc(32, bytes)), std::free};
}

// An r × c matrix given row-major in `x`, stored row- or column-major as T.
template <typename T>
std::unique_ptr<T[], void (*)(void*)> matrix(const float* x, int r, int c, bool col_major) {
  auto m = aligned<T>(r * c);
  for (int i = 0; i < r; ++i) {
    for (int j = 0; j < c; ++j) m[col_major ? i + j * r : i * c + j] = T(x[i * c + j]);
  }
  return m;
}

// File `in`: a (M × K), b (K × N) and c (M × N) row-major float32, a and b already rounded
// to `type`; writes d = c + a·b (row-major float32) to `out`.  layouts: "row"/"col" for a,
// b and c.
template <typename T>
int wmma_gemm(test::HalfType type, const char* const* layouts, bool sync_after_store,
              const char* in, const char* out) {
  using test::kGemmK;
  using test::kGemmM;
  using test::kGemmN;
  const std::vector<float> x = read_floats(in);
  if (x.size() != static_cast<size_t>(kGemmM * kGemmK + kGemmK * kGemmN + kGemmM * kGemmN)) {
    std::fprintf(stderr, "wmma: %s holds %zu values\n", in, x.size());
    return 2;
  }
  bool col[3];
  for (int i = 0; i < 3; ++i) col[i] = std::strcmp(layouts[i], "col") == 0;
  const auto a = matrix<T>(x.data(), kGemmM, kGemmK, col[0]);
  const auto b = matrix<T>(x.data() + kGemmM * kGemmK, kGemmK, kGemmN, col[1]);
  const auto c =
      matrix<float>(x.data() + kGemmM * kGemmK + kGemmK * kGemmN, kGemmM, kGemmN, col[2]);
  auto d = aligned<float>(kGemmM * kGemmN);
  const int status = report(test::launch_wmma_gemm(type, a.get(), col[0], b.get(), col[1], c.get(),
                                                   col[2], sync_after_store, d.get()));
  write_floats(out, std::vector<float>(d.get(), d.get() + kGemmM * kGemmN));
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "";
  if (name == "block_sum") return block_sum(BlockSumBug::kNone);
  if (name == "missing_barrier") return block_sum(BlockSumBug::kMissingBarrier);
  if (name == "out_of_range") return block_sum(BlockSumBug::kOutOfRange);
  if (name == "warp_sum") return warp_sum();
  if (name == "early_exit") return early_exit();
  if (name == "convert" && argc == 4) return convert(argv[2], argv[3]);
  if (name == "global_overrun") return neighbour_sum_overrun();
  const int regions = ik::emulator_test::kDynamicRegionsBytes, large = 64 << 10;
  if (name == "dynamic_regions") return dynamic_regions(regions, 0);
  if (name == "dynamic_too_small") return dynamic_regions(regions - 48, 0);
  if (name == "dynamic_opt_in") return dynamic_regions(large, large);
  if (name == "dynamic_no_opt_in") return dynamic_regions(large, 0);
  if (name == "dynamic_opt_in_too_large") return dynamic_regions(large, 228 << 10);
  if (name == "wmma_misaligned") return report(ik::emulator_test::launch_wmma_misaligned());
  if (name == "wmma" && argc == 9) {
    const bool sync = std::strcmp(argv[6], "sync") == 0;
    if (std::strcmp(argv[2], "float16") == 0) {
      return wmma_gemm<__half>(test::HalfType::kFloat16, argv + 3, sync, argv[7], argv[8]);
    }
    return wmma_gemm<__nv_bfloat16>(test::HalfType::kBFloat16, argv + 3, sync, argv[7], argv[8]);
  }
  std::fprintf(stderr,
               "usage: run_case block_sum|missing_barrier|out_of_range|warp_sum|early_exit|"
               "global_overrun|dynamic_regions|dynamic_too_small|dynamic_opt_in|"
               "dynamic_no_opt_in|dynamic_opt_in_too_large|wmma_misaligned\n"
               "       run_case convert IN OUT\n"
               "       run_case wmma float16|bfloat16 A B C sync|nosync IN OUT"
               " (A, B, C: row|col)\n");
  return 2;
}
