// One CG path for one row (or edge), every connection mode; shared by CPU and CUDA kernels.
#pragma once
#include "core/common.h"

// Hot helpers must inline into the CPU kernels' per-ISA clones (target_clones) to vectorise there.
#if defined(__CUDACC__)
#define FASTCG_HDI FASTCG_HD
#else
#define FASTCG_HDI inline __attribute__((always_inline))
#endif
#define FASTCG_RESTRICT __restrict__

namespace fastcg {

// The three factors of a path's weight count (mode_letter): a letter's multiplicity the first
// time it appears, 1 after that.
FASTCG_HD void path_weight_factors(const int64_t* p, int64_t f[3]) {
  const int64_t mode = p[P_MODE], mul[3] = {p[P_MUL1], p[P_MUL2], p[P_MULO]};
  for (int i = 0; i < 3; ++i) {
    f[i] = mul[i];
    for (int j = 0; j < i; ++j)
      if (mode_letter(mode, j) == mode_letter(mode, i)) f[i] = 1;
  }
}

// Weights one path reads per row (its slice of the weight vector).
FASTCG_HD int64_t path_weight_numel(const int64_t* p) {
  int64_t f[3];
  path_weight_factors(p, f);
  return f[0] * f[1] * f[2];
}

// Whether the multiplicities fit the mode: equal letters, equal multiplicities.
FASTCG_HD bool path_muls_fit(const int64_t* p) {
  const int64_t mode = p[P_MODE], mul[3] = {p[P_MUL1], p[P_MUL2], p[P_MULO]};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < i; ++j)
      if (mode_letter(mode, j) == mode_letter(mode, i) && mul[i] != mul[j]) return false;
  return true;
}

// Highest l a path table may hold: 2l + 1 and the CG indices then stay far from overflow, and a
// fast path's coupling scratch ((2l + 1)^2 values) stays bounded even when its block is empty.
constexpr int64_t kMaxPathL = 1024;

// Why a path does not fit its operands (PATH_OK when it does). path_fits below and the CPU
// kernels' messages (cpu/utils.h check_paths) read this one function, so they cannot disagree.
enum PathFault : int {
  PATH_OK = 0,
  PATH_MODE,        // unknown connection mode
  PATH_L,           // l1, l2 or l3 outside [0, kMaxPathL]
  PATH_X1,          // the x1 block (off1, mul1, 2 l1 + 1) leaves x1's features
  PATH_X2,          // the x2 block leaves x2's features
  PATH_OUT,         // the output block leaves dim_out
  PATH_MULS,        // multiplicities do not fit the mode (uvu: mul_out == mul1, ...)
  PATH_NO_WEIGHTS,  // a uvw path without weights (w_off < 0): its kernel always reads them
  PATH_WEIGHTS,     // the weight slice [w_off, w_off + numel) leaves the weights
  PATH_CG_ROWS,     // CG rows [begin, end) outside [0, nnz) or begin > end
  PATH_CG_INDEX,    // a CG row's (i, j, k) outside the irreps' dimensions
};

FASTCG_HD int path_fault(const int64_t* p, const int64_t* ci, int64_t nnz, int64_t d1, int64_t d2,
                         int64_t dout, int64_t wn) {
  const int64_t mode = p[P_MODE], l1 = p[P_L1], l2 = p[P_L2], l3 = p[P_L3];
  const int64_t m1 = p[P_MUL1], m2 = p[P_MUL2], mo = p[P_MULO];
  if (mode < UVW || mode > UUW) return PATH_MODE;
  if (l1 < 0 || l2 < 0 || l3 < 0 || l1 > kMaxPathL || l2 > kMaxPathL || l3 > kMaxPathL)
    return PATH_L;
  if (!block_fits(p[P_OFF1], m1, 2 * l1 + 1, d1)) return PATH_X1;
  if (!block_fits(p[P_OFF2], m2, 2 * l2 + 1, d2)) return PATH_X2;
  if (!block_fits(p[P_OFFO], mo, 2 * l3 + 1, dout)) return PATH_OUT;
  if (!path_muls_fit(p)) return PATH_MULS;
  const int64_t woff = p[P_WOFF];
  if (woff < 0 && mode == UVW) return PATH_NO_WEIGHTS;
  if (woff >= 0) {
    int64_t f[3];  // multiplied without overflow
    path_weight_factors(p, f);
    if (woff > wn || !product_fits(f[0], f[1], f[2], wn - woff)) return PATH_WEIGHTS;
  }
  const int64_t begin = p[P_CG_BEGIN], end = p[P_CG_END];
  if (begin < 0 || begin > end || end > nnz) return PATH_CG_ROWS;
  for (int64_t n = begin; n < end; ++n)
    if (ci[3 * n] < 0 || ci[3 * n] > 2 * l1 || ci[3 * n + 1] < 0 || ci[3 * n + 1] > 2 * l2 ||
        ci[3 * n + 2] < 0 || ci[3 * n + 2] > 2 * l3)
      return PATH_CG_INDEX;
  return PATH_OK;
}

// Whether a path stays inside operands of d1 / d2 / dout features and wn weights per row, and its
// CG rows inside [0, nnz) and the irreps' dimensions (the CUDA kernels assert this on the device,
// where the table lives).
FASTCG_HD bool path_fits(const int64_t* p, const int64_t* ci, int64_t nnz, int64_t d1, int64_t d2,
                         int64_t dout, int64_t wn) {
  return path_fault(p, ci, nnz, d1, d2, dout, wn) == PATH_OK;
}

// How a path adds a term into an output element. The default is a plain `+=` for outputs the
// calling thread owns (every CPU kernel, the deterministic CUDA kernels); the atomic CUDA conv
// passes a policy calling atomicAdd for outputs that threads share (csrc/cuda/conv.cu). Always
// inlined, so the CPU kernels compile to the same code as with a bare `+=`.
struct PlainAdd {
  template <typename T>
  static FASTCG_HDI void add(T* p, T v) {
    *p += v;
  }
};

// out += TP(x1, x2, w) of one path for one row; Add accumulates into out.
template <typename T, typename Add = PlainAdd>
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
          for (int64_t q = 0; q < mo; ++q) Add::add(o + q * d3 + k, s * wr[q]);
        }
    } else if (mode == UVU) {
      for (int64_t u = 0; u < m1; ++u) {
        T s = 0;
        for (int64_t v = 0; v < m2; ++v) s += (W ? W[u * m2 + v] : T(1)) * b[v * d2 + j];
        Add::add(o + u * d3 + k, c * a[u * d1 + i] * s);
      }
    } else if (mode == UVV) {
      for (int64_t v = 0; v < m2; ++v) {
        T s = 0;
        for (int64_t u = 0; u < m1; ++u) s += (W ? W[u * m2 + v] : T(1)) * a[u * d1 + i];
        Add::add(o + v * d3 + k, c * b[v * d2 + j] * s);
      }
    } else if (mode == UUW) {
      for (int64_t u = 0; u < m1; ++u) {
        const T s = c * a[u * d1 + i] * b[u * d2 + j];
        for (int64_t q = 0; q < mo; ++q) Add::add(o + q * d3 + k, s * (W ? W[u * mo + q] : T(1)));
      }
    } else {  // UUU
      for (int64_t u = 0; u < m1; ++u)
        Add::add(o + u * d3 + k, c * (W ? W[u] : T(1)) * a[u * d1 + i] * b[u * d2 + j]);
    }
  }
}

// Gradient of sum(g * out) for one path and one row; null outputs are skipped. Add1, Add2 and AddW
// accumulate into gx1, gx2 and gw (PlainAdd above: each output may be shared or owned).
template <typename T, typename Add1 = PlainAdd, typename Add2 = PlainAdd, typename AddW = PlainAdd>
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
          if (ga) Add1::add(ga + u * d1 + i, c * b[v * d2 + j] * s);
          if (gb) Add2::add(gb + v * d2 + j, c * a[u * d1 + i] * s);
          if (gW) {
            const T t = c * a[u * d1 + i] * b[v * d2 + j];
            T* gr = gW + (u * m2 + v) * mo;
            for (int64_t q = 0; q < mo; ++q) AddW::add(gr + q, t * go[q * d3 + k]);
          }
        }
      } else if (mode == UVU || mode == UVV) {
        for (int64_t v = 0; v < m2; ++v) {
          const T gk = go[(mode == UVU ? u : v) * d3 + k];
          const T wv = W ? W[u * m2 + v] : T(1);
          if (ga) Add1::add(ga + u * d1 + i, c * wv * b[v * d2 + j] * gk);
          if (gb) Add2::add(gb + v * d2 + j, c * wv * a[u * d1 + i] * gk);
          if (gW) AddW::add(gW + u * m2 + v, c * a[u * d1 + i] * b[v * d2 + j] * gk);
        }
      } else if (mode == UUW) {
        T s = 0;
        for (int64_t q = 0; q < mo; ++q) s += (W ? W[u * mo + q] : T(1)) * go[q * d3 + k];
        if (ga) Add1::add(ga + u * d1 + i, c * b[u * d2 + j] * s);
        if (gb) Add2::add(gb + u * d2 + j, c * a[u * d1 + i] * s);
        if (gW) {
          const T t = c * a[u * d1 + i] * b[u * d2 + j];
          for (int64_t q = 0; q < mo; ++q) AddW::add(gW + u * mo + q, t * go[q * d3 + k]);
        }
      } else {  // UUU
        const T gk = go[u * d3 + k];
        const T wv = W ? W[u] : T(1);
        if (ga) Add1::add(ga + u * d1 + i, c * wv * b[u * d2 + j] * gk);
        if (gb) Add2::add(gb + u * d2 + j, c * wv * a[u * d1 + i] * gk);
        if (gW) AddW::add(gW + u, c * a[u * d1 + i] * b[u * d2 + j] * gk);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Channel-fastest ("ir_mul") form of the uvu path with mul2 == 1 (x2 = spherical harmonics or
// any single-channel block), where MACE and NequIP convolutions spend their time:
//   out[u,k] = W[u] * sum_i s[i,k] x1[u,i],   s[i,k] = sum_j c_ijk x2[j] (the coupling),
// so every inner loop runs over channels u with unit stride. The CPU kernels over this form are
// csrc/cpu/uvu1.h (vector extensions); the coupling below is shared.

// s[i*d3 + k] += sum_j c_ijk y[j] over the path's CG rows [begin, end); s starts at zero.
template <typename T>
FASTCG_HDI void uvu1_coupling(const int64_t* cgi, const double* cgv, int64_t begin, int64_t end,
                              int64_t d3, const T* y, T* s) {
  for (int64_t n = begin; n < end; ++n)
    s[cgi[3 * n] * d3 + cgi[3 * n + 2]] += T(cgv[n]) * y[cgi[3 * n + 1]];
}

}  // namespace fastcg
