// Dense layers of the fused operators on the host side (ATen matmuls): forward with the
// activations a backward needs, and that backward.  Shared by every decoder's operator.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace ik {

// A chain of Linear layers (weights[i]: out x in, biases[i]: out) with ReLU between
// consecutive layers; `relu_last` adds one after the last.
struct Mlp {
  std::vector<at::Tensor> weights, biases;
  bool relu_last = false;
};

// Checks `weights`/`biases` form a chain taking `in` features, and returns them
// contiguous; `what` names the chain in errors (e.g. "implicit_kernels::diif_decode: fine").
Mlp make_mlp(at::TensorList weights, at::TensorList biases, int64_t in, bool relu_last,
             const std::string& what);

// Runs `mlp` on x (n x in) and returns the output.  With `acts`, records what
// mlp_backward needs: x, then the output of every layer (after its ReLU, if any).
at::Tensor mlp_forward(const Mlp& mlp, at::Tensor x, std::vector<at::Tensor>* acts);

// Backward of mlp_forward: `grad` is the gradient of the output, `acts` what the forward
// recorded.  Fills grad_w/grad_b and returns the gradient of the input x.
at::Tensor mlp_backward(const Mlp& mlp, at::Tensor grad, const std::vector<at::Tensor>& acts,
                        std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b);

// ReLU's backward in place on a gradient the caller owns: grad where the ReLU's output
// `out` is positive, else 0 (as PyTorch); one pass, no mask tensor.
void relu_backward_(at::Tensor& grad, const at::Tensor& out);

// Zero gradients shaped like `ts`.
std::vector<at::Tensor> zeros_like_all(const std::vector<at::Tensor>& ts);

}  // namespace ik
