// Raw-pointer interface of the fused angle-block loops (forward, backward, double backward), one set per ISA.
//
// Shapes: A angles, Ea angle-edges, a angle channels, e = e_dim reduced channels, c = e + a.
// All arrays are dense row-major; the angles of angle-edge p are seg_ptr[p] .. seg_ptr[p + 1] (a_ij sorted) and
// every angle of a chunk's edges has its a_ik inside the same chunk, so one thread owns every row it writes.
#pragma once

#include <cstdint>

namespace mftcalc_angle {

struct Plan {
  const int64_t* seg_ptr;    // [Ea + 1]
  const int64_t* chunk_ptr;  // [n_chunks + 1] edge ranges closed under a_ik
  const int64_t* a_ik;       // [A]
  int64_t n_chunks;
  int n_threads;
};

struct Dims {
  int64_t n_angles, n_edges, a, e, c;
};

template <typename T>
struct ForwardArgs {
  const T *angle, *p_ij, *p_ik, *w, *b, *a_sw, *res;  // [A,a] [Ea,c] [Ea,c] [a,c] [c] [A] [a]
  T *red, *angle_new;                                   // [Ea,e] [A,a]
};

// Gradients of (red, angle_new) given their incoming gradients; g_b is the column sum of g_pij.
template <typename T>
struct BackwardArgs {
  const T *grad_red, *grad_angle;                            // [Ea,e] [A,a]
  const T *angle, *p_ij, *p_ik, *w, *wt, *b, *a_sw, *res;    // wt = w^T [c,a]
  T *g_angle, *g_pij, *g_pik, *g_w, *g_asw, *g_res;         // [A,a] [Ea,c] [Ea,c] (zeroed) [a,c] [A] [a]
                                                             // g_w nullptr: not computed (a third of the work)
};

// Gradients of <gg, backward outputs> w.r.t. the backward's inputs; d_b is the column sum of d_pij.
template <typename T>
struct DoubleBackwardArgs {
  const T *grad_red, *grad_angle;
  const T *angle, *p_ij, *p_ik, *w, *wt, *b, *a_sw, *res;
  const T *gg_angle, *gg_pij, *gg_pik, *gg_w, *gg_wt, *gg_b, *gg_asw, *gg_res;  // like the backward outputs
  T *d_grad_red, *d_grad_angle, *d_angle, *d_pij, *d_pik, *d_w, *d_asw, *d_res;  // d_pik zeroed
};

#define MFTCALC_ANGLE_DECLARE_ISA(ns)                                                                  \
  namespace ns {                                                                                       \
  template <typename T>                                                                                \
  void forward(const Plan& plan, const Dims& dims, double threshold, const ForwardArgs<T>& args);        \
  template <typename T>                                                                                \
  void backward(const Plan& plan, const Dims& dims, double threshold, const BackwardArgs<T>& args);      \
  template <typename T>                                                                                \
  void double_backward(const Plan& plan, const Dims& dims, double threshold,                            \
                       const DoubleBackwardArgs<T>& args);                                              \
  }

MFTCALC_ANGLE_DECLARE_ISA(isa_default)
MFTCALC_ANGLE_DECLARE_ISA(isa_avx2)

}  // namespace mftcalc_angle
