// One CG path for one row (or edge), every connection mode; shared by CPU and CUDA kernels.
#pragma once
#include "core/common.h"

namespace fastcg {

template <typename T>
FASTCG_HD void tp_path_forward(const int64_t* p, const int64_t* cgi, const double* cgv, const T* x1,
                               const T* x2, const T* w, T* out) {
  const int64_t mode = p[P_MODE], m1 = p[P_MUL1], m2 = p[P_MUL2], mo = p[P_MULO];
  const int64_t d1 = 2 * p[P_L1] + 1, d2 = 2 * p[P_L2] + 1, d3 = 2 * p[P_L3] + 1;
  const T* a = x1 + p[P_OFF1];
  const T* b = x2 + p[P_OFF2];
  T* o = out + p[P_OFFO];
  const T* W = p[P_WOFF] >= 0 ? w + p[P_WOFF] : nullptr;
  for (int64_t n = p[P_CG_BEGIN]; n < p[P_CG_END]; ++n) {
    const int64_t i = cgi[3 * n], j = cgi[3 * n + 1], k = cgi[3 * n + 2];
    const T c = T(cgv[n]);
    if (mode == UVW) {
      for (int64_t u = 0; u < m1; ++u)
        for (int64_t v = 0; v < m2; ++v) {
          const T s = c * a[u * d1 + i] * b[v * d2 + j];
          const T* wr = W + (u * m2 + v) * mo;
          for (int64_t q = 0; q < mo; ++q) o[q * d3 + k] += s * wr[q];
        }
    } else if (mode == UVU) {
      for (int64_t u = 0; u < m1; ++u) {
        T s = 0;
        for (int64_t v = 0; v < m2; ++v) s += (W ? W[u * m2 + v] : T(1)) * b[v * d2 + j];
        o[u * d3 + k] += c * a[u * d1 + i] * s;
      }
    } else if (mode == UVV) {
      for (int64_t v = 0; v < m2; ++v) {
        T s = 0;
        for (int64_t u = 0; u < m1; ++u) s += (W ? W[u * m2 + v] : T(1)) * a[u * d1 + i];
        o[v * d3 + k] += c * b[v * d2 + j] * s;
      }
    } else if (mode == UUW) {
      for (int64_t u = 0; u < m1; ++u) {
        const T s = c * a[u * d1 + i] * b[u * d2 + j];
        for (int64_t q = 0; q < mo; ++q) o[q * d3 + k] += s * (W ? W[u * mo + q] : T(1));
      }
    } else {  // UUU
      for (int64_t u = 0; u < m1; ++u)
        o[u * d3 + k] += c * (W ? W[u] : T(1)) * a[u * d1 + i] * b[u * d2 + j];
    }
  }
}

// Gradient of sum(g * out) for one path and one row; null outputs are skipped.
template <typename T>
FASTCG_HD void tp_path_backward(const int64_t* p, const int64_t* cgi, const double* cgv, const T* g,
                                const T* x1, const T* x2, const T* w, T* gx1, T* gx2, T* gw) {
  const int64_t mode = p[P_MODE], m1 = p[P_MUL1], m2 = p[P_MUL2], mo = p[P_MULO];
  const int64_t d1 = 2 * p[P_L1] + 1, d2 = 2 * p[P_L2] + 1, d3 = 2 * p[P_L3] + 1;
  const T* a = x1 + p[P_OFF1];
  const T* b = x2 + p[P_OFF2];
  const T* go = g + p[P_OFFO];
  const bool has_w = p[P_WOFF] >= 0;
  const T* W = has_w ? w + p[P_WOFF] : nullptr;
  T* ga = gx1 ? gx1 + p[P_OFF1] : nullptr;
  T* gb = gx2 ? gx2 + p[P_OFF2] : nullptr;
  T* gW = (gw && has_w) ? gw + p[P_WOFF] : nullptr;
  for (int64_t n = p[P_CG_BEGIN]; n < p[P_CG_END]; ++n) {
    const int64_t i = cgi[3 * n], j = cgi[3 * n + 1], k = cgi[3 * n + 2];
    const T c = T(cgv[n]);
    for (int64_t u = 0; u < m1; ++u) {
      if (mode == UVW) {
        for (int64_t v = 0; v < m2; ++v) {
          const T* wr = W + (u * m2 + v) * mo;
          T s = 0;
          for (int64_t q = 0; q < mo; ++q) s += wr[q] * go[q * d3 + k];
          if (ga) ga[u * d1 + i] += c * b[v * d2 + j] * s;
          if (gb) gb[v * d2 + j] += c * a[u * d1 + i] * s;
          if (gW) {
            const T t = c * a[u * d1 + i] * b[v * d2 + j];
            T* gr = gW + (u * m2 + v) * mo;
            for (int64_t q = 0; q < mo; ++q) gr[q] += t * go[q * d3 + k];
          }
        }
      } else if (mode == UVU || mode == UVV) {
        for (int64_t v = 0; v < m2; ++v) {
          const T gk = go[(mode == UVU ? u : v) * d3 + k];
          const T wv = W ? W[u * m2 + v] : T(1);
          if (ga) ga[u * d1 + i] += c * wv * b[v * d2 + j] * gk;
          if (gb) gb[v * d2 + j] += c * wv * a[u * d1 + i] * gk;
          if (gW) gW[u * m2 + v] += c * a[u * d1 + i] * b[v * d2 + j] * gk;
        }
      } else if (mode == UUW) {
        T s = 0;
        for (int64_t q = 0; q < mo; ++q) s += (W ? W[u * mo + q] : T(1)) * go[q * d3 + k];
        if (ga) ga[u * d1 + i] += c * b[u * d2 + j] * s;
        if (gb) gb[u * d2 + j] += c * a[u * d1 + i] * s;
        if (gW) {
          const T t = c * a[u * d1 + i] * b[u * d2 + j];
          for (int64_t q = 0; q < mo; ++q) gW[u * mo + q] += t * go[q * d3 + k];
        }
      } else {  // UUU
        const T gk = go[u * d3 + k];
        const T wv = W ? W[u] : T(1);
        if (ga) ga[u * d1 + i] += c * wv * b[u * d2 + j] * gk;
        if (gb) gb[u * d2 + j] += c * wv * a[u * d1 + i] * gk;
        if (gW) gW[u] += c * a[u * d1 + i] * b[u * d2 + j] * gk;
      }
    }
  }
}

}  // namespace fastcg
