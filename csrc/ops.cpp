// Schemas of every operator in the `implicit_kernels` namespace, written once here.
//
// Only one TORCH_LIBRARY block may exist per namespace, so new operators add their
// `m.def` line below; their CPU kernels register with TORCH_LIBRARY_IMPL(..., CPU, m) in
// csrc/cpu/, their CUDA kernels with TORCH_LIBRARY_IMPL(..., CUDA, m) in the CUDA glue.
#include <torch/library.h>

TORCH_LIBRARY(implicit_kernels, m) {
  // Geometry exposed for tests: the same ik/geometry.h functions the fused kernels use,
  // checked exactly against implicit_kernels/geometry.py.
  m.def(
      "diif_slices(Tensor pixels, int[] in_size, int[] out_size, str slicing)"
      " -> (Tensor group, Tensor first, Tensor last)");
  m.def("ensemble_neighbours(Tensor coord, int[] size) -> (Tensor index, Tensor rel)");
  m.def("ensemble_weights(Tensor rel) -> Tensor");
  m.def("slice_ensemble_weights(Tensor d) -> Tensor");
}
