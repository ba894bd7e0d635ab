// Spherical harmonics of one vector with the normalize chain rule, over the generated sh.h.
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

// Polynomial argument: u = r/|r| (zero for r = 0) when normalizing, else r; inv = 1/|r|.
template <typename T>
FASTCG_HD bool sh_argument(const T* r, bool normalize, T* u, T& inv) {
  u[0] = r[0];
  u[1] = r[1];
  u[2] = r[2];
  inv = T(1);
  if (!normalize) return true;
  const T n2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
  if (n2 == T(0)) return false;  // zero vector: value at u = 0, all derivatives zero
  inv = T(1) / std::sqrt(n2);
  u[0] *= inv;
  u[1] *= inv;
  u[2] *= inv;
  return true;
}

// out[dim] = Y(r) scaled.
template <int L, typename T>
FASTCG_HD void sh_forward(const T* r, bool normalize, int normalization, T* out) {
  T u[3], inv;
  if (!sh_argument(r, normalize, u, inv)) u[0] = u[1] = u[2] = T(0);
  sh_poly<L, 0, T>(u[0], u[1], u[2], out, nullptr, nullptr);
  if (normalization != 0)
    for (int l = 0; l <= L; ++l)
      for (int m = l * l; m < sh_dim(l); ++m) out[m] *= sh_scale<T>(normalization, l);
}

// v = sum_m g_m s_l dP_m (a 3-vector), given dP [3 * dim].
template <int L, typename T>
FASTCG_HD void sh_contract_grad(const T* g, const T* dP, int normalization, T* v) {
  v[0] = v[1] = v[2] = T(0);
  for (int l = 0; l <= L; ++l) {
    const T s = sh_scale<T>(normalization, l);
    for (int m = l * l; m < sh_dim(l); ++m)
      for (int k = 0; k < 3; ++k) v[k] += s * g[m] * dP[3 * m + k];
  }
}

// J^T v with J = du/dr = (I - u u^T) / |r| (identity without normalize).
template <typename T>
FASTCG_HD void sh_project(const T* v, const T* u, T inv, bool normalize, T* out) {
  if (!normalize) {
    out[0] = v[0];
    out[1] = v[1];
    out[2] = v[2];
    return;
  }
  const T vu = v[0] * u[0] + v[1] * u[1] + v[2] * u[2];
  for (int k = 0; k < 3; ++k) out[k] = (v[k] - vu * u[k]) * inv;
}

// grad_r = sum_m g_m dY_m/dr.
template <int L, typename T>
FASTCG_HD void sh_backward(const T* g, const T* r, bool normalize, int normalization, T* grad) {
  T u[3], inv, Y[sh_dim(L)], dP[3 * sh_dim(L)], v[3];
  grad[0] = grad[1] = grad[2] = T(0);
  if (!sh_argument(r, normalize, u, inv)) return;
  sh_poly<L, 1, T>(u[0], u[1], u[2], Y, dP, nullptr);
  sh_contract_grad<L, T>(g, dP, normalization, v);
  sh_project(v, u, inv, normalize, grad);
}

// Given gg (cotangent of grad_r): gg_sh[m] = dY_m/dr . gg and grad_r = sum_m g_m H_m gg.
template <int L, typename T>
FASTCG_HD void sh_double_backward(const T* gg, const T* g, const T* r, bool normalize,
                                  int normalization, T* gg_sh, T* grad) {
  T u[3], inv, Y[sh_dim(L)], dP[3 * sh_dim(L)], H[6 * sh_dim(L)];
  grad[0] = grad[1] = grad[2] = T(0);
  for (int m = 0; m < sh_dim(L); ++m) gg_sh[m] = T(0);
  if (!sh_argument(r, normalize, u, inv)) return;
  sh_poly<L, 2, T>(u[0], u[1], u[2], Y, dP, H);
  T t[3];  // J gg: the direction in u-space
  sh_project(gg, u, inv, normalize, t);
  T v[3] = {0, 0, 0}, hv[3] = {0, 0, 0};
  for (int l = 0; l <= L; ++l) {
    const T s = sh_scale<T>(normalization, l);
    for (int m = l * l; m < sh_dim(l); ++m) {
      const T* d = dP + 3 * m;
      const T* h = H + 6 * m;
      gg_sh[m] = s * (d[0] * t[0] + d[1] * t[1] + d[2] * t[2]);
      const T gs = s * g[m];
      for (int k = 0; k < 3; ++k) v[k] += gs * d[k];
      hv[0] += gs * (h[0] * t[0] + h[1] * t[1] + h[2] * t[2]);
      hv[1] += gs * (h[1] * t[0] + h[3] * t[1] + h[4] * t[2]);
      hv[2] += gs * (h[2] * t[0] + h[4] * t[1] + h[5] * t[2]);
    }
  }
  sh_project(hv, u, inv, normalize, grad);  // J^T (H J gg)
  if (!normalize) return;
  // plus sum_i v_i d2u_i/dr dr . gg, d2u_i/dr_a dr_b = (3 u_i u_a u_b - d_ia u_b - d_ib u_a
  // - d_ab u_i) / |r|^2
  const T vu = v[0] * u[0] + v[1] * u[1] + v[2] * u[2];
  const T gu = gg[0] * u[0] + gg[1] * u[1] + gg[2] * u[2];
  const T vg = v[0] * gg[0] + v[1] * gg[1] + v[2] * gg[2];
  const T i2 = inv * inv;
  for (int b = 0; b < 3; ++b)
    grad[b] += i2 * (T(3) * vu * gu * u[b] - vg * u[b] - v[b] * gu - gg[b] * vu);
}

}  // namespace fastcg
