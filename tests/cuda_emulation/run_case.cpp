// Command-line driver of the emulation layer's tests (tests/test_cuda_emulation.py): runs
// one case of emulator_kernels.cu on the host and prints its result, or "error: " and the
// launch's error message with exit status 1.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "emulator_kernels.h"

namespace {

using ik::emulator_test::BlockSumBug;

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

// Reads float32 values from file `in`, writes their __half then __nv_bfloat16 roundings
// (as float32) to `out`.
int convert(const char* in, const char* out) {
  std::ifstream file(in, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const int n = static_cast<int>(bytes.size() / sizeof(float));
  std::vector<float> x(n), rounded(2 * n);
  std::memcpy(x.data(), bytes.data(), n * sizeof(float));
  const int status =
      report(ik::emulator_test::launch_convert(x.data(), n, rounded.data(), rounded.data() + n));
  std::ofstream(out, std::ios::binary)
      .write(reinterpret_cast<const char*>(rounded.data()), rounded.size() * sizeof(float));
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
  std::fprintf(stderr,
               "usage: run_case block_sum|missing_barrier|out_of_range|warp_sum|"
               "early_exit|convert IN OUT\n");
  return 2;
}
