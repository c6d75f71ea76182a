#include "mlp.h"

#include <string>

namespace ik {

Mlp make_mlp(at::TensorList weights, at::TensorList biases, int64_t in, bool relu_last,
             const std::string& what) {
  TORCH_CHECK(weights.size() == biases.size(), what, ": ", weights.size(), " weights but ",
              biases.size(), " biases");
  Mlp mlp;
  mlp.relu_last = relu_last;
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor &w = weights[i], &b = biases[i];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == in, what, " layer ", i, ": weight must be (out, ", in,
                "), got ", w.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), what, " layer ", i, ": bias must be (",
                w.size(0), ",), got ", b.sizes());
    mlp.weights.push_back(w.contiguous());
    mlp.biases.push_back(b.contiguous());
    in = w.size(0);
  }
  return mlp;
}

at::Tensor mlp_forward(const Mlp& mlp, at::Tensor x, std::vector<at::Tensor>* acts) {
  const size_t n = mlp.weights.size();
  if (acts != nullptr) acts->push_back(x);
  for (size_t i = 0; i < n; ++i) {
    x = at::addmm(mlp.biases[i], x, mlp.weights[i].t());
    if (i + 1 < n || mlp.relu_last) at::relu_(x);  // in place: x is addmm's fresh output
    if (acts != nullptr) acts->push_back(x);
  }
  return x;
}

at::Tensor mlp_backward(const Mlp& mlp, at::Tensor grad, const std::vector<at::Tensor>& acts,
                        std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b) {
  const size_t n = mlp.weights.size();
  grad_w.assign(n, at::Tensor());
  grad_b.assign(n, at::Tensor());
  for (size_t i = n; i-- > 0;) {
    // ReLU's derivative from its output (as PyTorch); out of place: on the first layer
    // visited, grad is the caller's.
    if (i + 1 < n || mlp.relu_last) grad = at::threshold_backward(grad, acts[i + 1], 0);
    grad_w[i] = at::mm(grad.t(), acts[i]);
    grad_b[i] = grad.sum(0);
    grad = at::mm(grad, mlp.weights[i]);
  }
  return grad;
}

void relu_backward_(at::Tensor& grad, const at::Tensor& out) {
  if (!grad.is_contiguous()) grad = grad.contiguous();
  at::threshold_backward_out(grad, grad, out, 0);
}

std::vector<at::Tensor> zeros_like_all(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(at::zeros_like(t));
  return out;
}

}  // namespace ik
