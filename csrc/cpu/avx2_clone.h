// IK_AVX2_CLONE: a function attribute asking the compiler for an AVX2 clone of a hot loop
// beside the baseline one, the clone chosen once at load time when the CPU has AVX2.  The
// extension is built without -march (it must load on any x86-64), so its own loops are
// otherwise SSE2 only; ATen's and MKL's kernels dispatch on the CPU by themselves.
// Functions the clone calls inline are compiled for AVX2 with it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define IK_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define IK_AVX2_CLONE
#endif

// IK_CLONE_INLINE: for small helpers the clones call in their loops.  A helper the
// compiler leaves out of line is compiled once, for the baseline, whichever clone calls
// it; forced inline it becomes part of each clone.
#if defined(__GNUC__)
#define IK_CLONE_INLINE inline __attribute__((always_inline))
#else
#define IK_CLONE_INLINE inline
#endif
