// The fused angle-block loops; included once per ISA with MFTCALC_ANGLE_ISA naming the namespace and
// MFTCALC_ANGLE_VECTOR_BYTES the register width.
//
// Per angle t of edge p = a_ij[t], q = a_ik[t]:  z = angle[t] W + b + p_ij[p] + p_ik[q],  x = silut(z),
//   red[p] += a_sw[t] x[:e],  angle_new[t] = angle[t] + res x[e:].
// Nothing of size [A, c] is stored: each pass recomputes z for one angle in a c-long scratch row; the backward
// passes keep dL/dz rows only for the angles of the current angle-edge (~m rows) to form the weight gradient.
// Work is split over chunks of angle-edges (static schedule: fixed summation order for a fixed thread count);
// per-thread sums of the small weight gradients are kept in double and added up in thread order.
//
// The including file must include the standard headers below before any `#pragma GCC target`.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "angle_kernels.h"
#include "silut.h"

#if !defined(MFTCALC_ANGLE_ISA) || !defined(MFTCALC_ANGLE_VECTOR_BYTES)
#error "define MFTCALC_ANGLE_ISA and MFTCALC_ANGLE_VECTOR_BYTES before including angle_kernels_impl.h"
#endif

namespace mftcalc_angle {
namespace MFTCALC_ANGLE_ISA {
namespace {

constexpr int64_t kChunksPerGrab = 8;        // static schedule granularity (chunks ≈ centre atoms)
constexpr int64_t kMinAnglesParallel = 4096;  // below this one thread is faster

inline int team_size(const Plan& plan, const Dims& dims) {
  return dims.n_angles >= kMinAnglesParallel ? std::max(plan.n_threads, 1) : 1;
}

// Fixed-width vectors (GCC vector extensions) of MFTCALC_ANGLE_VECTOR_BYTES: one register of the target ISA.
typedef float vfloat __attribute__((vector_size(MFTCALC_ANGLE_VECTOR_BYTES)));
typedef double vdouble __attribute__((vector_size(MFTCALC_ANGLE_VECTOR_BYTES)));
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = vfloat;
};
template <>
struct VecOf<double> {
  using type = vdouble;
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kWidth = MFTCALC_ANGLE_VECTOR_BYTES / sizeof(T);

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void vstore(T* p, const Vec<T>& v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// The small matrix products below share one pattern: an output row is split into blocks of NV vectors (4, 2, 1,
// then single columns), and each block is a sum over r of a scalar s[r] times a row slice m[r, block], held in
// NV * P registers (P interleaved partial sums, so that about 8 independent FMA chains hide the FMA latency).

// acc[v] += sum_{r < n} s[r * s_stride] * m[r * m_stride + v * W]  for v < NV
template <typename T, int NV>
inline void accumulate_cols(const T* __restrict__ s, int64_t s_stride, const T* __restrict__ m, int64_t m_stride,
                            int64_t n, Vec<T>* __restrict__ acc) {
  constexpr int64_t W = kWidth<T>;
  constexpr int P = NV >= 8 ? 1 : 8 / NV;
  Vec<T> part[P][NV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) part[p][v] = Vec<T>{};
  int64_t r = 0;
  for (; r + P <= n; r += P) {
    for (int p = 0; p < P; ++p) {
      const T sr = s[(r + p) * s_stride];
      for (int v = 0; v < NV; ++v) part[p][v] += sr * vload(m + (r + p) * m_stride + v * W);
    }
  }
  for (; r < n; ++r) {
    const T sr = s[r * s_stride];
    for (int v = 0; v < NV; ++v) part[0][v] += sr * vload(m + r * m_stride + v * W);
  }
  for (int v = 0; v < NV; ++v)
    for (int p = 0; p < P; ++p) acc[v] += part[p][v];
}

// Scalar tail of accumulate_cols: sum_{r < n} s[r * s_stride] * m[r * m_stride].
template <typename T>
inline T accumulate_col(const T* __restrict__ s, int64_t s_stride, const T* __restrict__ m, int64_t m_stride,
                        int64_t n) {
  T sum = T(0);
  for (int64_t r = 0; r < n; ++r) sum += s[r * s_stride] * m[r * m_stride];
  return sum;
}

// Calls block(NV, j0) for column blocks of NV vectors covering [0, n_cols) as far as they fit, then column(j).
template <typename T, typename Block, typename Column>
inline void for_column_blocks(int64_t n_cols, Block&& block, Column&& column) {
  constexpr int64_t W = kWidth<T>;
  int64_t j0 = 0;
  for (; j0 + 4 * W <= n_cols; j0 += 4 * W) block(std::integral_constant<int, 4>{}, j0);
  for (; j0 + 2 * W <= n_cols; j0 += 2 * W) block(std::integral_constant<int, 2>{}, j0);
  for (; j0 + W <= n_cols; j0 += W) block(std::integral_constant<int, 1>{}, j0);
  for (; j0 < n_cols; ++j0) column(j0);
}

// z[j] = base[j] + row[j] + sum_k x[k] W[k, j]  (+ sum_k x2[k] W2[k, j] if x2);  x [a], W [a, c]
template <typename T>
inline void affine_row2(const T* base, const T* row, const T* x, const T* w, const T* x2, const T* w2, int64_t a,
                        int64_t c, T* z) {
  constexpr int64_t W = kWidth<T>;
  for_column_blocks<T>(
      c,
      [&](auto nv, int64_t j0) {
        constexpr int NV = decltype(nv)::value;
        Vec<T> acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = vload(base + j0 + v * W) + vload(row + j0 + v * W);
        accumulate_cols<T, NV>(x, 1, w + j0, c, a, acc);
        if (x2 != nullptr) accumulate_cols<T, NV>(x2, 1, w2 + j0, c, a, acc);
        for (int v = 0; v < NV; ++v) vstore(z + j0 + v * W, acc[v]);
      },
      [&](int64_t j) {
        z[j] = base[j] + row[j] + accumulate_col(x, 1, w + j, c, a) +
               (x2 != nullptr ? accumulate_col(x2, 1, w2 + j, c, a) : T(0));
      });
}

template <typename T>
inline void affine_row(const T* base, const T* row, const T* x, const T* w, int64_t a, int64_t c, T* z) {
  affine_row2<T>(base, row, x, w, nullptr, nullptr, a, c, z);
}

// out[k] += sum_j g[j] Wt[j, k]  (+ sum_j g2[j] Wt2[j, k] if g2);  g [c], Wt [c, a]
template <typename T>
inline void add_transposed2(const T* g, const T* wt, const T* g2, const T* wt2, int64_t a, int64_t c, T* out) {
  constexpr int64_t W = kWidth<T>;
  for_column_blocks<T>(
      a,
      [&](auto nv, int64_t k0) {
        constexpr int NV = decltype(nv)::value;
        Vec<T> acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = vload(out + k0 + v * W);
        accumulate_cols<T, NV>(g, 1, wt + k0, a, c, acc);
        if (g2 != nullptr) accumulate_cols<T, NV>(g2, 1, wt2 + k0, a, c, acc);
        for (int v = 0; v < NV; ++v) vstore(out + k0 + v * W, acc[v]);
      },
      [&](int64_t k) {
        out[k] += accumulate_col(g, 1, wt + k, a, c) + (g2 != nullptr ? accumulate_col(g2, 1, wt2 + k, a, c) : T(0));
      });
}

template <typename T>
inline void add_transposed(const T* g, const T* wt, int64_t a, int64_t c, T* out) {
  add_transposed2<T>(g, wt, nullptr, nullptr, a, c, out);
}

// acc[k, j] += sum_t x[t, k] g[t, j]  (+ sum_t x2[t, k] g2[t, j] if x2) over the n angles of one segment;
// x [n, a] (rows of the angle arrays), g [n, c] (the segment's buffered rows); acc [a, c].
template <typename T>
inline void add_segment_outer2(const T* x, const T* g, const T* x2, const T* g2, int64_t n, int64_t a, int64_t c,
                               T* acc) {
  constexpr int64_t W = kWidth<T>;
  for (int64_t k = 0; k < a; ++k) {
    T* acc_k = acc + k * c;
    for_column_blocks<T>(
        c,
        [&](auto nv, int64_t j0) {
          constexpr int NV = decltype(nv)::value;
          Vec<T> sum[NV];
          for (int v = 0; v < NV; ++v) sum[v] = vload(acc_k + j0 + v * W);
          accumulate_cols<T, NV>(x + k, a, g + j0, c, n, sum);
          if (x2 != nullptr) accumulate_cols<T, NV>(x2 + k, a, g2 + j0, c, n, sum);
          for (int v = 0; v < NV; ++v) vstore(acc_k + j0 + v * W, sum[v]);
        },
        [&](int64_t j) {
          acc_k[j] += accumulate_col(x + k, a, g + j, c, n) +
                      (x2 != nullptr ? accumulate_col(x2 + k, a, g2 + j, c, n) : T(0));
        });
  }
}

template <typename T>
inline void add_segment_outer(const T* x, const T* g, int64_t n, int64_t a, int64_t c, T* acc) {
  add_segment_outer2<T>(x, g, nullptr, nullptr, n, a, c, acc);
}

// out = u + v  (n)
template <typename T>
inline void add_rows(const T* __restrict__ u, const T* __restrict__ v, int64_t n, T* __restrict__ out) {
  for (int64_t j = 0; j < n; ++j) out[j] = u[j] + v[j];
}

// Largest number of angles of one angle-edge (rows of the backward's segment buffers).
inline int64_t longest_segment(const Plan& plan, int64_t n_edges) {
  int64_t longest = 0;
  for (int64_t p = 0; p < n_edges; ++p) longest = std::max(longest, plan.seg_ptr[p + 1] - plan.seg_ptr[p]);
  return longest;
}

// out += v  (n)
template <typename T>
inline void add_to(const T* __restrict__ v, int64_t n, T* __restrict__ out) {
  for (int64_t j = 0; j < n; ++j) out[j] += v[j];
}

// Per-thread double sums of a small vector, added up in thread order at the end.
class ThreadSums {
 public:
  ThreadSums(int n_threads, int64_t len) : len_(len), data_(static_cast<size_t>(n_threads * len), 0.0) {}
  template <typename T>
  void flush(int tid, T* __restrict__ chunk_sum) {  // adds and zeroes one chunk's partial sum
    double* __restrict__ d = data_.data() + tid * len_;
    for (int64_t j = 0; j < len_; ++j) {
      d[j] += static_cast<double>(chunk_sum[j]);
      chunk_sum[j] = T(0);
    }
  }
  template <typename T>
  void reduce_into(int n_threads, T* __restrict__ out0, int64_t len0, T* __restrict__ out1) const {
    for (int64_t j = 0; j < len_; ++j) {
      double s = 0.0;
      for (int t = 0; t < n_threads; ++t) s += data_[t * len_ + j];
      if (j >= len0) out1[j - len0] = static_cast<T>(s);
      else if (out0 != nullptr) out0[j] = static_cast<T>(s);
    }
  }

 private:
  int64_t len_;
  std::vector<double> data_;
};

}  // namespace

template <typename T>
void forward(const Plan& plan, const Dims& dims, double threshold, const ForwardArgs<T>& args) {
  const Silut<T> act_shared(threshold);
  const int64_t a = dims.a, e = dims.e, c = dims.c;
  const int n_threads = team_size(plan, dims);
#pragma omp parallel num_threads(n_threads)
  {
    const Silut<T> act = act_shared;
    const T* __restrict__ angle = args.angle;
    const T* __restrict__ p_ij = args.p_ij;
    const T* __restrict__ p_ik = args.p_ik;
    const T* __restrict__ w = args.w;
    const T* __restrict__ b = args.b;
    const T* __restrict__ a_sw = args.a_sw;
    const T* __restrict__ res = args.res;
    T* __restrict__ red = args.red;
    T* __restrict__ angle_new = args.angle_new;
    std::vector<T> scratch(2 * c + e);
    T* __restrict__ base = scratch.data();
    T* __restrict__ z = base + c;
    T* __restrict__ red_row = z + c;
#pragma omp for schedule(static, kChunksPerGrab)
    for (int64_t ch = 0; ch < plan.n_chunks; ++ch) {
      for (int64_t p = plan.chunk_ptr[ch]; p < plan.chunk_ptr[ch + 1]; ++p) {
        add_rows(b, p_ij + p * c, c, base);
        std::fill(red_row, red_row + e, T(0));
        for (int64_t t = plan.seg_ptr[p]; t < plan.seg_ptr[p + 1]; ++t) {
          const T* __restrict__ ang = angle + t * a;
          affine_row(base, p_ik + plan.a_ik[t] * c, ang, w, a, c, z);
          const T s = a_sw[t];
#pragma omp simd
          for (int64_t j = 0; j < e; ++j) {
            const T x = act.f(z[j]);
            red_row[j] += s * x;
          }
          T* __restrict__ out = angle_new + t * a;
#pragma omp simd
          for (int64_t k = 0; k < a; ++k) {
            const T x = act.f(z[e + k]);
            out[k] = ang[k] + res[k] * x;
          }
        }
        std::copy(red_row, red_row + e, red + p * e);
      }
    }
  }
}

template <typename T>
void backward(const Plan& plan, const Dims& dims, double threshold, const BackwardArgs<T>& args) {
  const Silut<T> act_shared(threshold);
  const int64_t a = dims.a, e = dims.e, c = dims.c;
  const int64_t longest = longest_segment(plan, dims.n_edges);
  const int n_threads = team_size(plan, dims);
  ThreadSums sums(n_threads, a * c + a);  // g_w then g_res
#pragma omp parallel num_threads(n_threads)
  {
    const int tid = omp_get_thread_num();
    const Silut<T> act = act_shared;
    const T* __restrict__ grad_red = args.grad_red;
    const T* __restrict__ grad_angle = args.grad_angle;
    const T* __restrict__ angle = args.angle;
    const T* __restrict__ p_ij = args.p_ij;
    const T* __restrict__ p_ik = args.p_ik;
    const T* __restrict__ w = args.w;
    const T* __restrict__ wt = args.wt;
    const T* __restrict__ b = args.b;
    const T* __restrict__ a_sw = args.a_sw;
    const T* __restrict__ res = args.res;
    T* __restrict__ g_angle = args.g_angle;
    T* __restrict__ g_pij = args.g_pij;
    T* __restrict__ g_pik = args.g_pik;
    T* __restrict__ g_asw = args.g_asw;
    std::vector<T> scratch(2 * c + a * c + a + longest * c, T(0));
    T* __restrict__ base = scratch.data();
    T* __restrict__ z = base + c;
    T* __restrict__ chunk_sum = z + c;  // [a*c] g_w partial, then [a] g_res partial
    T* __restrict__ gres_sum = chunk_sum + a * c;
    T* __restrict__ seg_gz = gres_sum + a;  // [segment length, c] dL/dz of the current segment's angles
#pragma omp for schedule(static, kChunksPerGrab)
    for (int64_t ch = 0; ch < plan.n_chunks; ++ch) {
      for (int64_t p = plan.chunk_ptr[ch]; p < plan.chunk_ptr[ch + 1]; ++p) {
        add_rows(b, p_ij + p * c, c, base);
        const T* __restrict__ gr = grad_red + p * e;
        T* __restrict__ gp = g_pij + p * c;
        std::fill(gp, gp + c, T(0));
        const int64_t t0 = plan.seg_ptr[p], t1 = plan.seg_ptr[p + 1];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t q = plan.a_ik[t];
          const T* __restrict__ ang = angle + t * a;
          const T* __restrict__ gn = grad_angle + t * a;
          T* __restrict__ gz = seg_gz + (t - t0) * c;
          affine_row(base, p_ik + q * c, ang, w, a, c, z);
          const T s = a_sw[t];
          T gs = T(0);
#pragma omp simd reduction(+ : gs)
          for (int64_t j = 0; j < e; ++j) {
            T x, d1;
            act.f1(z[j], x, d1);
            gs += gr[j] * x;
            gz[j] = s * gr[j] * d1;
          }
          g_asw[t] = gs;
#pragma omp simd
          for (int64_t k = 0; k < a; ++k) {
            T x, d1;
            act.f1(z[e + k], x, d1);
            gres_sum[k] += gn[k] * x;
            gz[e + k] = res[k] * gn[k] * d1;
          }
          T* __restrict__ ga = g_angle + t * a;
          std::copy(gn, gn + a, ga);
          add_transposed(gz, wt, a, c, ga);
          add_to(gz, c, gp);
          add_to(gz, c, g_pik + q * c);
        }
        if (args.g_w != nullptr) add_segment_outer(angle + t0 * a, seg_gz, t1 - t0, a, c, chunk_sum);
      }
      sums.flush(tid, chunk_sum);
    }
  }
  sums.reduce_into(n_threads, args.g_w, a * c, args.g_res);
}

template <typename T>
void double_backward(const Plan& plan, const Dims& dims, double threshold, const DoubleBackwardArgs<T>& args) {
  const Silut<T> act_shared(threshold);
  const int64_t a = dims.a, e = dims.e, c = dims.c;
  const int64_t longest = longest_segment(plan, dims.n_edges);
  const int n_threads = team_size(plan, dims);
  ThreadSums sums(n_threads, a * c + a);  // d_w then d_res
#pragma omp parallel num_threads(n_threads)
  {
    const int tid = omp_get_thread_num();
    const Silut<T> act = act_shared;
    const T* __restrict__ grad_red = args.grad_red;
    const T* __restrict__ grad_angle = args.grad_angle;
    const T* __restrict__ angle = args.angle;
    const T* __restrict__ p_ij = args.p_ij;
    const T* __restrict__ p_ik = args.p_ik;
    const T* __restrict__ w = args.w;
    const T* __restrict__ wt = args.wt;
    const T* __restrict__ b = args.b;
    const T* __restrict__ a_sw = args.a_sw;
    const T* __restrict__ res = args.res;
    const T* __restrict__ gg_angle = args.gg_angle;
    const T* __restrict__ gg_pij = args.gg_pij;
    const T* __restrict__ gg_pik = args.gg_pik;
    const T* __restrict__ gg_w = args.gg_w;
    const T* __restrict__ gg_wt = args.gg_wt;
    const T* __restrict__ gg_b = args.gg_b;
    const T* __restrict__ gg_asw = args.gg_asw;
    const T* __restrict__ gg_res = args.gg_res;
    T* __restrict__ d_grad_red = args.d_grad_red;
    T* __restrict__ d_grad_angle = args.d_grad_angle;
    T* __restrict__ d_angle = args.d_angle;
    T* __restrict__ d_pij = args.d_pij;
    T* __restrict__ d_pik = args.d_pik;
    T* __restrict__ d_asw = args.d_asw;
    std::vector<T> scratch(4 * c + e + a * c + a + 2 * longest * c, T(0));
    T* __restrict__ base = scratch.data();
    T* __restrict__ dbase = base + c;
    T* __restrict__ z = dbase + c;
    T* __restrict__ dz = z + c;
    T* __restrict__ dgr_row = dz + c;
    T* __restrict__ chunk_sum = dgr_row + e;  // [a*c] d_w partial, then [a] d_res partial
    T* __restrict__ dres_sum = chunk_sum + a * c;
    T* __restrict__ seg_gz = dres_sum + a;           // [segment length, c] first-order dL/dz
    T* __restrict__ seg_gzz = seg_gz + longest * c;  // [segment length, c] second-order d/dz
#pragma omp for schedule(static, kChunksPerGrab)
    for (int64_t ch = 0; ch < plan.n_chunks; ++ch) {
      for (int64_t p = plan.chunk_ptr[ch]; p < plan.chunk_ptr[ch + 1]; ++p) {
        add_rows(b, p_ij + p * c, c, base);
        add_rows(gg_b, gg_pij + p * c, c, dbase);
        const T* __restrict__ gr = grad_red + p * e;
        T* __restrict__ dp = d_pij + p * c;
        std::fill(dp, dp + c, T(0));
        std::fill(dgr_row, dgr_row + e, T(0));
        const int64_t t0 = plan.seg_ptr[p], t1 = plan.seg_ptr[p + 1];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t q = plan.a_ik[t];
          const T* __restrict__ ang = angle + t * a;
          const T* __restrict__ gga = gg_angle + t * a;
          const T* __restrict__ gn = grad_angle + t * a;
          T* __restrict__ gz = seg_gz + (t - t0) * c;
          T* __restrict__ gzz = seg_gzz + (t - t0) * c;
          affine_row(base, p_ik + q * c, ang, w, a, c, z);
          // dz: the forward's affine map applied to the incoming direction (product rule for angle · w)
          affine_row2(dbase, gg_pik + q * c, gga, w, ang, gg_w, a, c, dz);
          const T s = a_sw[t];
          const T ggs = gg_asw[t];
          T ds = T(0);
#pragma omp simd reduction(+ : ds)
          for (int64_t j = 0; j < e; ++j) {
            T x, d1, d2;
            act.f2(z[j], x, d1, d2);
            const T gx = s * gr[j];
            const T h = dz[j] * d1;
            gz[j] = gx * d1;
            gzz[j] = gx * dz[j] * d2 + d1 * ggs * gr[j];
            dgr_row[j] += s * h + ggs * x;
            ds += gr[j] * h;
          }
          d_asw[t] = ds;
          T* __restrict__ dgn = d_grad_angle + t * a;
#pragma omp simd
          for (int64_t k = 0; k < a; ++k) {
            T x, d1, d2;
            act.f2(z[e + k], x, d1, d2);
            const T gx = res[k] * gn[k];
            const T h = dz[e + k] * d1;
            gz[e + k] = gx * d1;
            gzz[e + k] = gx * dz[e + k] * d2 + d1 * gg_res[k] * gn[k];
            dgn[k] = res[k] * h + gga[k] + gg_res[k] * x;
            dres_sum[k] += gn[k] * h;
          }
          T* __restrict__ da = d_angle + t * a;
          std::fill(da, da + a, T(0));
          add_transposed2(gzz, wt, gz, gg_wt, a, c, da);
          add_to(gzz, c, dp);
          add_to(gzz, c, d_pik + q * c);
        }
        add_segment_outer2(angle + t0 * a, seg_gzz, gg_angle + t0 * a, seg_gz, t1 - t0, a, c, chunk_sum);
        std::copy(dgr_row, dgr_row + e, d_grad_red + p * e);
      }
      sums.flush(tid, chunk_sum);
    }
  }
  sums.reduce_into(n_threads, args.d_w, a * c, args.d_res);
}

#define MFTCALC_ANGLE_INSTANTIATE(T)                                                                   \
  template void forward<T>(const Plan&, const Dims&, double, const ForwardArgs<T>&);                 \
  template void backward<T>(const Plan&, const Dims&, double, const BackwardArgs<T>&);               \
  template void double_backward<T>(const Plan&, const Dims&, double, const DoubleBackwardArgs<T>&);
MFTCALC_ANGLE_INSTANTIATE(float)
MFTCALC_ANGLE_INSTANTIATE(double)
#undef MFTCALC_ANGLE_INSTANTIATE

}  // namespace MFTCALC_ANGLE_ISA
}  // namespace mftcalc_angle
