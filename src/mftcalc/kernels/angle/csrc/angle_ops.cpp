// Tensor-level entry points of the fused angle block: input checks, the angle plan, ISA choice, kernel calls.
#include "angle_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "angle_kernels.h"

namespace mftcalc_angle {
namespace {

Dims dims_of(const Inputs& in, int64_t e_dim) {
  const int64_t a = in.angle.size(1);
  return Dims{in.angle.size(0), in.p_ij.size(0), a, e_dim, e_dim + a};
}

Plan plan_of(const PlanTensors& plan, const at::Tensor& a_ik) {
  return Plan{plan.seg_ptr.data_ptr<int64_t>(), plan.chunk_ptr.data_ptr<int64_t>(), a_ik.data_ptr<int64_t>(),
              plan.chunk_ptr.numel() - 1, at::get_num_threads()};
}

bool use_avx2() {
  const char* env = std::getenv("MFTCALC_ANGLE_ISA");
  const std::string choice = env == nullptr ? "auto" : env;
  TORCH_CHECK(choice == "auto" || choice == "default",
              "MFTCALC_ANGLE_ISA must be 'auto' or 'default', got '", choice, "'");
  if (choice == "default") return false;
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has_avx2;
#else
  return false;
#endif
}

void check_shape(const at::Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.sizes().equals(shape), "mftcalc::angle_block: ", name, " must have shape ",
              c10::IntArrayRef(shape), ", got ", t.sizes());
}

}  // namespace

void check_inputs(const Inputs& in, int64_t e_dim, double threshold) {
  TORCH_CHECK(in.angle.dim() == 2, "mftcalc::angle_block: angle must be [A, a], got ", in.angle.sizes());
  TORCH_CHECK(in.p_ij.dim() == 2, "mftcalc::angle_block: p_ij must be [Ea, c], got ", in.p_ij.sizes());
  TORCH_CHECK(e_dim >= 0, "mftcalc::angle_block: e_dim must be >= 0, got ", e_dim);
  TORCH_CHECK(std::isfinite(threshold), "mftcalc::angle_block: threshold must be finite, got ", threshold);
  const int64_t n_angles = in.angle.size(0), a = in.angle.size(1), n_edges = in.p_ij.size(0), c = e_dim + a;
  check_shape(in.p_ij, "p_ij", {n_edges, c});
  check_shape(in.p_ik, "p_ik", {n_edges, c});
  check_shape(in.w, "w", {a, c});
  check_shape(in.b, "b", {c});
  check_shape(in.a_sw, "a_sw", {n_angles});
  check_shape(in.res, "res", {a});
  check_shape(in.a_ij, "a_ij", {n_angles});
  check_shape(in.a_ik, "a_ik", {n_angles});
  const auto dtype = in.angle.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "mftcalc::angle_block: float32 or float64 features expected, got ", dtype);
  const std::pair<const at::Tensor*, const char*> floats[] = {{&in.angle, "angle"}, {&in.p_ij, "p_ij"},
      {&in.p_ik, "p_ik"}, {&in.w, "w"}, {&in.b, "b"}, {&in.a_sw, "a_sw"}, {&in.res, "res"}};
  for (const auto& [t, name] : floats) {
    TORCH_CHECK(t->scalar_type() == dtype, "mftcalc::angle_block: ", name, " has dtype ", t->scalar_type(),
                " but angle has ", dtype);
    TORCH_CHECK(t->device().is_cpu(), "mftcalc::angle_block: the fused op runs on CPU only; ", name, " is on ",
                t->device(), " (use the reference backend)");
  }
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&in.a_ij, "a_ij"}, {&in.a_ik, "a_ik"}}) {
    TORCH_CHECK(t->scalar_type() == at::kLong, "mftcalc::angle_block: ", name, " must be int64, got ",
                t->scalar_type());
    TORCH_CHECK(t->device().is_cpu(), "mftcalc::angle_block: ", name, " must be on CPU, got ", t->device());
  }
}

PlanTensors build_plan(const at::Tensor& a_ij_in, const at::Tensor& a_ik_in, int64_t n_edges) {
  const at::Tensor a_ij_c = a_ij_in.contiguous(), a_ik_c = a_ik_in.contiguous();
  const int64_t* a_ij = a_ij_c.data_ptr<int64_t>();
  const int64_t* a_ik = a_ik_c.data_ptr<int64_t>();
  const int64_t n_angles = a_ij_c.numel();
  at::Tensor seg = at::zeros({n_edges + 1}, at::kLong);
  int64_t* seg_ptr = seg.data_ptr<int64_t>();
  // lo/hi: the smallest and largest angle-edge an edge's angles touch (itself included)
  std::vector<int64_t> lo(n_edges), hi(n_edges);
  for (int64_t p = 0; p < n_edges; ++p) lo[p] = hi[p] = p;
  for (int64_t t = 0; t < n_angles; ++t) {
    const int64_t p = a_ij[t], q = a_ik[t];
    TORCH_CHECK(p >= 0 && p < n_edges, "mftcalc::angle_block: a_ij[", t, "] = ", p, " is out of range [0, ",
                n_edges, ")");
    TORCH_CHECK(q >= 0 && q < n_edges, "mftcalc::angle_block: a_ik[", t, "] = ", q, " is out of range [0, ",
                n_edges, ")");
    TORCH_CHECK(t == 0 || a_ij[t - 1] <= p, "mftcalc::angle_block: a_ij must be sorted ascending (a_ij[", t - 1,
                "] = ", a_ij[t - 1], " > a_ij[", t, "] = ", p, ")");
    ++seg_ptr[p + 1];
    lo[p] = std::min(lo[p], q);
    hi[p] = std::max(hi[p], q);
  }
  for (int64_t p = 0; p < n_edges; ++p) seg_ptr[p + 1] += seg_ptr[p];
  // Chunks: connected components of the overlapping ranges [lo[p], hi[p]], merged on a stack (each holds its p).
  std::vector<std::pair<int64_t, int64_t>> chunks;
  for (int64_t p = 0; p < n_edges; ++p) {
    int64_t l = lo[p], h = hi[p];
    while (!chunks.empty() && chunks.back().second >= l) {
      l = std::min(l, chunks.back().first);
      h = std::max(h, chunks.back().second);
      chunks.pop_back();
    }
    chunks.emplace_back(l, h);
  }
  at::Tensor chunk = at::empty({static_cast<int64_t>(chunks.size()) + 1}, at::kLong);
  int64_t* chunk_ptr = chunk.data_ptr<int64_t>();
  chunk_ptr[0] = 0;
  for (size_t k = 0; k < chunks.size(); ++k) chunk_ptr[k + 1] = chunks[k].second + 1;
  return PlanTensors{seg, chunk};
}

std::vector<at::Tensor> run_forward(const Inputs& in, const PlanTensors& plan, int64_t e_dim, double threshold) {
  const Dims dims = dims_of(in, e_dim);
  const at::Tensor angle = in.angle.contiguous(), p_ij = in.p_ij.contiguous(), p_ik = in.p_ik.contiguous(),
                   w = in.w.contiguous(), b = in.b.contiguous(), a_sw = in.a_sw.contiguous(),
                   res = in.res.contiguous(), a_ik = in.a_ik.contiguous();
  at::Tensor red = at::empty({dims.n_edges, dims.e}, angle.options());
  at::Tensor angle_new = at::empty({dims.n_angles, dims.a}, angle.options());
  const Plan pl = plan_of(plan, a_ik);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(angle.scalar_type(), "mftcalc_angle_forward", [&] {
    using T = scalar_t;
    const ForwardArgs<T> args{angle.data_ptr<T>(), p_ij.data_ptr<T>(), p_ik.data_ptr<T>(), w.data_ptr<T>(),
                              b.data_ptr<T>(), a_sw.data_ptr<T>(), res.data_ptr<T>(), red.data_ptr<T>(),
                              angle_new.data_ptr<T>()};
    (avx2 ? isa_avx2::forward<T> : isa_default::forward<T>)(pl, dims, threshold, args);
  });
  return {red, angle_new};
}

std::vector<at::Tensor> run_backward(const at::Tensor& grad_red_in, const at::Tensor& grad_angle_in,
                                     const Inputs& in, const PlanTensors& plan, int64_t e_dim, double threshold,
                                     bool need_w) {
  const Dims dims = dims_of(in, e_dim);
  const at::Tensor grad_red = grad_red_in.contiguous(), grad_angle = grad_angle_in.contiguous();
  const at::Tensor angle = in.angle.contiguous(), p_ij = in.p_ij.contiguous(), p_ik = in.p_ik.contiguous(),
                   w = in.w.contiguous(), wt = in.w.t().contiguous(), b = in.b.contiguous(),
                   a_sw = in.a_sw.contiguous(), res = in.res.contiguous(), a_ik = in.a_ik.contiguous();
  const auto opts = angle.options();
  at::Tensor g_angle = at::empty({dims.n_angles, dims.a}, opts);
  at::Tensor g_pij = at::empty({dims.n_edges, dims.c}, opts);
  at::Tensor g_pik = at::zeros({dims.n_edges, dims.c}, opts);
  at::Tensor g_w = need_w ? at::empty({dims.a, dims.c}, opts) : at::zeros({dims.a, dims.c}, opts);
  at::Tensor g_asw = at::empty({dims.n_angles}, opts);
  at::Tensor g_res = at::empty({dims.a}, opts);
  const Plan pl = plan_of(plan, a_ik);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(angle.scalar_type(), "mftcalc_angle_backward", [&] {
    using T = scalar_t;
    const BackwardArgs<T> args{grad_red.data_ptr<T>(), grad_angle.data_ptr<T>(), angle.data_ptr<T>(),
                               p_ij.data_ptr<T>(), p_ik.data_ptr<T>(), w.data_ptr<T>(), wt.data_ptr<T>(),
                               b.data_ptr<T>(), a_sw.data_ptr<T>(), res.data_ptr<T>(), g_angle.data_ptr<T>(),
                               g_pij.data_ptr<T>(), g_pik.data_ptr<T>(), need_w ? g_w.data_ptr<T>() : nullptr,
                               g_asw.data_ptr<T>(), g_res.data_ptr<T>()};
    (avx2 ? isa_avx2::backward<T> : isa_default::backward<T>)(pl, dims, threshold, args);
  });
  return {g_angle, g_pij, g_pik, g_w, g_pij.sum(0), g_asw, g_res};
}

std::vector<at::Tensor> run_double_backward(const at::Tensor& grad_red_in, const at::Tensor& grad_angle_in,
                                            const Inputs& in, const std::vector<at::Tensor>& gg,
                                            const PlanTensors& plan, int64_t e_dim, double threshold) {
  TORCH_CHECK(gg.size() == kNumFloatInputs, "mftcalc::angle_block: double backward expects ", kNumFloatInputs,
              " incoming gradients, got ", gg.size());
  const Dims dims = dims_of(in, e_dim);
  const at::Tensor grad_red = grad_red_in.contiguous(), grad_angle = grad_angle_in.contiguous();
  const at::Tensor angle = in.angle.contiguous(), p_ij = in.p_ij.contiguous(), p_ik = in.p_ik.contiguous(),
                   w = in.w.contiguous(), wt = in.w.t().contiguous(), b = in.b.contiguous(),
                   a_sw = in.a_sw.contiguous(), res = in.res.contiguous(), a_ik = in.a_ik.contiguous();
  const at::Tensor gg_angle = gg[0].contiguous(), gg_pij = gg[1].contiguous(), gg_pik = gg[2].contiguous(),
                   gg_w = gg[3].contiguous(), gg_wt = gg[3].t().contiguous(), gg_b = gg[4].contiguous(),
                   gg_asw = gg[5].contiguous(), gg_res = gg[6].contiguous();
  const auto opts = angle.options();
  at::Tensor d_grad_red = at::empty({dims.n_edges, dims.e}, opts);
  at::Tensor d_grad_angle = at::empty({dims.n_angles, dims.a}, opts);
  at::Tensor d_angle = at::empty({dims.n_angles, dims.a}, opts);
  at::Tensor d_pij = at::empty({dims.n_edges, dims.c}, opts);
  at::Tensor d_pik = at::zeros({dims.n_edges, dims.c}, opts);
  at::Tensor d_w = at::empty({dims.a, dims.c}, opts);
  at::Tensor d_asw = at::empty({dims.n_angles}, opts);
  at::Tensor d_res = at::empty({dims.a}, opts);
  const Plan pl = plan_of(plan, a_ik);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(angle.scalar_type(), "mftcalc_angle_double_backward", [&] {
    using T = scalar_t;
    const DoubleBackwardArgs<T> args{
        grad_red.data_ptr<T>(), grad_angle.data_ptr<T>(), angle.data_ptr<T>(), p_ij.data_ptr<T>(),
        p_ik.data_ptr<T>(), w.data_ptr<T>(), wt.data_ptr<T>(), b.data_ptr<T>(), a_sw.data_ptr<T>(),
        res.data_ptr<T>(), gg_angle.data_ptr<T>(), gg_pij.data_ptr<T>(), gg_pik.data_ptr<T>(),
        gg_w.data_ptr<T>(), gg_wt.data_ptr<T>(), gg_b.data_ptr<T>(), gg_asw.data_ptr<T>(), gg_res.data_ptr<T>(),
        d_grad_red.data_ptr<T>(), d_grad_angle.data_ptr<T>(), d_angle.data_ptr<T>(), d_pij.data_ptr<T>(),
        d_pik.data_ptr<T>(), d_w.data_ptr<T>(), d_asw.data_ptr<T>(), d_res.data_ptr<T>()};
    (avx2 ? isa_avx2::double_backward<T> : isa_default::double_backward<T>)(pl, dims, threshold, args);
  });
  return {d_grad_red, d_grad_angle, d_angle, d_pij, d_pik, d_w, d_pij.sum(0), d_asw, d_res};
}

std::string isa_in_use() { return use_avx2() ? "avx2" : "default"; }

}  // namespace mftcalc_angle
