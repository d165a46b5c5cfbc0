// Autograd of the fused angle block (forward, differentiable backward, double backward) and the torch.ops
// registration of `torch.ops.mftcalc.angle_block` (callable from TorchScript once this library is loaded).
//
//   AngleBlockFn           forward kernel;            backward = AngleBlockBackwardFn (so create_graph works)
//   AngleBlockBackwardFn   fused backward kernel;     backward = DoubleBackwardFn
//   DoubleBackwardFn       fused double-backward kernel; its own backward raises (no third derivatives)
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "angle_ops.h"

namespace mftcalc_angle {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

constexpr int kNumInputs = 9;  // angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik

Inputs inputs_from(const variable_list& v, size_t offset) {
  return Inputs{v[offset], v[offset + 1], v[offset + 2], v[offset + 3], v[offset + 4],
                v[offset + 5], v[offset + 6], v[offset + 7], v[offset + 8]};
}

variable_list undefined(size_t n) { return variable_list(n); }

// inputs: grad_red, grad_angle, the 9 op inputs, seg_ptr, chunk_ptr, then the 7 incoming gradients gg.
class DoubleBackwardFn : public Function<DoubleBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, int64_t e_dim, double threshold) {
    const variable_list v(inputs.begin(), inputs.end());
    const std::vector<Tensor> gg(v.begin() + 2 + kNumInputs + 2, v.end());
    return run_double_backward(v[0], v[1], inputs_from(v, 2), gg,
                               PlanTensors{v[2 + kNumInputs], v[3 + kNumInputs]}, e_dim, threshold);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(false, "mftcalc::angle_block: third derivatives are not implemented "
                       "(differentiate at most twice, e.g. forces in the loss)");
    return {};
  }
};

// inputs: grad_red, grad_angle, the 9 op inputs, seg_ptr, chunk_ptr.
// outputs: gradients w.r.t. angle, p_ij, p_ik, w, b, a_sw, res (w's left at zero unless need_w: a force
// computation, autograd.grad of the energy w.r.t. positions, asks for no weight gradient).
class AngleBlockBackwardFn : public Function<AngleBlockBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, int64_t e_dim, double threshold,
                               bool need_w) {
    const variable_list v(inputs.begin(), inputs.end());
    ctx->save_for_backward(v);
    ctx->saved_data["e_dim"] = e_dim;
    ctx->saved_data["threshold"] = threshold;
    ctx->saved_data["need_w"] = need_w;
    return run_backward(v[0], v[1], inputs_from(v, 2), PlanTensors{v[2 + kNumInputs], v[3 + kNumInputs]},
                        e_dim, threshold, need_w);
  }

  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    variable_list all = ctx->get_saved_variables();
    const size_t n_saved = all.size();
    // the w-gradient output was not computed: nothing downstream can have used it
    if (!ctx->saved_data["need_w"].toBool() && gg[3].defined()) gg[3] = at::zeros_like(gg[3]);
    all.insert(all.end(), gg.begin(), gg.end());
    const variable_list d = DoubleBackwardFn::apply(at::TensorList(all), ctx->saved_data["e_dim"].toInt(),
                                                    ctx->saved_data["threshold"].toDouble());
    // d: grad_red, grad_angle, angle, p_ij, p_ik, w, b, a_sw, res
    variable_list out = undefined(n_saved + 3);  // + e_dim, threshold, need_w
    for (size_t k = 0; k < 2 + kNumFloatInputs; ++k) out[k] = d[k];
    return out;
  }
};

// inputs: the 9 op inputs. outputs: red, angle_new.
class AngleBlockFn : public Function<AngleBlockFn> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, int64_t e_dim, double threshold) {
    const variable_list v(inputs.begin(), inputs.end());
    const Inputs in = inputs_from(v, 0);
    const PlanTensors plan = build_plan(in.a_ij, in.a_ik, in.p_ij.size(0));
    ctx->save_for_backward(v);
    ctx->set_materialize_grads(false);  // an unused output: no gradient for a_sw (red) or res (angle_new)
    ctx->saved_data["seg_ptr"] = plan.seg_ptr;
    ctx->saved_data["chunk_ptr"] = plan.chunk_ptr;
    ctx->saved_data["e_dim"] = e_dim;
    ctx->saved_data["threshold"] = threshold;
    return run_forward(in, plan, e_dim, threshold);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool red_used = grads[0].defined(), angle_used = grads[1].defined();
    const Tensor& angle = saved[0];
    variable_list all{red_used ? grads[0] : at::zeros({saved[1].size(0), ctx->saved_data["e_dim"].toInt()},
                                                      angle.options()),
                      angle_used ? grads[1] : at::zeros_like(angle)};
    all.insert(all.end(), saved.begin(), saved.end());
    // a_sw (res) meets the second derivatives only through grad_red (grad_angle): cut it when that is zero
    if (!red_used) all[2 + 5] = all[2 + 5].detach();
    if (!angle_used) all[2 + 6] = all[2 + 6].detach();
    all.push_back(ctx->saved_data["seg_ptr"].toTensor());
    all.push_back(ctx->saved_data["chunk_ptr"].toTensor());
    const variable_list g = AngleBlockBackwardFn::apply(at::TensorList(all), ctx->saved_data["e_dim"].toInt(),
                                                        ctx->saved_data["threshold"].toDouble(),
                                                        ctx->needs_input_grad(3));
    variable_list out = undefined(kNumInputs + 2);
    for (size_t k = 0; k < kNumFloatInputs; ++k) out[k] = g[k];
    if (!red_used) out[5].reset();    // a_sw only reaches red
    if (!angle_used) out[6].reset();  // res only reaches angle_new
    return out;
  }
};

std::tuple<Tensor, Tensor> angle_block(const Tensor& angle, const Tensor& p_ij, const Tensor& p_ik,
                                       const Tensor& w, const Tensor& b, const Tensor& a_sw, const Tensor& res,
                                       const Tensor& a_ij, const Tensor& a_ik, int64_t e_dim, double threshold) {
  check_inputs(Inputs{angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik}, e_dim, threshold);
  const std::vector<Tensor> in{angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik};
  const variable_list out = AngleBlockFn::apply(at::TensorList(in), e_dim, threshold);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace mftcalc_angle

// A fragment, not TORCH_LIBRARY: the mftcalc namespace is shared with other kernels (e.g. the neighbour list).
TORCH_LIBRARY_FRAGMENT(mftcalc, m) {
  m.def("angle_block(Tensor angle, Tensor p_ij, Tensor p_ik, Tensor w, Tensor b, Tensor a_sw, Tensor res, "
        "Tensor a_ij, Tensor a_ik, int e_dim, float threshold) -> (Tensor, Tensor)",
        &mftcalc_angle::angle_block);
  m.def("angle_block_isa() -> str", &mftcalc_angle::isa_in_use);
}
