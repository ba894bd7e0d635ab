// CPU kernels of the channel-fastest ("ir_mul") uvu path with mul2 == 1, where MACE and NequIP
// convolutions spend their time:
//   out[k][u] = W[u] sum_i s[i,k] x1[i][u],   s[i,k] = sum_j c_ijk x2[j] (the coupling),
// with every inner loop over channels u at unit stride. Written with GCC vector types, so the
// code is the same for float and double (one vector = 32 bytes: 8 floats, 4 doubles) and the
// compiler has nothing to guess: auto-vectorised loops over fixed-length chunks turned float64's
// dot products into transposes (vunpcklpd / vpermpd) and ran 3.0x float32's instructions.
// Only (i, k) pairs that some CG entry couples are visited (Pair lists, from the table).
#pragma once
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors never cross a call: all inlined
#include <cstdint>
#include <cstring>

namespace fastcg {

// An (i, k) pair of a path's coupling s[i * d3 + k] that the CG table couples.
struct Pair {
  int32_t i, k;
};

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename V, typename T>
inline __attribute__((always_inline)) V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline __attribute__((always_inline)) void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Forward, channels [u, u + C lanes): o[k] += W (sum over pairs (i, k) of s[i,k] a[i]) for each k
// with pairs (pairs sorted by k). W null: weight 1.
template <typename T, typename V, int C>
inline __attribute__((always_inline)) void uvu1_fwd_block(int64_t m, int64_t d3, const Pair* pb,
                                                          const Pair* pe, const T* s, const T* a,
                                                          const T* W, T* o) {
  constexpr int64_t L = sizeof(V) / sizeof(T);
  for (const Pair* q = pb; q < pe;) {
    const int32_t k = q->k;
    V acc[C];
    for (int c = 0; c < C; ++c) acc[c] = V{} + T(0);
    for (; q < pe && q->k == k; ++q) {
      const T sik = s[q->i * d3 + k];
      const T* ai = a + q->i * m;
      for (int c = 0; c < C; ++c) acc[c] += sik * load<V>(ai + c * L);
    }
    T* ok = o + k * m;
    for (int c = 0; c < C; ++c) {
      const V w = W ? load<V>(W + c * L) : V{} + T(1);
      store(ok + c * L, load<V>(ok + c * L) + w * acc[c]);
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void uvu1_fwd(int64_t m, int64_t d3, const Pair* pb,
                                                    const Pair* pe, const T* s, const T* aT,
                                                    const T* W, T* oT) {
  using V = Vec<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T), C = 4;
  int64_t u = 0;
  const auto at = [&](const T* p) { return p ? p + u : nullptr; };
  for (; u + C * L <= m; u += C * L)
    uvu1_fwd_block<T, V, C>(m, d3, pb, pe, s, aT + u, at(W), oT + u);
  for (; u + L <= m; u += L) uvu1_fwd_block<T, V, 1>(m, d3, pb, pe, s, aT + u, at(W), oT + u);
  for (; u < m; ++u) uvu1_fwd_block<T, T, 1>(m, d3, pb, pe, s, aT + u, at(W), oT + u);
}

// Backward, channels [u, u + C lanes), pairs sorted by i. With h[i] = sum_k s[i,k] g[k]:
//   ga[i] += W h[i],  gW += sum_i a[i] h[i],  Macc[i,k] += W a[i] g[k] (lanes summed later).
// GA / GW / GY say which outputs are wanted; W null: weight 1.
template <typename T, typename V, int C, bool GA, bool GW, bool GY>
inline __attribute__((always_inline)) void uvu1_bwd_block(int64_t m, int64_t d3, const Pair* pb,
                                                          const Pair* pe, const T* s, const T* a,
                                                          const T* g, const T* W, T* ga, T* gW,
                                                          T* Macc) {
  constexpr int64_t L = sizeof(V) / sizeof(T);
  V w[C], gw[C];
  for (int c = 0; c < C; ++c) {
    w[c] = W ? load<V>(W + c * L) : V{} + T(1);
    gw[c] = V{} + T(0);
  }
  for (const Pair* q = pb; q < pe;) {
    const int32_t i = q->i;
    const T* ai = a + i * m;
    V h[C], aw[C];
    for (int c = 0; c < C; ++c) {
      h[c] = V{} + T(0);
      if constexpr (GY) aw[c] = w[c] * load<V>(ai + c * L);
    }
    for (; q < pe && q->i == i; ++q) {
      const int64_t ik = i * d3 + q->k;
      const T sik = s[ik];
      const T* gk = g + q->k * m;
      V mk = V{} + T(0);
      for (int c = 0; c < C; ++c) {
        const V gv = load<V>(gk + c * L);
        if constexpr (GA || GW) h[c] += sik * gv;
        if constexpr (GY) mk += aw[c] * gv;
      }
      if constexpr (GY) store(Macc + ik * L, load<V>(Macc + ik * L) + mk);
    }
    for (int c = 0; c < C; ++c) {
      if constexpr (GA) store(ga + i * m + c * L, load<V>(ga + i * m + c * L) + w[c] * h[c]);
      if constexpr (GW) gw[c] += load<V>(ai + c * L) * h[c];
    }
  }
  if constexpr (GW)
    for (int c = 0; c < C; ++c) store(gW + c * L, load<V>(gW + c * L) + gw[c]);
}

// Scratch of uvu1_bwd: per-pair lane accumulators of M, v [d1 * d3 * lanes] for the vector
// blocks and t [d1 * d3] for the scalar tail (plain arrays: std::vector drops a vector type's
// alignment attribute).
template <typename T>
struct Uvu1Acc {
  T *v, *t;
};

template <typename T, bool GA, bool GW, bool GY>
inline __attribute__((always_inline)) void uvu1_bwd_cols(int64_t m, int64_t d3, const Pair* pb,
                                                         const Pair* pe, const T* s, const T* aT,
                                                         const T* g, const T* W, T* gaT, T* gW,
                                                         Uvu1Acc<T> M) {
  using V = Vec<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T), C = 2;
  int64_t u = 0;
  const auto at = [&](auto* p) { return p ? p + u : nullptr; };
  for (; u + C * L <= m; u += C * L)
    uvu1_bwd_block<T, V, C, GA, GW, GY>(m, d3, pb, pe, s, aT + u, g + u, at(W), at(gaT), at(gW),
                                        M.v);
  for (; u + L <= m; u += L)
    uvu1_bwd_block<T, V, 1, GA, GW, GY>(m, d3, pb, pe, s, aT + u, g + u, at(W), at(gaT), at(gW),
                                        M.v);
  for (; u < m; ++u)
    uvu1_bwd_block<T, T, 1, GA, GW, GY>(m, d3, pb, pe, s, aT + u, g + u, at(W), at(gaT), at(gW),
                                        M.t);
}

// Backward of uvu1_fwd for one row: gaT[i][u] += W[u] h[i][u], gW[u] += sum_i aT[i][u] h[i][u],
// gy[j] += sum c_ijk M[i,k] with M[i,k] = sum_u W[u] aT[i][u] g[k][u]. Null outputs are skipped.
// M: scratch of d1 * d3 vectors and scalars.
template <typename T>
inline __attribute__((always_inline)) void uvu1_bwd(int64_t m, int64_t d3, const Pair* pb,
                                                    const Pair* pe, const int64_t* cgi,
                                                    const double* cgv, int64_t begin, int64_t end,
                                                    const T* s, const T* aT, const T* g, const T* W,
                                                    T* gaT, T* gy, T* gW, Uvu1Acc<T> M) {
  constexpr int64_t L = sizeof(Vec<T>) / sizeof(T);
  if (gy)
    for (const Pair* q = pb; q < pe; ++q) {
      const int64_t ik = q->i * d3 + q->k;
      for (int64_t l = 0; l < L; ++l) M.v[ik * L + l] = T(0);
      M.t[ik] = T(0);
    }
#define FASTCG_UVU1_BWD(GA, GW, GY) \
  uvu1_bwd_cols<T, GA, GW, GY>(m, d3, pb, pe, s, aT, g, W, gaT, gW, M)
  if (gaT && gW && gy)
    FASTCG_UVU1_BWD(true, true, true);
  else if (gaT && gW)
    FASTCG_UVU1_BWD(true, true, false);
  else if (gaT && gy)
    FASTCG_UVU1_BWD(true, false, true);
  else if (gW && gy)
    FASTCG_UVU1_BWD(false, true, true);
  else if (gaT)
    FASTCG_UVU1_BWD(true, false, false);
  else if (gW)
    FASTCG_UVU1_BWD(false, true, false);
  else if (gy)
    FASTCG_UVU1_BWD(false, false, true);
#undef FASTCG_UVU1_BWD
  if (gy)
    for (int64_t n = begin; n < end; ++n) {
      const int64_t ik = cgi[3 * n] * d3 + cgi[3 * n + 2];
      T r = M.t[ik];
      for (int64_t l = 0; l < L; ++l) r += M.v[ik * L + l];
      gy[cgi[3 * n + 1]] += T(cgv[n]) * r;
    }
}

}  // namespace fastcg

#pragma GCC diagnostic pop
