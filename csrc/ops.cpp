// Schemas of every operator in the `implicit_kernels` namespace, written once here.
//
// Only one TORCH_LIBRARY block may exist per namespace, so new operators add their
// `m.def` line below; their kernels register with IK_LIBRARY_IMPL(CPU, m) and, in CUDA
// builds, IK_LIBRARY_IMPL(CUDA, m) (csrc/library.h: the namespace may be another).
#include "library.h"

IK_LIBRARY(m) {
  // Geometry exposed for tests: the same ik/geometry.h functions the fused kernels use,
  // checked exactly against implicit_kernels/geometry.py.
  m.def(
      "diif_slices(Tensor pixels, int[] in_size, int[] out_size, str slicing)"
      " -> (Tensor group, Tensor first, Tensor last)");
  m.def("ensemble_neighbours(Tensor coord, int[] size) -> (Tensor index, Tensor rel)");
  m.def("ensemble_weights(Tensor rel) -> Tensor");
  m.def("slice_ensemble_weights(Tensor d) -> Tensor");

  // Fused DIIF decode (csrc/diif_decode.cpp): the decoder after docs/diif.md's splits,
  // from the corner projection (without the slice ensemble: the per-pixel projection) to
  // the output of the requested pixels.
  m.def(
      "diif_decode(Tensor corner_proj, Tensor w_coord, Tensor b0, Tensor[] coarse_w,"
      " Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd, Tensor fine_b0, Tensor[] fine_w,"
      " Tensor[] fine_b, Tensor pixels, int out_h, int out_w, str slicing,"
      " bool slice_ensemble) -> Tensor");
  // The same forward keeping its record for the backward (the fakes spell out its layout:
  // implicit_kernels/ops/diif.py), and that backward.
  m.def(
      "diif_decode_train(Tensor corner_proj, Tensor w_coord, Tensor b0, Tensor[] coarse_w,"
      " Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd, Tensor fine_b0, Tensor[] fine_w,"
      " Tensor[] fine_b, Tensor pixels, int out_h, int out_w, str slicing,"
      " bool slice_ensemble) -> (Tensor, Tensor[])");
  // Whether diif_decode_backward of this call runs the fused CUDA kernels (CUDA builds,
  // decoders within their widths and depths): such a backward recomputes each tile on
  // chip, so the call keeps no record (implicit_kernels/ops/__init__.py, keeps_record).
  m.def(
      "diif_decode_backward_is_fused(Tensor corner_proj, Tensor w_coord, Tensor b0,"
      " Tensor[] coarse_w, Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd, Tensor fine_b0,"
      " Tensor[] fine_w, Tensor[] fine_b, Tensor pixels, int out_h, int out_w, str slicing,"
      " bool slice_ensemble) -> bool");
  m.def(
      "diif_decode_backward_saved(Tensor grad_out, Tensor[] saved, Tensor corner_proj,"
      " Tensor w_coord, Tensor b0, Tensor[] coarse_w, Tensor[] coarse_b, Tensor fine_wh,"
      " Tensor fine_wd, Tensor fine_b0, Tensor[] fine_w, Tensor[] fine_b, Tensor pixels,"
      " int out_h, int out_w, str slicing, bool slice_ensemble) -> (Tensor, Tensor, Tensor,"
      " Tensor[], Tensor[], Tensor, Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "diif_decode_backward(Tensor grad_out, Tensor corner_proj, Tensor w_coord, Tensor b0,"
      " Tensor[] coarse_w, Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd, Tensor fine_b0,"
      " Tensor[] fine_w, Tensor[] fine_b, Tensor pixels, int out_h, int out_w, str slicing,"
      " bool slice_ensemble) -> (Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor, Tensor,"
      " Tensor, Tensor[], Tensor[])");

  // Fused DLTE decode (csrc/dlte_decode.cpp): DIIF's stages with LTE-style Fourier vertex
  // features, from the vertex codes of the estimator maps (channels last) to the output
  // of the requested pixels, without the bilinear skip.
  m.def(
      "dlte_decode(Tensor coef, Tensor freq, Tensor phase, Tensor w0, Tensor b0,"
      " Tensor[] coarse_w, Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd, Tensor fine_b0,"
      " Tensor[] fine_w, Tensor[] fine_b, Tensor pixels, int out_h, int out_w, str slicing)"
      " -> Tensor");
  m.def(
      "dlte_decode_train(Tensor coef, Tensor freq, Tensor phase, Tensor w0, Tensor b0,"
      " Tensor[] coarse_w, Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd, Tensor fine_b0,"
      " Tensor[] fine_w, Tensor[] fine_b, Tensor pixels, int out_h, int out_w, str slicing)"
      " -> (Tensor, Tensor[])");
  m.def(
      "dlte_decode_backward_saved(Tensor grad_out, Tensor[] saved, Tensor coef, Tensor freq,"
      " Tensor phase, Tensor w0, Tensor b0, Tensor[] coarse_w, Tensor[] coarse_b,"
      " Tensor fine_wh, Tensor fine_wd, Tensor fine_b0, Tensor[] fine_w, Tensor[] fine_b,"
      " Tensor pixels, int out_h, int out_w, str slicing) -> (Tensor, Tensor, Tensor, Tensor,"
      " Tensor, Tensor[], Tensor[], Tensor, Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "dlte_decode_backward(Tensor grad_out, Tensor coef, Tensor freq, Tensor phase, Tensor w0,"
      " Tensor b0, Tensor[] coarse_w, Tensor[] coarse_b, Tensor fine_wh, Tensor fine_wd,"
      " Tensor fine_b0, Tensor[] fine_w, Tensor[] fine_b, Tensor pixels, int out_h, int out_w,"
      " str slicing) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor,"
      " Tensor, Tensor, Tensor[], Tensor[])");

  // Fused HIIF (csrc/hiif_decode.cpp): level 0 from the per-LR-pixel maps, the linear
  // attention's reduction and application, the later levels with their bits; and the
  // bits alone, for tests.
  // `public_centres`: LR pixel centres rounded as the public HIIF code does
  // (F.hiif_decode(level_codes="public")), which decides the level codes at exact ties.
  m.def(
      "hiif_codes(Tensor coord, int h, int w, int levels, bool public_centres=False)"
      " -> Tensor");
  m.def(
      "hiif_level0(Tensor maps, Tensor row_sums, Tensor w_extra, Tensor bias, Tensor fc2_w,"
      " Tensor fc2_b, Tensor coord, Tensor cell, int channels, bool public_centres) -> Tensor");
  m.def(
      "hiif_level0_backward(Tensor grad_out, Tensor maps, Tensor row_sums, Tensor w_extra,"
      " Tensor bias, Tensor fc2_w, Tensor fc2_b, Tensor coord, Tensor cell, int channels,"
      " bool public_centres) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "hiif_attention_stats(Tensor x, Tensor qkv_w, Tensor qkv_b, Tensor kln_w, Tensor kln_b,"
      " Tensor vln_w, Tensor vln_b, int heads) -> Tensor");
  m.def(
      "hiif_attention_stats_backward(Tensor grad_out, Tensor x, Tensor qkv_w, Tensor qkv_b,"
      " Tensor kln_w, Tensor kln_b, Tensor vln_w, Tensor vln_b, int heads)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "hiif_attention_apply(Tensor x, Tensor mat, Tensor qkv_w, Tensor qkv_b, Tensor proj1_w,"
      " Tensor proj1_b, Tensor proj2_w, Tensor proj2_b) -> Tensor");
  // hiif_level0 into a given output and hiif_attention_apply over its input, for the cpu
  // backend's decode without gradients (one activation buffer reused for every chunk).
  m.def(
      "hiif_level0_out(Tensor maps, Tensor row_sums, Tensor w_extra, Tensor bias, Tensor fc2_w,"
      " Tensor fc2_b, Tensor coord, Tensor cell, int channels, bool public_centres,"
      " Tensor(a!) out) -> ()");
  m.def(
      "hiif_attention_apply_(Tensor(a!) x, Tensor mat, Tensor qkv_w, Tensor qkv_b,"
      " Tensor proj1_w, Tensor proj1_b, Tensor proj2_w, Tensor proj2_b) -> ()");
  m.def(
      "hiif_attention_apply_backward(Tensor grad_out, Tensor x, Tensor mat, Tensor qkv_w,"
      " Tensor qkv_b, Tensor proj1_w, Tensor proj1_b, Tensor proj2_w, Tensor proj2_b)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The cpu backend's attention with gradients: the operators plus the activations their
  // backwards read instead of recomputing (CPU only).
  m.def(
      "hiif_attention_stats_train(Tensor x, Tensor qkv_w, Tensor qkv_b, Tensor kln_w,"
      " Tensor kln_b, Tensor vln_w, Tensor vln_b, int heads) -> (Tensor, Tensor[])");
  m.def(
      "hiif_attention_stats_backward_saved(Tensor grad_out, Tensor[] saved, Tensor x,"
      " Tensor qkv_w, Tensor qkv_b, Tensor kln_w, Tensor kln_b, Tensor vln_w, Tensor vln_b,"
      " int heads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "hiif_attention_apply_train(Tensor x, Tensor mat, Tensor qkv_w, Tensor qkv_b,"
      " Tensor proj1_w, Tensor proj1_b, Tensor proj2_w, Tensor proj2_b) -> (Tensor, Tensor[])");
  m.def(
      "hiif_attention_apply_backward_saved(Tensor grad_out, Tensor[] saved, Tensor x,"
      " Tensor mat, Tensor qkv_w, Tensor qkv_b, Tensor proj1_w, Tensor proj1_b,"
      " Tensor proj2_w, Tensor proj2_b)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "hiif_levels(Tensor x, Tensor coord, Tensor[] norm_w, Tensor[] norm_b, Tensor[] fc1_w,"
      " Tensor[] fc1_b, Tensor[] fc2_w, Tensor[] fc2_b, int h, int w, bool public_centres)"
      " -> Tensor");
  m.def(
      "hiif_levels_backward(Tensor grad_out, Tensor x, Tensor coord, Tensor[] norm_w,"
      " Tensor[] norm_b, Tensor[] fc1_w, Tensor[] fc1_b, Tensor[] fc2_w, Tensor[] fc2_b, int h,"
      " int w, bool public_centres)"
      " -> (Tensor, Tensor[], Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])");
  // The cpu backend's levels with gradients: hiif_levels plus the activations its backward
  // reads instead of recomputing (CPU only).
  m.def(
      "hiif_levels_train(Tensor x, Tensor coord, Tensor[] norm_w, Tensor[] norm_b,"
      " Tensor[] fc1_w, Tensor[] fc1_b, Tensor[] fc2_w, Tensor[] fc2_b, int h, int w,"
      " bool public_centres) -> (Tensor, Tensor[])");
  m.def(
      "hiif_levels_backward_saved(Tensor grad_out, Tensor[] saved, Tensor x, Tensor coord,"
      " Tensor[] norm_w, Tensor[] norm_b, Tensor[] fc1_w, Tensor[] fc1_b, Tensor[] fc2_w,"
      " Tensor[] fc2_b, int h, int w, bool public_centres) -> (Tensor, Tensor[], Tensor[],"
      " Tensor[], Tensor[], Tensor[], Tensor[])");
  // CPU probes for the benchmarks' FMA peak (csrc/cpu/machine_probe.cpp): the clock in Hz
  // from a chain of dependent adds, one thread's fp32 FMA flop/s ("avx2" or "avx512");
  // 0 where a probe cannot run on this CPU.
  m.def("probe_cpu_clock(int cycles) -> float");
  m.def("probe_fma_flops(str isa, int fmas) -> float");
  // The CPU kernels' sin and cos of float angles (csrc/cpu/sin_cos_cpu.h), elementwise;
  // an operator for its accuracy test.
  m.def("sin_cos(Tensor angle) -> (Tensor, Tensor)");
  // The CPU tiles' dense layer act(a·wᵀ + bias) (csrc/cpu/tiles.h, linear_tile) on a whole
  // float32 matrix, and whether it ran on our kernel (csrc/cpu/tile_gemm.h) rather than
  // ATen's GEMM; an operator for its accuracy test.
  m.def("tile_linear(Tensor a, Tensor w, Tensor? bias, bool relu) -> (Tensor, bool)");

  // Fused LIIF decode (csrc/liif_decode.cpp): from the first layer's feature part per LR
  // pixel (channels last) to the output of the queries; coord and cell not differentiated.
  m.def(
      "liif_decode(Tensor proj, Tensor w_rel_cell, Tensor b0, Tensor[] w, Tensor[] b,"
      " Tensor coord, Tensor cell) -> Tensor");
  // The same forward keeping its record for the backward (csrc/liif_kernels.h,
  // pack_record; implicit_kernels/ops/liif.py), and that backward; LTE's alike.
  m.def(
      "liif_decode_train(Tensor proj, Tensor w_rel_cell, Tensor b0, Tensor[] w, Tensor[] b,"
      " Tensor coord, Tensor cell) -> (Tensor, Tensor[])");
  m.def(
      "liif_decode_backward_saved(Tensor grad_out, Tensor[] saved, Tensor proj,"
      " Tensor w_rel_cell, Tensor b0, Tensor[] w, Tensor[] b, Tensor coord, Tensor cell)"
      " -> (Tensor, Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "liif_decode_backward(Tensor grad_out, Tensor proj, Tensor w_rel_cell, Tensor b0,"
      " Tensor[] w, Tensor[] b, Tensor coord, Tensor cell)"
      " -> (Tensor, Tensor, Tensor, Tensor[], Tensor[])");

  // Fused LTE decode (csrc/lte_decode.cpp): from the coefficient and frequency maps
  // (channels last) to the output of the queries, without the bilinear skip.
  m.def(
      "lte_decode(Tensor coef, Tensor freq, Tensor phase, Tensor[] w, Tensor[] b,"
      " Tensor coord, Tensor cell) -> Tensor");
  m.def(
      "lte_decode_train(Tensor coef, Tensor freq, Tensor phase, Tensor[] w, Tensor[] b,"
      " Tensor coord, Tensor cell) -> (Tensor, Tensor[])");
  m.def(
      "lte_decode_backward_saved(Tensor grad_out, Tensor[] saved, Tensor coef, Tensor freq,"
      " Tensor phase, Tensor[] w, Tensor[] b, Tensor coord, Tensor cell)"
      " -> (Tensor, Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "lte_decode_backward(Tensor grad_out, Tensor coef, Tensor freq, Tensor phase,"
      " Tensor[] w, Tensor[] b, Tensor coord, Tensor cell)"
      " -> (Tensor, Tensor, Tensor, Tensor[], Tensor[])");
}
