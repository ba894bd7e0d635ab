// CPU spherical-harmonic tiles shared by spherical_harmonics.cpp (the ops and lmax <= 4) and
// spherical_harmonics_high.cpp (lmax 5-8, built at -O2): the tile bodies, and the entry points
// per (lmax, dtype) that the ops' tables point at.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/sh.h"
#include "core/sh_eval.h"
#include "cpu/utils.h"

namespace fastcg {

struct ShCall {
  int64_t E;
  bool normalize;
  // per entry: component 1, norm 1/sqrt(2l+1), integral 1/sqrt(4pi)
  double scale[sh_dim(SH_LMAX)];
};

// One entry point per (lmax, dtype) and direction, over tiles [a, b) of the E vectors.
#define FASTCG_SH_DECLARE(L, T, S)                                                                 \
  void sh_fwd_##S##L(const ShCall& c, const T* r, T* o, int64_t a, int64_t b);                     \
  void sh_bwd_##S##L(const ShCall& c, const T* g, const T* r, T* o, int64_t a, int64_t b);         \
  void sh_dbl_##S##L(const ShCall& c, const T* q, const T* g, const T* r, T* os, T* ov, int64_t a, \
                     int64_t b);
#define FASTCG_SH_DECLARE_ALL(L) FASTCG_SH_DECLARE(L, float, f) FASTCG_SH_DECLARE(L, double, d)
FASTCG_SH_DECLARE_ALL(0)
FASTCG_SH_DECLARE_ALL(1)
FASTCG_SH_DECLARE_ALL(2)
FASTCG_SH_DECLARE_ALL(3)
FASTCG_SH_DECLARE_ALL(4)
FASTCG_SH_DECLARE_ALL(5)
FASTCG_SH_DECLARE_ALL(6)
FASTCG_SH_DECLARE_ALL(7)
FASTCG_SH_DECLARE_ALL(8)
static_assert(SH_LMAX == 8, "add entry points for the new lmax");

// Internal to each including file: the two files compile the bodies at different -O levels.
namespace {

// Lanes per tile: four AVX2 registers. Measured (lmax 3, 1e5 vectors, one thread, CPU time) for
// float fwd / bwd / double bwd: W = 8: 0.61 / 1.97 / 2.62 ms (gcc unrolls the short lane loops
// and then leaves them scalar), W = 16: 0.53 / 0.80 / 1.35, W = 32: 0.44 / 0.67 / 1.32; at
// lmax 8 float W = 32 and double W = 16 are best.
template <typename T>
constexpr int kLanes = 128 / sizeof(T);

// The polynomial's argument: u = r/|r| and inv = 1/|r| when normalizing (u = 0 and inv = 0 for a
// zero vector, which zeroes every derivative below), else u = r and inv = 1. Only an exact zero
// is masked: a NaN |r|^2 gives inv = NaN, so a vector with one NaN component is NaN in every
// component, as e3nn's r / |r| (``n2 > 0`` kept its finite components finite).
template <int W, typename T>
struct Arg {
  T x[W], y[W], z[W], inv[W];

  Arg(const T* r, bool normalize) { sh_argument<W, T>(r, W, normalize, x, y, z, inv); }

  // v <- J^T v in place, J = du/dr = (I - u u^T) / |r| (identity without normalize).
  void project(T* v, bool normalize) const {
    sh_project<W, T>(v, v + W, v + 2 * W, x, y, z, inv, normalize);
  }
};

#if defined(__GNUC__)  // gcc and clang: vector extensions
// One 256-bit register of lanes (one AVX2 register in the x86-64-v3 clone, two SSE2 halves in
// the default one), and one that may sit at any element and alias it, for loads and stores.
#if defined(__clang__)
#define FASTCG_SHUFFLE(I, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define FASTCG_SHUFFLE(I, a, b, ...) __builtin_shuffle(a, b, I{__VA_ARGS__})
#endif
constexpr int kVecBytes = 32;
template <typename T>
using Vec [[gnu::vector_size(kVecBytes)]] = T;
template <typename T>
using VecU [[gnu::vector_size(kVecBytes), gnu::aligned(alignof(T)), gnu::may_alias]] = T;
template <typename T>
constexpr int kVecLanes = kVecBytes / sizeof(T);

// r[k][j] <-> r[j][k] for a square block of registers: 24 shuffles for 8 floats, 8 for 4 doubles.
inline void transpose(Vec<float>* r) {
  using I = Vec<int32_t>;
  Vec<float> t[8], u[8];
  for (int k = 0; k < 4; ++k) {  // pairs of rows interleaved within 128-bit halves
    t[2 * k] = FASTCG_SHUFFLE(I, r[2 * k], r[2 * k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * k + 1] = FASTCG_SHUFFLE(I, r[2 * k], r[2 * k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 2; ++k)  // quadruples of rows
    for (int h = 0; h < 2; ++h) {
      // clang-format off (23.1 writes `Vec<float>&a` for this two-reference declaration)
      const Vec<float>&a = t[4 * k + h], &b = t[4 * k + 2 + h];
      // clang-format on
      u[4 * k + 2 * h] = FASTCG_SHUFFLE(I, a, b, 0, 1, 8, 9, 4, 5, 12, 13);
      u[4 * k + 2 * h + 1] = FASTCG_SHUFFLE(I, a, b, 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int k = 0; k < 4; ++k) {  // 128-bit halves of rows 0-3 with those of rows 4-7
    r[k] = FASTCG_SHUFFLE(I, u[k], u[4 + k], 0, 1, 2, 3, 8, 9, 10, 11);
    r[4 + k] = FASTCG_SHUFFLE(I, u[k], u[4 + k], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

inline void transpose(Vec<double>* r) {
  using I = Vec<int64_t>;
  const Vec<double> t0 = FASTCG_SHUFFLE(I, r[0], r[1], 0, 4, 2, 6);
  const Vec<double> t1 = FASTCG_SHUFFLE(I, r[0], r[1], 1, 5, 3, 7);
  const Vec<double> t2 = FASTCG_SHUFFLE(I, r[2], r[3], 0, 4, 2, 6);
  const Vec<double> t3 = FASTCG_SHUFFLE(I, r[2], r[3], 1, 5, 3, 7);
  r[0] = FASTCG_SHUFFLE(I, t0, t2, 0, 1, 4, 5);
  r[1] = FASTCG_SHUFFLE(I, t1, t3, 0, 1, 4, 5);
  r[2] = FASTCG_SHUFFLE(I, t0, t2, 2, 3, 6, 7);
  r[3] = FASTCG_SHUFFLE(I, t1, t3, 2, 3, 6, 7);
}

// out[t * dim + m] = s[m] * Y[m * W + t] (Y aligned to kVecBytes) through register transposes
// of N entries x N lanes; when N does not divide dim the last block of entries overlaps the one
// before it and rewrites equal values. The plain loop it replaces stayed scalar at lmax 6 (one
// load, multiply and store per value). Float forward, 1e5 vectors, one thread, lmax 3 / 6 (best
// of 300 calls): 0.61 / 3.8 ms before, 0.38 / 2.5 with the normalisation vectorised (setup.py's
// -fno-math-errno -fno-trapping-math), 0.29 / 1.8 with this store as well.
template <int dim, int W, typename T>
void store_rows(const T* s, const T* Y, T* out) {
  constexpr int N = kVecLanes<T>;
  if constexpr (dim < N) {
    for (int t = 0; t < W; ++t)
      for (int m = 0; m < dim; ++m) out[t * dim + m] = s[m] * Y[m * W + t];
  } else {
    for (int g = 0; g < W; g += N)
      for (int b = 0; b < dim; b += N) {
        const int m0 = std::min(b, dim - N);
        Vec<T> r[N];
        for (int k = 0; k < N; ++k)
          r[k] = *reinterpret_cast<const VecU<T>*>(Y + (m0 + k) * W + g) * s[m0 + k];
        transpose(r);
        for (int k = 0; k < N; ++k) *reinterpret_cast<VecU<T>*>(out + (g + k) * dim + m0) = r[k];
      }
  }
}

// The inverse, for the backward's cotangents: G[m * W + t] = s[m] * g[t * dim + m].
template <int dim, int W, typename T>
void load_rows(const T* s, const T* g, T* G) {
  constexpr int N = kVecLanes<T>;
  if constexpr (dim < N) {
    for (int t = 0; t < W; ++t)
      for (int m = 0; m < dim; ++m) G[m * W + t] = s[m] * g[t * dim + m];
  } else {
    for (int t0 = 0; t0 < W; t0 += N)
      for (int b = 0; b < dim; b += N) {
        const int m0 = std::min(b, dim - N);
        Vec<T> r[N];
        for (int k = 0; k < N; ++k)
          r[k] = *reinterpret_cast<const VecU<T>*>(g + (t0 + k) * dim + m0);
        transpose(r);
        for (int k = 0; k < N; ++k)
          *reinterpret_cast<VecU<T>*>(G + (m0 + k) * W + t0) = r[k] * s[m0 + k];
      }
  }
}
#else
constexpr int kVecBytes = 32;

template <int dim, int W, typename T>
void store_rows(const T* s, const T* Y, T* out) {
  for (int t = 0; t < W; ++t)
    for (int m = 0; m < dim; ++m) out[t * dim + m] = s[m] * Y[m * W + t];
}

template <int dim, int W, typename T>
void load_rows(const T* s, const T* g, T* G) {
  for (int t = 0; t < W; ++t)
    for (int m = 0; m < dim; ++m) G[m * W + t] = s[m] * g[t * dim + m];
}
#endif

template <int L, typename T>
struct Tile {
  static constexpr int W = kLanes<T>;
  static constexpr int dim = sh_dim(L);

  static void scales(const ShCall& c, T* s) {
    for (int m = 0; m < dim; ++m) s[m] = T(c.scale[m]);
  }

  // out[t, m] = Y_m(r_t) for W vectors.
  static void forward(const ShCall& c, const T* r, T* out) {
    T s[dim];
    alignas(kVecBytes) T Y[dim * W];
    scales(c, s);
    const Arg<W, T> a(r, c.normalize);
    sh_poly<L, 0, W, T>(a.x, a.y, a.z, Y, nullptr, nullptr);
    store_rows<dim, W>(s, Y, out);
  }

  // grad[t] = sum_m g[t, m] dY_m/dr (r_t).
  static void backward(const ShCall& c, const T* g, const T* r, T* grad) {
    T s[dim], Y[dim * W], v[3 * W] = {};
    alignas(kVecBytes) T G[dim * W];
    scales(c, s);
    const Arg<W, T> a(r, c.normalize);
    sh_poly<L, 0, W, T>(a.x, a.y, a.z, Y, nullptr, nullptr);
    load_rows<dim, W>(s, g, G);
    sh_vjp<L, W, T>(Y, G, v);
    a.project(v, c.normalize);
    for (int t = 0; t < W; ++t)
      for (int k = 0; k < 3; ++k) grad[3 * t + k] = v[k * W + t];
  }

  // Given gg (cotangent of the backward's output): gg_sh[t, m] = dY_m/dr . gg and
  // grad[t] = d/dr (sum_m g_m dY_m/dr . gg) = J^T (sum_m g_m H_m) J gg + sum_i v_i d2u_i gg.
  static void double_backward(const ShCall& c, const T* gg, const T* g, const T* r, T* gg_sh,
                              T* grad) {
    T s[dim], Y[dim * W], Wc[std::max(1, L * L) * W];
    alignas(kVecBytes) T G[dim * W], P[dim * W];
    T q[3 * W], d[3 * W], v[3 * W] = {}, hv[3 * W] = {};
    scales(c, s);
    const Arg<W, T> a(r, c.normalize);
    sh_poly<L, 0, W, T>(a.x, a.y, a.z, Y, nullptr, nullptr);
    for (int t = 0; t < W; ++t)
      for (int k = 0; k < 3; ++k) q[k * W + t] = d[k * W + t] = gg[3 * t + k];
    a.project(d, c.normalize);  // J gg: J is symmetric
    sh_jvp<L, W, T>(Y, d, P);
    store_rows<dim, W>(s, P, gg_sh);
    load_rows<dim, W>(s, g, G);
    sh_vjp<L, W, T>(Y, G, v);  // gradient in u-space, for the normalize term
    if constexpr (L >= 2) {
      sh_jvp_transpose<L, W, T>(G, d, Wc);
      sh_vjp<L - 1, W, T>(Y, Wc, hv);
    }
    a.project(hv, c.normalize);
    if (c.normalize) {
      // + sum_i v_i d2u_i/(dr dr) gg, with d2u_i/(dr_a dr_b) = (3 u_i u_a u_b - d_ia u_b
      // - d_ib u_a - d_ab u_i) / |r|^2
      for (int t = 0; t < W; ++t) {
        const T u[3] = {a.x[t], a.y[t], a.z[t]};
        const T vt[3] = {v[t], v[W + t], v[2 * W + t]};
        const T qt[3] = {q[t], q[W + t], q[2 * W + t]};
        const T vu = vt[0] * u[0] + vt[1] * u[1] + vt[2] * u[2];
        const T gu = qt[0] * u[0] + qt[1] * u[1] + qt[2] * u[2];
        const T vg = vt[0] * qt[0] + vt[1] * qt[1] + vt[2] * qt[2];
        const T i2 = a.inv[t] * a.inv[t];
        for (int b = 0; b < 3; ++b)
          hv[b * W + t] += i2 * (T(3) * vu * gu * u[b] - vg * u[b] - vt[b] * gu - qt[b] * vu);
      }
    }
    for (int t = 0; t < W; ++t)
      for (int k = 0; k < 3; ++k) grad[3 * t + k] = hv[k * W + t];
  }
};

// A partial last tile runs on zero-padded copies, through the same (inlined) tile body as full
// tiles: one copy of the body per entry point keeps the build time down.
template <typename T>
const T* padded(const T* src, int n, int w, int W, T* buf) {
  if (n == W) return src;
  std::fill(buf + n * w, buf + W * w, T(0));
  std::copy(src, src + n * w, buf);
  return buf;
}

// Tiles [t0, t1) of the E vectors.
template <int L, typename T>
void forward_tiles(const ShCall& c, const T* r, T* out, int64_t t0, int64_t t1) {
  using S = Tile<L, T>;
  constexpr int W = S::W, dim = S::dim;
  T rp[3 * W], op[dim * W];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t e = t * W;
    const int n = static_cast<int>(std::min<int64_t>(W, c.E - e));
    T* o = n == W ? out + e * dim : op;
    S::forward(c, padded(r + 3 * e, n, 3, W, rp), o);
    if (n < W) std::copy(op, op + n * dim, out + e * dim);
  }
}

template <int L, typename T>
void backward_tiles(const ShCall& c, const T* g, const T* r, T* grad, int64_t t0, int64_t t1) {
  using S = Tile<L, T>;
  constexpr int W = S::W, dim = S::dim;
  T rp[3 * W], gp[dim * W], op[3 * W];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t e = t * W;
    const int n = static_cast<int>(std::min<int64_t>(W, c.E - e));
    T* o = n == W ? grad + 3 * e : op;
    S::backward(c, padded(g + e * dim, n, dim, W, gp), padded(r + 3 * e, n, 3, W, rp), o);
    if (n < W) std::copy(op, op + 3 * n, grad + 3 * e);
  }
}

template <int L, typename T>
void double_tiles(const ShCall& c, const T* gg, const T* g, const T* r, T* gg_sh, T* grad,
                  int64_t t0, int64_t t1) {
  using S = Tile<L, T>;
  constexpr int W = S::W, dim = S::dim;
  T qp[3 * W], rp[3 * W], gp[dim * W], os[dim * W], ov[3 * W];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t e = t * W;
    const int n = static_cast<int>(std::min<int64_t>(W, c.E - e));
    T* o1 = n == W ? gg_sh + e * dim : os;
    T* o2 = n == W ? grad + 3 * e : ov;
    S::double_backward(c, padded(gg + 3 * e, n, 3, W, qp), padded(g + e * dim, n, dim, W, gp),
                       padded(r + 3 * e, n, 3, W, rp), o1, o2);
    if (n < W) {
      std::copy(os, os + n * dim, gg_sh + e * dim);
      std::copy(ov, ov + 3 * n, grad + 3 * e);
    }
  }
}

template <typename T>
using FwdFn = void (*)(const ShCall&, const T*, T*, int64_t, int64_t);
template <typename T>
using BwdFn = void (*)(const ShCall&, const T*, const T*, T*, int64_t, int64_t);
template <typename T>
using DblFn = void (*)(const ShCall&, const T*, const T*, const T*, T*, T*, int64_t, int64_t);

// Plain functions per (lmax, dtype) so the AVX2 + FMA clones apply (see cpu/utils.h). flatten:
// a clone only runs AVX2 code in what is inlined into it, and the tile bodies are too big for
// the inliner's own choice (without it the clone called SSE2 copies: 0.79 vs 0.41 ms forward).
#define FASTCG_SH_ENTRIES(L, T, S)                                                                 \
  [[gnu::flatten]] FASTCG_CLONES void sh_fwd_##S##L(const ShCall& c, const T* r, T* o, int64_t a,  \
                                                    int64_t b) {                                   \
    forward_tiles<L, T>(c, r, o, a, b);                                                            \
  }                                                                                                \
  [[gnu::flatten]] FASTCG_CLONES void sh_bwd_##S##L(const ShCall& c, const T* g, const T* r, T* o, \
                                                    int64_t a, int64_t b) {                        \
    backward_tiles<L, T>(c, g, r, o, a, b);                                                        \
  }                                                                                                \
  [[gnu::flatten]] FASTCG_CLONES void sh_dbl_##S##L(                                               \
      const ShCall& c, const T* q, const T* g, const T* r, T* os, T* ov, int64_t a, int64_t b) {   \
    double_tiles<L, T>(c, q, g, r, os, ov, a, b);                                                  \
  }
#define FASTCG_SH_ALL(L) FASTCG_SH_ENTRIES(L, float, f) FASTCG_SH_ENTRIES(L, double, d)

}  // namespace
}  // namespace fastcg
