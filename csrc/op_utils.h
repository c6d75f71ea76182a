// Small host helpers shared by the fused operators' orchestration (csrc/*_decode.cpp).
#pragma once

#include <ATen/ATen.h>

namespace ik {

// Type the geometry, blending and scattered gradients accumulate in: float for half types.
inline at::ScalarType accumulate_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

}  // namespace ik
