// One CG path for one row (or edge), every connection mode; shared by CPU and CUDA kernels.
//
// Operands are in ir_mul layout inside the kernels (element (u, i) of a block at
// off + i * mul + u): the channel loop is then the innermost, contiguous one and vectorises.
// Weights keep e3nn's layout. The public boundary stays mul_ir; kernels transpose once per call.
#pragma once
#include "core/common.h"

#if defined(__CUDACC__) || defined(__GNUC__)
#define FASTCG_RESTRICT __restrict__
#else
#define FASTCG_RESTRICT
#endif

namespace fastcg {

struct PathView {
  int64_t mode, m1, m2, mo, d1, d2, d3, off1, off2, offo, woff, begin, end;
};

FASTCG_HD PathView path_view(const int64_t* p) {
  return {p[P_MODE], p[P_MUL1], p[P_MUL2], p[P_MULO], 2 * p[P_L1] + 1, 2 * p[P_L2] + 1,
          2 * p[P_L3] + 1, p[P_OFF1], p[P_OFF2], p[P_OFFO], p[P_WOFF], p[P_CG_BEGIN],
          p[P_CG_END]};
}

constexpr int kMaxIrDim = 17;  // 2l+1 for l <= 8

// cp[i * d3 + k] = sum_j C[i, j, k] * x2[j]: with one x2 channel (uvu against spherical
// harmonics, the NequIP / MACE case) the CG table collapses to a d1 x d3 matrix per edge, which
// halves the vector work (351 CG entries -> 303 (i, k) pairs + 86 products per edge for MACE).
template <typename T>
FASTCG_HD void contract_x2(const PathView& q, const int64_t* cgi, const double* cgv, const T* b,
                           T* cp) {
  for (int64_t n = 0; n < q.d1 * q.d3; ++n) cp[n] = T(0);
  for (int64_t n = q.begin; n < q.end; ++n)
    cp[cgi[3 * n] * q.d3 + cgi[3 * n + 2]] += T(cgv[n]) * b[cgi[3 * n + 1]];
}

// out += path(x1, x2, w); w = null or w_off < 0 means weight 1.
template <typename T>
FASTCG_HD void tp_path_forward(const int64_t* p, const int64_t* cgi, const double* cgv,
                               const T* FASTCG_RESTRICT x1, const T* FASTCG_RESTRICT x2,
                               const T* FASTCG_RESTRICT w, T* FASTCG_RESTRICT out) {
  const PathView q = path_view(p);
  const T* a = x1 + q.off1;
  const T* b = x2 + q.off2;
  T* o = out + q.offo;
  const T* W = q.woff >= 0 ? w + q.woff : nullptr;
  if (q.mode == UVU && q.m2 == 1) {
    T cp[kMaxIrDim * kMaxIrDim];
    contract_x2(q, cgi, cgv, b, cp);
    for (int64_t i = 0; i < q.d1; ++i) {
      const T* ai = a + i * q.m1;
      for (int64_t k = 0; k < q.d3; ++k) {
        const T c = cp[i * q.d3 + k];
        if (c == T(0)) continue;
        T* ok = o + k * q.m1;
        if (W) {
          for (int64_t u = 0; u < q.m1; ++u) ok[u] += c * W[u] * ai[u];
        } else {
          for (int64_t u = 0; u < q.m1; ++u) ok[u] += c * ai[u];
        }
      }
    }
    return;
  }
  for (int64_t n = q.begin; n < q.end; ++n) {
    const int64_t i = cgi[3 * n], j = cgi[3 * n + 1], k = cgi[3 * n + 2];
    const T c = T(cgv[n]);
    const T* ai = a + i * q.m1;
    const T* bj = b + j * q.m2;
    switch (q.mode) {
      case UVW: {
        T* ok = o + k * q.mo;
        for (int64_t u = 0; u < q.m1; ++u)
          for (int64_t v = 0; v < q.m2; ++v) {
            const T s = c * ai[u] * bj[v];
            const T* wr = W + (u * q.m2 + v) * q.mo;
            for (int64_t t = 0; t < q.mo; ++t) ok[t] += s * wr[t];
          }
        break;
      }
      case UVU: {
        T* ok = o + k * q.m1;
        for (int64_t v = 0; v < q.m2; ++v) {
          const T s = c * bj[v];
          if (W) {
            for (int64_t u = 0; u < q.m1; ++u) ok[u] += s * W[u * q.m2 + v] * ai[u];
          } else {
            for (int64_t u = 0; u < q.m1; ++u) ok[u] += s * ai[u];
          }
        }
        break;
      }
      case UVV: {
        T* ok = o + k * q.m2;
        for (int64_t u = 0; u < q.m1; ++u) {
          const T s = c * ai[u];
          if (W) {
            const T* wr = W + u * q.m2;
            for (int64_t v = 0; v < q.m2; ++v) ok[v] += s * wr[v] * bj[v];
          } else {
            for (int64_t v = 0; v < q.m2; ++v) ok[v] += s * bj[v];
          }
        }
        break;
      }
      case UUW: {
        T* ok = o + k * q.mo;
        for (int64_t u = 0; u < q.m1; ++u) {
          const T s = c * ai[u] * bj[u];
          if (W) {
            const T* wr = W + u * q.mo;
            for (int64_t t = 0; t < q.mo; ++t) ok[t] += s * wr[t];
          } else {
            for (int64_t t = 0; t < q.mo; ++t) ok[t] += s;
          }
        }
        break;
      }
      default: {  // UUU
        T* ok = o + k * q.m1;
        if (W) {
          for (int64_t u = 0; u < q.m1; ++u) ok[u] += c * W[u] * ai[u] * bj[u];
        } else {
          for (int64_t u = 0; u < q.m1; ++u) ok[u] += c * ai[u] * bj[u];
        }
      }
    }
  }
}

// Backward of a uvu path with one x2 channel, through the contracted table cp = C . x2:
//   grad a_i += cp_ik W g_k,  grad W += cp_ik a_i g_k,  grad x2_j += C_ijk (W a_i . g_k).
template <typename T>
FASTCG_HD void uvu1_backward(const PathView& q, const int64_t* cgi, const double* cgv,
                             const T* FASTCG_RESTRICT go, const T* FASTCG_RESTRICT a,
                             const T* FASTCG_RESTRICT b, const T* FASTCG_RESTRICT W,
                             T* FASTCG_RESTRICT ga, T* FASTCG_RESTRICT gb,
                             T* FASTCG_RESTRICT gW) {
  const int64_t m = q.m1;
  T cp[kMaxIrDim * kMaxIrDim];
  if (ga || gW) contract_x2(q, cgi, cgv, b, cp);
  T dots[kMaxIrDim * kMaxIrDim];  // (W a_i) . g_k, only when grad x2 is wanted
  for (int64_t i = 0; i < q.d1; ++i) {
    const T* ai = a + i * m;
    if (ga || gW) {
      T* gai = ga ? ga + i * m : nullptr;
      for (int64_t k = 0; k < q.d3; ++k) {
        const T c = cp[i * q.d3 + k];
        if (c == T(0)) continue;
        const T* gk = go + k * m;
        if (gai) {
          if (W) {
            for (int64_t u = 0; u < m; ++u) gai[u] += c * W[u] * gk[u];
          } else {
            for (int64_t u = 0; u < m; ++u) gai[u] += c * gk[u];
          }
        }
        if (gW)
          for (int64_t u = 0; u < m; ++u) gW[u] += c * ai[u] * gk[u];
      }
    }
    if (gb) {
      for (int64_t k = 0; k < q.d3; ++k) {
        const T* gk = go + k * m;
        T acc = T(0);
        if (W) {
          for (int64_t u = 0; u < m; ++u) acc += W[u] * ai[u] * gk[u];
        } else {
          for (int64_t u = 0; u < m; ++u) acc += ai[u] * gk[u];
        }
        dots[i * q.d3 + k] = acc;
      }
    }
  }
  if (gb)
    for (int64_t n = q.begin; n < q.end; ++n)
      gb[cgi[3 * n + 1]] += T(cgv[n]) * dots[cgi[3 * n] * q.d3 + cgi[3 * n + 2]];
}

// Gradient of sum(g * out) for one path: gx1 += ..., gx2 += ..., gw += ... (null: skipped).
template <typename T>
FASTCG_HD void tp_path_backward(const int64_t* p, const int64_t* cgi, const double* cgv,
                                const T* FASTCG_RESTRICT g, const T* FASTCG_RESTRICT x1,
                                const T* FASTCG_RESTRICT x2, const T* FASTCG_RESTRICT w,
                                T* FASTCG_RESTRICT gx1, T* FASTCG_RESTRICT gx2,
                                T* FASTCG_RESTRICT gw) {
  const PathView q = path_view(p);
  const T* a = x1 + q.off1;
  const T* b = x2 + q.off2;
  const T* go = g + q.offo;
  const T* W = q.woff >= 0 ? w + q.woff : nullptr;
  T* ga = gx1 ? gx1 + q.off1 : nullptr;
  T* gb = gx2 ? gx2 + q.off2 : nullptr;
  T* gW = (gw && W) ? gw + q.woff : nullptr;
  if (q.mode == UVU && q.m2 == 1) {
    uvu1_backward(q, cgi, cgv, go, a, b, W, ga, gb, gW);
    return;
  }
  for (int64_t n = q.begin; n < q.end; ++n) {
    const int64_t i = cgi[3 * n], j = cgi[3 * n + 1], k = cgi[3 * n + 2];
    const T c = T(cgv[n]);
    const T* ai = a + i * q.m1;
    const T* bj = b + j * q.m2;
    T* gai = ga ? ga + i * q.m1 : nullptr;
    T* gbj = gb ? gb + j * q.m2 : nullptr;
    switch (q.mode) {
      case UVW: {
        const T* gk = go + k * q.mo;
        for (int64_t u = 0; u < q.m1; ++u)
          for (int64_t v = 0; v < q.m2; ++v) {
            const T* wr = W + (u * q.m2 + v) * q.mo;
            T s = 0;
            for (int64_t t = 0; t < q.mo; ++t) s += wr[t] * gk[t];
            if (gai) gai[u] += c * bj[v] * s;
            if (gbj) gbj[v] += c * ai[u] * s;
            if (gW) {
              const T cab = c * ai[u] * bj[v];
              T* gr = gW + (u * q.m2 + v) * q.mo;
              for (int64_t t = 0; t < q.mo; ++t) gr[t] += cab * gk[t];
            }
          }
        break;
      }
      case UVU: {
        const T* gk = go + k * q.m1;
        for (int64_t v = 0; v < q.m2; ++v) {
          const T cb = c * bj[v];
          T sb = 0;
          for (int64_t u = 0; u < q.m1; ++u) {
            const T wv = W ? W[u * q.m2 + v] : T(1);
            if (gai) gai[u] += cb * wv * gk[u];
            sb += wv * ai[u] * gk[u];
            if (gW) gW[u * q.m2 + v] += cb * ai[u] * gk[u];
          }
          if (gbj) gbj[v] += c * sb;
        }
        break;
      }
      case UVV: {
        const T* gk = go + k * q.m2;
        for (int64_t u = 0; u < q.m1; ++u) {
          const T ca = c * ai[u];
          T sa = 0;
          for (int64_t v = 0; v < q.m2; ++v) {
            const T wv = W ? W[u * q.m2 + v] : T(1);
            sa += wv * bj[v] * gk[v];
            if (gbj) gbj[v] += ca * wv * gk[v];
            if (gW) gW[u * q.m2 + v] += ca * bj[v] * gk[v];
          }
          if (gai) gai[u] += c * sa;
        }
        break;
      }
      case UUW: {
        const T* gk = go + k * q.mo;
        for (int64_t u = 0; u < q.m1; ++u) {
          T s = 0;
          for (int64_t t = 0; t < q.mo; ++t) s += (W ? W[u * q.mo + t] : T(1)) * gk[t];
          if (gai) gai[u] += c * bj[u] * s;
          if (gbj) gbj[u] += c * ai[u] * s;
          if (gW) {
            const T cab = c * ai[u] * bj[u];
            for (int64_t t = 0; t < q.mo; ++t) gW[u * q.mo + t] += cab * gk[t];
          }
        }
        break;
      }
      default: {  // UUU
        const T* gk = go + k * q.m1;
        for (int64_t u = 0; u < q.m1; ++u) {
          const T wv = W ? W[u] : T(1);
          if (gai) gai[u] += c * wv * bj[u] * gk[u];
          if (gbj) gbj[u] += c * wv * ai[u] * gk[u];
          if (gW) gW[u] += c * ai[u] * bj[u] * gk[u];
        }
      }
    }
  }
}

}  // namespace fastcg
