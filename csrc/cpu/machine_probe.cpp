// Probes of the CPU for the benchmarks' FMA peak (bench/machine.py): the core clock and
// one core's fp32 FMA throughput, measured, since neither can be read reliably (a VM's
// /proc/cpuinfo reports the host's nominal clock, not the boost clock it runs at).
//
//   probe_cpu_clock(cycles)       a chain of `cycles` dependent integer adds, one per cycle
//                                 on every x86 core, timed: the clock in Hz; 0 where the
//                                 chain cannot be written (not x86)
//   probe_fma_flops(isa, fmas)    `fmas` vector FMAs in 12 independent chains (enough to
//                                 cover the FMA latency of every unit), timed: fp32 flop/s
//                                 of one thread for isa "avx2" (256-bit FMA3) or "avx512"
//                                 (512-bit); 0 where the CPU lacks the instructions
//
// The extension is built without -march, so the FMA loops carry target attributes and
// run only when __builtin_cpu_supports says the CPU has the instructions.
#include <chrono>
#include <cstdint>
#include <string>

#include "../library.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define IK_X86_PROBES 1
#endif

namespace ik {
namespace machine {
namespace {

constexpr int kChains = 12;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

#if defined(IK_X86_PROBES)

double clock_hz(int64_t cycles) {
  const int64_t rounds = cycles / 8;
  uint64_t x = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < rounds; ++i) {
    // Eight adds, each waiting for the last: 8 cycles per round (the loop counter runs
    // beside them on other ports).
    asm volatile(
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
        : "+r"(x));
  }
  const double elapsed = seconds_since(start);
  return x == uint64_t(8 * rounds) && elapsed > 0 ? 8.0 * rounds / elapsed : 0.0;
}

// a <- a·b + c converges to c / (1 - b) = 1: values stay normal (no slow subnormals).
__attribute__((target("avx2,fma"))) double fma_avx2(int64_t fmas) {
  const int64_t rounds = fmas / kChains;
  __m256 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm256_set1_ps(static_cast<float>(k));
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < rounds; ++i) {
    for (int k = 0; k < kChains; ++k) acc[k] = _mm256_fmadd_ps(acc[k], b, c);
  }
  const double elapsed = seconds_since(start);
  __m256 sum = acc[0];
  for (int k = 1; k < kChains; ++k) sum = _mm256_add_ps(sum, acc[k]);
  volatile float sink = _mm256_cvtss_f32(sum);  // keeps the chains alive
  (void)sink;
  return elapsed > 0 ? 2.0 * 8 * kChains * rounds / elapsed : 0.0;
}

__attribute__((target("avx512f"))) double fma_avx512(int64_t fmas) {
  const int64_t rounds = fmas / kChains;
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < rounds; ++i) {
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_fmadd_ps(acc[k], b, c);
  }
  const double elapsed = seconds_since(start);
  __m512 sum = acc[0];
  for (int k = 1; k < kChains; ++k) sum = _mm512_add_ps(sum, acc[k]);
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  volatile float sink = lanes[0];  // keeps the chains alive
  (void)sink;
  return elapsed > 0 ? 2.0 * 16 * kChains * rounds / elapsed : 0.0;
}

#endif  // IK_X86_PROBES

double probe_cpu_clock(int64_t cycles) {
  TORCH_CHECK(cycles >= 8, "probe_cpu_clock: cycles must be at least 8, got ", cycles);
#if defined(IK_X86_PROBES)
  return clock_hz(cycles);
#else
  return 0.0;
#endif
}

double probe_fma_flops(c10::string_view isa, int64_t fmas) {
  const std::string name(isa.data(), isa.size());
  TORCH_CHECK(name == "avx2" || name == "avx512", "probe_fma_flops: isa must be 'avx2' or ",
              "'avx512', got '", name, "'");
  TORCH_CHECK(fmas >= kChains, "probe_fma_flops: fmas must be at least ", kChains, ", got ", fmas);
#if defined(IK_X86_PROBES)
  __builtin_cpu_init();
  if (name == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? fma_avx2(fmas) : 0.0;
  }
  return __builtin_cpu_supports("avx512f") ? fma_avx512(fmas) : 0.0;
#else
  return 0.0;
#endif
}

}  // namespace

// No tensor arguments: a CompositeExplicitAutograd kernel is the one the dispatcher finds.
IK_LIBRARY_IMPL(CompositeExplicitAutograd, m) {
  m.impl("probe_cpu_clock", &probe_cpu_clock);
  m.impl("probe_fma_flops", &probe_fma_flops);
}

}  // namespace machine
}  // namespace ik
