// Equivariant linear, one element at a time (the CUDA kernels; the CPU kernels run the same sums
// as GEMMs through ATen). A path (core/common.h LinCol) maps the mul_in x d block at off_in to the
// mul_out x d block at off_out with weights W[u * mul_out + v] at w_off, times its coefficient.
#pragma once
#include "core/common.h"

namespace fastcg {

// out[j] of one row x: sum over the paths writing feature j.
template <typename T>
FASTCG_HD T linear_out_element(const int64_t* paths, const double* coeff, int64_t P, const T* x,
                               const T* w, int64_t j) {
  T acc = T(0);
  for (int64_t q = 0; q < P; ++q) {
    const int64_t* p = paths + q * L_NCOLS;
    const int64_t mi = p[L_MUL_IN], mo = p[L_MUL_OUT], d = p[L_IR_DIM];
    if (j < p[L_OFF_OUT] || j >= p[L_OFF_OUT] + mo * d) continue;
    const int64_t v = (j - p[L_OFF_OUT]) / d, i = (j - p[L_OFF_OUT]) % d;
    const T* a = x + p[L_OFF_IN] + i;
    const T* W = w + p[L_WOFF] + v;
    T s = T(0);
    for (int64_t u = 0; u < mi; ++u) s += a[u * d] * W[u * mo];
    acc += T(coeff[q]) * s;
  }
  return acc;
}

// grad_x[j] of one row given its output cotangent g: sum over the paths reading feature j.
template <typename T>
FASTCG_HD T linear_grad_in_element(const int64_t* paths, const double* coeff, int64_t P, const T* g,
                                   const T* w, int64_t j) {
  T acc = T(0);
  for (int64_t q = 0; q < P; ++q) {
    const int64_t* p = paths + q * L_NCOLS;
    const int64_t mi = p[L_MUL_IN], mo = p[L_MUL_OUT], d = p[L_IR_DIM];
    if (j < p[L_OFF_IN] || j >= p[L_OFF_IN] + mi * d) continue;
    const int64_t u = (j - p[L_OFF_IN]) / d, i = (j - p[L_OFF_IN]) % d;
    const T* b = g + p[L_OFF_OUT] + i;
    const T* W = w + p[L_WOFF] + u * mo;
    T s = T(0);
    for (int64_t v = 0; v < mo; ++v) s += b[v * d] * W[v];
    acc += T(coeff[q]) * s;
  }
  return acc;
}

// grad_w[k] contributed by one row (x, g): sum over the paths whose weights hold element k.
template <typename T>
FASTCG_HD T linear_grad_weight_element(const int64_t* paths, const double* coeff, int64_t P,
                                       const T* x, const T* g, int64_t k) {
  T acc = T(0);
  for (int64_t q = 0; q < P; ++q) {
    const int64_t* p = paths + q * L_NCOLS;
    const int64_t mi = p[L_MUL_IN], mo = p[L_MUL_OUT], d = p[L_IR_DIM];
    if (k < p[L_WOFF] || k >= p[L_WOFF] + mi * mo) continue;
    const int64_t u = (k - p[L_WOFF]) / mo, v = (k - p[L_WOFF]) % mo;
    const T* a = x + p[L_OFF_IN] + u * d;
    const T* b = g + p[L_OFF_OUT] + v * d;
    T s = T(0);
    for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
    acc += T(coeff[q]) * s;
  }
  return acc;
}

// Whether a path stays inside inputs of din features, outputs of dout and wn weights per row
// (any int64 entries: block_fits and product_fits cannot overflow).
FASTCG_HD bool linear_path_fits(const int64_t* p, int64_t din, int64_t dout, int64_t wn) {
  const int64_t mi = p[L_MUL_IN], mo = p[L_MUL_OUT], d = p[L_IR_DIM], wo = p[L_WOFF];
  return block_fits(p[L_OFF_IN], mi, d, din) && block_fits(p[L_OFF_OUT], mo, d, dout) && wo >= 0 &&
         wo <= wn && product_fits(mi, mo, 1, wn - wo);
}

}  // namespace fastcg
