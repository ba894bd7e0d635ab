// Spherical harmonics of W vectors at once with the normalize chain rule, over the generated
// sh.h (W = 1 on a GPU thread; a SIMD-friendly tile on the CPU).
#pragma once
#include <cmath>

#include "core/sh.h"

namespace fastcg {

constexpr int sh_dim(int l) { return (l + 1) * (l + 1); }

// Per-l output scale: 0 component, 1 norm (1/sqrt(2l+1)), 2 integral (1/sqrt(4 pi)).
template <typename T>
FASTCG_HD T sh_scale(int normalization, int l) {
  if (normalization == 1) return T(1) / std::sqrt(T(2 * l + 1));
  if (normalization == 2) return T(0.28209479177387814);  // 1/sqrt(4 pi)
  return T(1);
}

// Lanes of the polynomial argument: u = r/|r| and inv = 1/|r| when normalizing (u = 0 and
// inv = 0 for a zero vector, which zeroes every derivative below), else u = r and inv = 1.
// Only an exact zero is masked: a NaN |r|^2 makes every component NaN, as e3nn's r / |r|.
template <int W, typename T>
FASTCG_HD void sh_argument(const T* r, int n, bool normalize, T* x, T* y, T* z, T* inv) {
  for (int t = 0; t < W; ++t) {
    const bool live = t < n;
    x[t] = live ? r[3 * t] : T(0);
    y[t] = live ? r[3 * t + 1] : T(0);
    z[t] = live ? r[3 * t + 2] : T(0);
    inv[t] = T(1);
  }
  if (!normalize) return;
  for (int t = 0; t < W; ++t) {
    const T n2 = x[t] * x[t] + y[t] * y[t] + z[t] * z[t];
    inv[t] = n2 == T(0) ? T(0) : T(1) / std::sqrt(n2);
    x[t] *= inv[t];
    y[t] *= inv[t];
    z[t] *= inv[t];
  }
}

// out[t * dim + m] = Y_m(r_t) for the first n of W vectors.
template <int L, int W, typename T>
FASTCG_HD void sh_forward(const T* r, int n, bool normalize, int normalization, T* out) {
  constexpr int dim = sh_dim(L);
  T x[W], y[W], z[W], inv[W], Y[dim * W];
  sh_argument<W, T>(r, n, normalize, x, y, z, inv);
  sh_poly<L, 0, W, T>(x, y, z, Y, nullptr, nullptr);
  for (int l = 0; l <= L; ++l) {
    const T s = sh_scale<T>(normalization, l);
    for (int m = l * l; m < sh_dim(l); ++m)
      for (int t = 0; t < n; ++t) out[t * dim + m] = s * Y[m * W + t];
  }
}

// Lanes of J^T v with J = du/dr = (I - u u^T) / |r| (identity without normalize), in place.
template <int W, typename T>
FASTCG_HD void sh_project(T* v0, T* v1, T* v2, const T* x, const T* y, const T* z, const T* inv,
                          bool normalize) {
  if (!normalize) return;
  for (int t = 0; t < W; ++t) {
    const T vu = v0[t] * x[t] + v1[t] * y[t] + v2[t] * z[t];
    v0[t] = (v0[t] - vu * x[t]) * inv[t];
    v1[t] = (v1[t] - vu * y[t]) * inv[t];
    v2[t] = (v2[t] - vu * z[t]) * inv[t];
  }
}

// grad[t] = sum_m g[t, m] dY_m/dr (r_t), for the first n of W vectors.
template <int L, int W, typename T>
FASTCG_HD void sh_backward(const T* g, const T* r, int n, bool normalize, int normalization,
                           T* grad) {
  constexpr int dim = sh_dim(L);
  T x[W], y[W], z[W], inv[W], Y[dim * W], dP[3 * dim * W];
  sh_argument<W, T>(r, n, normalize, x, y, z, inv);
  sh_poly<L, 1, W, T>(x, y, z, Y, dP, nullptr);
  T v[3][W] = {};
  for (int l = 0; l <= L; ++l) {
    const T s = sh_scale<T>(normalization, l);
    for (int m = l * l; m < sh_dim(l); ++m)
      for (int k = 0; k < 3; ++k)
        for (int t = 0; t < n; ++t) v[k][t] += s * g[t * dim + m] * dP[(3 * m + k) * W + t];
  }
  sh_project<W, T>(v[0], v[1], v[2], x, y, z, inv, normalize);
  for (int t = 0; t < n; ++t)
    for (int k = 0; k < 3; ++k) grad[3 * t + k] = v[k][t];
}

// Given gg (cotangent of grad_r): gg_sh[t, m] = dY_m/dr . gg and grad[t] = sum_m g_m H_m gg.
template <int L, int W, typename T>
FASTCG_HD void sh_double_backward(const T* gg, const T* g, const T* r, int n, bool normalize,
                                  int normalization, T* gg_sh, T* grad) {
  constexpr int dim = sh_dim(L);
  T x[W], y[W], z[W], inv[W], Y[dim * W], dP[3 * dim * W], H[6 * dim * W];
  sh_argument<W, T>(r, n, normalize, x, y, z, inv);
  sh_poly<L, 2, W, T>(x, y, z, Y, dP, H);
  T q[3][W], d[3][W];  // gg and its direction in u-space, J gg
  for (int t = 0; t < W; ++t)
    for (int k = 0; k < 3; ++k) q[k][t] = d[k][t] = t < n ? gg[3 * t + k] : T(0);
  sh_project<W, T>(d[0], d[1], d[2], x, y, z, inv, normalize);
  T v[3][W] = {}, hv[3][W] = {};
  for (int l = 0; l <= L; ++l) {
    const T s = sh_scale<T>(normalization, l);
    for (int m = l * l; m < sh_dim(l); ++m) {
      const T* p = dP + 3 * m * W;
      const T* h = H + 6 * m * W;
      for (int t = 0; t < n; ++t) {
        gg_sh[t * dim + m] = s * (p[t] * d[0][t] + p[W + t] * d[1][t] + p[2 * W + t] * d[2][t]);
        const T gs = s * g[t * dim + m];
        for (int k = 0; k < 3; ++k) v[k][t] += gs * p[k * W + t];
        hv[0][t] += gs * (h[t] * d[0][t] + h[W + t] * d[1][t] + h[2 * W + t] * d[2][t]);
        hv[1][t] += gs * (h[W + t] * d[0][t] + h[3 * W + t] * d[1][t] + h[4 * W + t] * d[2][t]);
        hv[2][t] += gs * (h[2 * W + t] * d[0][t] + h[4 * W + t] * d[1][t] + h[5 * W + t] * d[2][t]);
      }
    }
  }
  sh_project<W, T>(hv[0], hv[1], hv[2], x, y, z, inv, normalize);  // J^T (H J gg)
  for (int t = 0; t < n; ++t) {
    T extra[3] = {T(0), T(0), T(0)};
    if (normalize) {
      // + sum_i v_i d2u_i/(dr dr) gg, with d2u_i/(dr_a dr_b) = (3 u_i u_a u_b - d_ia u_b
      // - d_ib u_a - d_ab u_i) / |r|^2
      const T u[3] = {x[t], y[t], z[t]};
      const T vu = v[0][t] * u[0] + v[1][t] * u[1] + v[2][t] * u[2];
      const T gu = q[0][t] * u[0] + q[1][t] * u[1] + q[2][t] * u[2];
      const T vg = v[0][t] * q[0][t] + v[1][t] * q[1][t] + v[2][t] * q[2][t];
      const T i2 = inv[t] * inv[t];
      for (int b = 0; b < 3; ++b)
        extra[b] = i2 * (T(3) * vu * gu * u[b] - vg * u[b] - v[b][t] * gu - q[b][t] * vu);
    }
    for (int b = 0; b < 3; ++b) grad[3 * t + b] = hv[b][t] + extra[b];
  }
}

}  // namespace fastcg
