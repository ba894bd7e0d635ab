// MACE's symmetric contraction (product basis) for one node and W channels side by side.
//
// Per channel c the op is a polynomial in that channel's features x[c, :]:
//   out[j] = sum_p A[p] * mono[n_p],   A[p] = sum_{entries of p} coeff * weights[species, k, c]
// where mono[n] are the monomials x_i, x_i x_j, x_i x_j x_k, ... the descriptor needs, each one
// a parent monomial times one variable (a tree, parents first). Every array below is "lanes":
// [rows][W] with the W channels fastest, so a CPU thread vectorises over channels; a CUDA
// thread can run the same functions with W = 1.
#pragma once

#include "common.h"

namespace fastcg {

// Columns of the monomial table [M, 2]: parent monomial (-1 for a single variable), variable.
enum ScMonoCol : int64_t { SC_PARENT = 0, SC_VAR, SC_MONO_NCOLS };
// Columns of the pair table [P, 2] (sorted by output column): output column j, monomial n.
enum ScPairCol : int64_t { SC_OUT = 0, SC_MONO, SC_PAIR_NCOLS };
// Columns of the entry table [E, 2]: pair p, weight row k (coefficient in a float64 [E] table).
enum ScEntryCol : int64_t { SC_PAIR = 0, SC_K, SC_ENTRY_NCOLS };

// Whether row i of each table indexes inside the tensors (D features in, Dout columns out, M
// monomials, P pairs, K weight rows), for any int64 entries: nothing here can overflow. The CPU
// kernels check these with messages, the CUDA kernels assert them on the device.
FASTCG_HD bool sc_monomial_fits(const int64_t* mono, int64_t i, int64_t D) {
  const int64_t q = mono[2 * i + SC_PARENT], v = mono[2 * i + SC_VAR];
  return q >= -1 && q < i && v >= 0 && v < D;  // parents come first: the tree is built in order
}

FASTCG_HD bool sc_pair_fits(const int64_t* pairs, int64_t i, int64_t Dout, int64_t M) {
  const int64_t j = pairs[2 * i + SC_OUT], n = pairs[2 * i + SC_MONO];
  return j >= 0 && j < Dout && n >= 0 && n < M;
}

FASTCG_HD bool sc_entry_fits(const int64_t* entries, int64_t i, int64_t P, int64_t K) {
  const int64_t p = entries[2 * i + SC_PAIR], k = entries[2 * i + SC_K];
  return p >= 0 && p < P && k >= 0 && k < K;
}

// out_cols row j: (s, dim), the output irrep holding column j starts at s and spans dim columns.
FASTCG_HD bool sc_out_col_fits(const int64_t* cols, int64_t j, int64_t Dout) {
  const int64_t s = cols[2 * j], dim = cols[2 * j + 1];
  return s >= 0 && s <= j && dim > j - s && dim <= Dout - s;
}

// val[n] = val[parent] * x[var] (x[var] for a single variable).
template <typename T, int W>
FASTCG_HD void sc_monomials(const int64_t* mono, int64_t M, const T* __restrict__ x,
                            T* __restrict__ val) {
  for (int64_t n = 0; n < M; ++n) {
    const int64_t q = mono[2 * n + SC_PARENT];
    const T* xv = x + mono[2 * n + SC_VAR] * W;
    T* o = val + n * W;
    if (q < 0) {
      for (int w = 0; w < W; ++w) o[w] = xv[w];
    } else {
      const T* pv = val + q * W;
      for (int w = 0; w < W; ++w) o[w] = pv[w] * xv[w];
    }
  }
}

// dot[n]: derivative of val[n] along the tangent t of x (forward mode).
template <typename T, int W>
FASTCG_HD void sc_monomials_tangent(const int64_t* mono, int64_t M, const T* __restrict__ x,
                                    const T* __restrict__ t, const T* __restrict__ val,
                                    T* __restrict__ dot) {
  for (int64_t n = 0; n < M; ++n) {
    const int64_t q = mono[2 * n + SC_PARENT], v = mono[2 * n + SC_VAR];
    const T* xv = x + v * W;
    const T* tv = t + v * W;
    T* o = dot + n * W;
    if (q < 0) {
      for (int w = 0; w < W; ++w) o[w] = tv[w];
    } else {
      const T* pv = val + q * W;
      const T* pd = dot + q * W;
      for (int w = 0; w < W; ++w) o[w] = pd[w] * xv[w] + pv[w] * tv[w];
    }
  }
}

// out[j] += A[p] * val[n] over the pairs; A rows are lda apart (one row per pair). Pairs come
// sorted by j, so each run of equal j sums in registers and stores once.
template <typename T, int W>
FASTCG_HD void sc_contract(const int64_t* pairs, int64_t P, const T* __restrict__ A, int64_t lda,
                           const T* __restrict__ val, T* __restrict__ out) {
  for (int64_t p = 0; p < P;) {
    const int64_t j = pairs[2 * p + SC_OUT];
    T acc[W] = {};
    for (; p < P && pairs[2 * p + SC_OUT] == j; ++p) {
      const T* a = A + p * lda;
      const T* v = val + pairs[2 * p + SC_MONO] * W;
      for (int w = 0; w < W; ++w) acc[w] += a[w] * v[w];
    }
    T* o = out + j * W;
    for (int w = 0; w < W; ++w) o[w] += acc[w];
  }
}

// seed[n] += A[p] * g[j]: the adjoint of the monomials given the output cotangent g.
template <typename T, int W>
FASTCG_HD void sc_seed(const int64_t* pairs, int64_t P, const T* __restrict__ A, int64_t lda,
                       const T* __restrict__ g, T* __restrict__ seed) {
  for (int64_t p = 0; p < P; ++p) {
    const T* a = A + p * lda;
    const T* gj = g + pairs[2 * p + SC_OUT] * W;
    T* s = seed + pairs[2 * p + SC_MONO] * W;
    for (int w = 0; w < W; ++w) s[w] += a[w] * gj[w];
  }
}

// dA[p] += g[j] * val[n]: the cotangent of A (dA rows are lda apart).
template <typename T, int W>
FASTCG_HD void sc_outer(const int64_t* pairs, int64_t P, const T* __restrict__ g,
                        const T* __restrict__ val, T* __restrict__ dA, int64_t lda) {
  for (int64_t p = 0; p < P; ++p) {
    const T* gj = g + pairs[2 * p + SC_OUT] * W;
    const T* v = val + pairs[2 * p + SC_MONO] * W;
    T* d = dA + p * lda;
    for (int w = 0; w < W; ++w) d[w] += gj[w] * v[w];
  }
}

// Reverse pass through the monomial tree: adjoint a of val (consumed) into dx += d/dx.
template <typename T, int W>
FASTCG_HD void sc_monomials_backward(const int64_t* mono, int64_t M, const T* __restrict__ x,
                                     const T* __restrict__ val, T* __restrict__ a,
                                     T* __restrict__ dx) {
  for (int64_t n = M - 1; n >= 0; --n) {
    const int64_t q = mono[2 * n + SC_PARENT], v = mono[2 * n + SC_VAR];
    const T* an = a + n * W;
    T* d = dx + v * W;
    if (q < 0) {
      for (int w = 0; w < W; ++w) d[w] += an[w];
    } else {
      const T* xv = x + v * W;
      const T* pv = val + q * W;
      T* aq = a + q * W;
      for (int w = 0; w < W; ++w) {
        d[w] += an[w] * pv[w];
        aq[w] += an[w] * xv[w];
      }
    }
  }
}

// Reverse pass through val and its tangent dot (both functions of x; t fixed): adjoints a (of
// val) and ad (of dot) are consumed, dx += their total derivative w.r.t. x.
template <typename T, int W>
FASTCG_HD void sc_monomials_tangent_backward(const int64_t* mono, int64_t M,
                                             const T* __restrict__ x, const T* __restrict__ t,
                                             const T* __restrict__ val, const T* __restrict__ dot,
                                             T* __restrict__ a, T* __restrict__ ad,
                                             T* __restrict__ dx) {
  for (int64_t n = M - 1; n >= 0; --n) {
    const int64_t q = mono[2 * n + SC_PARENT], v = mono[2 * n + SC_VAR];
    const T* an = a + n * W;
    T* d = dx + v * W;
    if (q < 0) {  // val = x[v], dot = t[v]: only val depends on x
      for (int w = 0; w < W; ++w) d[w] += an[w];
    } else {  // val = val_q x_v, dot = dot_q x_v + val_q t_v
      const T* xv = x + v * W;
      const T* tv = t + v * W;
      const T* pv = val + q * W;
      const T* pd = dot + q * W;
      const T* adn = ad + n * W;
      T* aq = a + q * W;
      T* adq = ad + q * W;
      for (int w = 0; w < W; ++w) {
        d[w] += an[w] * pv[w] + adn[w] * pd[w];
        aq[w] += an[w] * xv[w] + adn[w] * tv[w];
        adq[w] += adn[w] * xv[w];
      }
    }
  }
}

}  // namespace fastcg
