// Output allocation for kernels: poisoned in tests so unwritten elements show up.
#pragma once

#include <ATen/ATen.h>

namespace ik {

// An uninitialised tensor, filled with NaN (floats) or -1 (integers) when the environment
// variable IK_POISON=1 is set (tests/conftest.py sets it), so that an element a kernel
// fails to write surfaces as NaN or an out-of-range index instead of stale memory.
at::Tensor empty_poisoned(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace ik
