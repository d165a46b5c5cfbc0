// Tensor-level entry points of the fused angle block: input checks, the angle plan, ISA choice, kernel calls.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace mftcalc_angle {

// The op's tensor inputs, in schema order (any strides; the runners make them contiguous).
struct Inputs {
  at::Tensor angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik;
};

// Segment pointers of the sorted a_ij ([Ea + 1]) and edge ranges closed under a_ik ([n_chunks + 1]), int64.
struct PlanTensors {
  at::Tensor seg_ptr, chunk_ptr;
};

// Gradients w.r.t. the float inputs, in the order angle, p_ij, p_ik, w, b, a_sw, res.
constexpr int kNumFloatInputs = 7;

// Shapes, dtypes, devices and e_dim/threshold; raises c10::Error with a readable message.
void check_inputs(const Inputs& in, int64_t e_dim, double threshold);

// Validates a_ij (sorted, in range) and a_ik (in range) and builds the plan; O(A + Ea), serial.
PlanTensors build_plan(const at::Tensor& a_ij, const at::Tensor& a_ik, int64_t n_edges);

// {red [Ea, e], angle_new [A, a]}.
std::vector<at::Tensor> run_forward(const Inputs& in, const PlanTensors& plan, int64_t e_dim, double threshold);

// Gradients of the forward w.r.t. the 7 float inputs, given grad_red [Ea, e] and grad_angle [A, a]; with
// need_w false the gradient w.r.t. w is left at zero (not computed: forces need no weight gradient).
std::vector<at::Tensor> run_backward(const at::Tensor& grad_red, const at::Tensor& grad_angle, const Inputs& in,
                                     const PlanTensors& plan, int64_t e_dim, double threshold, bool need_w = true);

// Gradients of <gg, run_backward(...)> w.r.t. (grad_red, grad_angle, angle, p_ij, p_ik, w, b, a_sw, res);
// gg holds the 7 incoming gradients of the backward's outputs.
std::vector<at::Tensor> run_double_backward(const at::Tensor& grad_red, const at::Tensor& grad_angle,
                                            const Inputs& in, const std::vector<at::Tensor>& gg,
                                            const PlanTensors& plan, int64_t e_dim, double threshold);

// "avx2" or "default": the loops the next call will use (MFTCALC_ANGLE_ISA=default forces the portable ones).
std::string isa_in_use();

}  // namespace mftcalc_angle
