// SiLUT activation and its first and second derivatives, written so that loops over channels vectorise.
//
// f(z) = silu(z)                              for z <= T
//      = silu(T) + tanh(s * (z - T))          for z >  T,   s = silu'(T)
// (the same as silu(min(z, T)) + tanh(s * relu(z - T)), with torch's derivative conventions at z == T).
// Both branches need one exponential: exp(-z) below T, exp(-2 s (z - T)) above it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace mftcalc_angle {

// exp(x) for float without libm calls (Cephes expf polynomial, ~1 ulp), so gcc can vectorise the caller.
inline float exp_vec(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = __builtin_bit_cast(int32_t, t) - __builtin_bit_cast(int32_t, magic);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  return y * __builtin_bit_cast(float, (ni + 127) << 23);
}

inline double exp_vec(double x) { return std::exp(x); }

// Constants of the activation for one threshold.
template <typename T>
struct Silut {
  T thr;       // threshold T
  T slope;     // silu'(T)
  T silu_thr;  // silu(T)

  explicit Silut(double threshold) {
    const double sig = 1.0 / (1.0 + std::exp(-threshold));
    thr = static_cast<T>(threshold);
    slope = static_cast<T>(sig + threshold * sig * (1.0 - sig));
    silu_thr = static_cast<T>(threshold * sig);
  }

  // Value only.
  inline T f(T z) const {
    const bool low = z <= thr;
    const T u = slope * (z - thr);
    const T e = exp_vec(low ? -z : T(-2) * u);
    const T inv = T(1) / (T(1) + e);
    return low ? z * inv : silu_thr + (T(1) - e) * inv;
  }

  // Value and first derivative.
  inline void f1(T z, T& v, T& d1) const {
    const bool low = z <= thr;
    const T u = slope * (z - thr);
    const T e = exp_vec(low ? -z : T(-2) * u);
    const T inv = T(1) / (T(1) + e);               // sigmoid(z) below T
    const T th = (T(1) - e) * inv;                 // tanh(u) above T
    v = low ? z * inv : silu_thr + th;
    d1 = low ? inv * (T(1) + z * (T(1) - inv)) : slope * (T(1) - th * th);
  }

  // Value, first and second derivative.
  inline void f2(T z, T& v, T& d1, T& d2) const {
    const bool low = z <= thr;
    const T u = slope * (z - thr);
    const T e = exp_vec(low ? -z : T(-2) * u);
    const T inv = T(1) / (T(1) + e);
    const T th = (T(1) - e) * inv;
    const T sech2 = T(1) - th * th;
    v = low ? z * inv : silu_thr + th;
    d1 = low ? inv * (T(1) + z * (T(1) - inv)) : slope * sech2;
    d2 = low ? inv * (T(1) - inv) * (T(2) + z * (T(1) - T(2) * inv)) : T(-2) * slope * slope * th * sech2;
  }
};

}  // namespace mftcalc_angle
