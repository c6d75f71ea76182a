// Autograd of the HIIF operators a decode with gradients calls on every chunk, in C++:
// hiif_level0 (its backward: hiif_level0_backward) and the cpu backend's _train operators
// (hiif_attention_stats_train, hiif_attention_apply_train, hiif_levels_train).  Each
// forward runs its operator below autograd and keeps its inputs, and a _train operator its
// record (the activations the backward reads; outputs that are not differentiable); the
// backward calls the matching _backward or _backward_saved operator.  Registered from Python
// (torch.library.register_autograd) the same autograd cost ~0.14 ms a call forward and about as
// much backward: what a decode of a few hundred queries spends on an operator's work.  The fake
// implementations stay in Python (implicit_kernels/ops/hiif.py).
#include <torch/autograd.h>

#include <string>
#include <tuple>
#include <vector>

#include "library.h"

namespace ik {
namespace hiif {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensors = std::vector<at::Tensor>;

#define IK_STRINGIZE(x) #x
#define IK_OPERATOR_NAME(ns, name) IK_STRINGIZE(ns) "::" name

// The operator `name` of this library (its namespace: library.h), typed by its signature,
// called through the dispatcher so profilers and tests see it.
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Saves `inputs` and `record` for the backward (the record is not differentiable, and
// unused outputs get no zero gradients) and returns the Function's outputs: `out`, then
// the record.
variable_list keep(AutogradContext* ctx, const Tensors& inputs, const at::Tensor& out,
                   const Tensors& record) {
  Tensors saved = inputs;
  saved.insert(saved.end(), record.begin(), record.end());
  ctx->save_for_backward(saved);
  ctx->saved_data["inputs"] = static_cast<int64_t>(inputs.size());
  ctx->mark_non_differentiable(record);
  ctx->set_materialize_grads(false);
  variable_list outputs = {out};
  outputs.insert(outputs.end(), record.begin(), record.end());
  return outputs;
}

// The saved inputs and record of `keep`.
std::pair<Tensors, Tensors> kept(AutogradContext* ctx) {
  const Tensors saved = ctx->get_saved_variables();
  const auto split = saved.begin() + ctx->saved_data["inputs"].toInt();
  return {Tensors(saved.begin(), split), Tensors(split, saved.end())};
}

using Level0Grads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

class Level0 : public torch::autograd::Function<Level0> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& maps,
                            const at::Tensor& row_sums, const at::Tensor& w_extra,
                            const at::Tensor& bias, const at::Tensor& fc2_w,
                            const at::Tensor& fc2_b, const at::Tensor& coord,
                            const at::Tensor& cell, int64_t channels, bool public_centres) {
    static const auto op = typed_op<at::Tensor(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool)>(
        IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_level0"));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell});
    ctx->saved_data["channels"] = channels;
    ctx->saved_data["public_centres"] = public_centres;
    ctx->set_materialize_grads(false);
    return op.call(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels,
                   public_centres);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<Level0Grads(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, int64_t, bool)>(IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_level0_backward"));
    // Gradients of the six parameters; positions and options get none.
    variable_list out(10);
    if (!grads[0].defined()) return out;
    const Tensors in = ctx->get_saved_variables();
    const Level0Grads g =
        op.call(grads[0], in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7],
                ctx->saved_data["channels"].toInt(), ctx->saved_data["public_centres"].toBool());
    out[0] = std::get<0>(g);
    out[1] = std::get<1>(g);
    out[2] = std::get<2>(g);
    out[3] = std::get<3>(g);
    out[4] = std::get<4>(g);
    out[5] = std::get<5>(g);
    return out;
  }
};

at::Tensor level0(const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
                  const at::Tensor& bias, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
                  const at::Tensor& coord, const at::Tensor& cell, int64_t channels,
                  bool public_centres) {
  return Level0::apply(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels,
                       public_centres);
}

using StatsGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

class StatsTrain : public torch::autograd::Function<StatsTrain> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& qkv_w,
                               const at::Tensor& qkv_b, const at::Tensor& kln_w,
                               const at::Tensor& kln_b, const at::Tensor& vln_w,
                               const at::Tensor& vln_b, int64_t heads) {
    static const auto op = typed_op<std::tuple<at::Tensor, Tensors>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>(
        IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_attention_stats_train"));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto result = op.call(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads);
    ctx->saved_data["heads"] = heads;
    return keep(ctx, {x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b}, std::get<0>(result),
                std::get<1>(result));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<StatsGrads(
        const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>(
        IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_attention_stats_backward_saved"));
    if (!grads[0].defined()) return variable_list(8);
    const auto [in, record] = kept(ctx);
    const StatsGrads g = op.call(grads[0], record, in[0], in[1], in[2], in[3], in[4], in[5], in[6],
                                 ctx->saved_data["heads"].toInt());
    return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g),
            std::get<4>(g), std::get<5>(g), std::get<6>(g), at::Tensor()};
  }
};

std::tuple<at::Tensor, Tensors> stats_train(const at::Tensor& x, const at::Tensor& qkv_w,
                                            const at::Tensor& qkv_b, const at::Tensor& kln_w,
                                            const at::Tensor& kln_b, const at::Tensor& vln_w,
                                            const at::Tensor& vln_b, int64_t heads) {
  const variable_list out = StatsTrain::apply(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads);
  return {out[0], Tensors(out.begin() + 1, out.end())};
}

using ApplyGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor>;

class ApplyTrain : public torch::autograd::Function<ApplyTrain> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mat,
                               const at::Tensor& qkv_w, const at::Tensor& qkv_b,
                               const at::Tensor& proj1_w, const at::Tensor& proj1_b,
                               const at::Tensor& proj2_w, const at::Tensor& proj2_b) {
    static const auto op = typed_op<std::tuple<at::Tensor, Tensors>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_attention_apply_train"));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto result = op.call(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
    return keep(ctx, {x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b},
                std::get<0>(result), std::get<1>(result));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        typed_op<ApplyGrads(const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
            IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_attention_apply_backward_saved"));
    if (!grads[0].defined()) return variable_list(8);
    const auto [in, record] = kept(ctx);
    const ApplyGrads g =
        op.call(grads[0], record, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7]);
    return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g),
            std::get<4>(g), std::get<5>(g), std::get<6>(g), std::get<7>(g)};
  }
};

std::tuple<at::Tensor, Tensors> apply_train(const at::Tensor& x, const at::Tensor& mat,
                                            const at::Tensor& qkv_w, const at::Tensor& qkv_b,
                                            const at::Tensor& proj1_w, const at::Tensor& proj1_b,
                                            const at::Tensor& proj2_w, const at::Tensor& proj2_b) {
  const variable_list out =
      ApplyTrain::apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
  return {out[0], Tensors(out.begin() + 1, out.end())};
}

using LevelGrads = std::tuple<at::Tensor, Tensors, Tensors, Tensors, Tensors, Tensors, Tensors>;

// Levels 1..L-1: the inputs x, coord, then the six lists of L - 1 parameters (norm weight
// and bias, fc1 weight and bias, fc2 weight and bias) and h, w, public_centres.
class LevelsTrain : public torch::autograd::Function<LevelsTrain> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& coord,
                               at::TensorList norm_w, at::TensorList norm_b, at::TensorList fc1_w,
                               at::TensorList fc1_b, at::TensorList fc2_w, at::TensorList fc2_b,
                               int64_t h, int64_t w, bool public_centres) {
    static const auto op = typed_op<std::tuple<at::Tensor, Tensors>(
        const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
        at::TensorList, at::TensorList, at::TensorList, int64_t, int64_t, bool)>(
        IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_levels_train"));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto result =
        op.call(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, public_centres);
    Tensors inputs = {x, coord};
    for (at::TensorList list : {norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b}) {
      inputs.insert(inputs.end(), list.begin(), list.end());
    }
    ctx->saved_data["h"] = h;
    ctx->saved_data["w"] = w;
    ctx->saved_data["public_centres"] = public_centres;
    return keep(ctx, inputs, std::get<0>(result), std::get<1>(result));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        typed_op<LevelGrads(const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&,
                            at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                            at::TensorList, at::TensorList, int64_t, int64_t, bool)>(
            IK_OPERATOR_NAME(IK_NAMESPACE, "hiif_levels_backward_saved"));
    const auto [in, record] = kept(ctx);
    const size_t count = (in.size() - 2) / 6;  // levels 1..L-1
    // One gradient per tensor (x, coord, each list's tensors) and per other argument.
    variable_list out(in.size() + 3);
    if (!grads[0].defined()) return out;
    std::vector<at::TensorList> lists;
    for (size_t i = 0; i < 6; ++i) lists.push_back(at::TensorList(in).slice(2 + i * count, count));
    const LevelGrads g =
        op.call(grads[0], record, in[0], in[1], lists[0], lists[1], lists[2], lists[3], lists[4],
                lists[5], ctx->saved_data["h"].toInt(), ctx->saved_data["w"].toInt(),
                ctx->saved_data["public_centres"].toBool());
    out[0] = std::get<0>(g);  // coord's stays undefined: positions are not differentiated
    const Tensors* per_list[] = {&std::get<1>(g), &std::get<2>(g), &std::get<3>(g),
                                 &std::get<4>(g), &std::get<5>(g), &std::get<6>(g)};
    for (size_t i = 0; i < 6; ++i) {
      std::copy(per_list[i]->begin(), per_list[i]->end(), out.begin() + 2 + i * count);
    }
    return out;
  }
};

std::tuple<at::Tensor, Tensors> levels_train(const at::Tensor& x, const at::Tensor& coord,
                                             at::TensorList norm_w, at::TensorList norm_b,
                                             at::TensorList fc1_w, at::TensorList fc1_b,
                                             at::TensorList fc2_w, at::TensorList fc2_b, int64_t h,
                                             int64_t w, bool public_centres) {
  const variable_list out = LevelsTrain::apply(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b,
                                               h, w, public_centres);
  return {out[0], Tensors(out.begin() + 1, out.end())};
}

}  // namespace

IK_LIBRARY_IMPL(Autograd, m) {
  m.impl("hiif_level0", &level0);
  m.impl("hiif_attention_stats_train", &stats_train);
  m.impl("hiif_attention_apply_train", &apply_train);
  m.impl("hiif_levels_train", &levels_train);
}

}  // namespace hiif
}  // namespace ik
