// CPU fused convolution: gather + tensor product + scatter without per-edge messages.
// Destinations (and, for the backward, sources) are grouped by a stable counting sort, so each
// node's sum runs over its edges in input order on one thread: results do not depend on threads.
// uvu paths with a single-channel edge operand (spherical harmonics) run channel-fastest on an
// ir_mul copy of x (cpu/utils.h TPPlan); other paths run core/tp.h on the mul_ir rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/tp.h"
#include "cpu/conv_radial.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

struct ConvArgs {
  int64_t E, N, d1, d2, wn;
  bool shared;
};

// The checks every CPU conv shares, around its own weight check (`weights(E)`, which returns
// the weights per edge): features, edge attributes, indices, descriptor tables.
template <typename F>
ConvArgs check_graph(const at::Tensor& x, const at::Tensor& y, const at::Tensor& src,
                     const at::Tensor& dst, int64_t num_nodes, const at::Tensor& paths,
                     const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t dim_out,
                     F&& weights) {
  check_features(x, "x");
  check_like(y, x, "edge_attr");
  TORCH_CHECK(y.dim() == 2, "edge_attr must be 2-D [E, dim2], got shape ", y.sizes());
  const int64_t E = y.size(0), N = x.size(0);
  check_rows(y, E, "edge_attr");
  const int64_t wn = weights(E);
  check_index(src, E, N, "src");
  TORCH_CHECK(num_nodes >= 0, "num_nodes must be >= 0, got ", num_nodes);
  check_index(dst, E, num_nodes, "dst");
  check_tables(paths, cg_index, cg_value);
  check_paths(paths, cg_index, x.size(1), y.size(1), dim_out, wn);
  return {E, N, x.size(1), y.size(1), wn, false};
}

ConvArgs check_conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                    const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                    const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                    int64_t dim_out) {
  ConvArgs c =
      check_graph(x, y, src, dst, num_nodes, paths, cg_index, cg_value, dim_out, [&](int64_t E) {
        check_weights(w, E, x);
        return w.size(-1);
      });
  c.shared = w.dim() == 1;
  return c;
}

// The backward ops' features and grad_out: contiguous 2-D, of x's dtype and device.
void check_grad_out(const at::Tensor& g, const at::Tensor& x) {
  check_features(x, "x");
  check_like(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.is_contiguous(), "grad_out must be contiguous 2-D, got shape ",
              g.sizes());
}

// The forward of one destination node: the messages of its edges (destination-order positions
// [t0, t1)) summed into its output row o, the fast paths through the ir_mul accumulator;
// weight(e) points at edge e's weights.
template <typename T>
struct ForwardRows {
  const TPPlan& pl;
  const int64_t *p, *ci, *s, *order;
  const double* cv;
  const T *a, *aT, *b;
  int64_t d1, d2, dout;

  template <typename W>
  void node(int64_t t0, int64_t t1, W&& weight, Scratch<T>& sc, T* o) const {
    if (t0 == t1) return;
    std::fill(sc.accT.begin(), sc.accT.end(), T(0));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t e = order[t];
      const T* we = weight(e);
      if (!pl.fast.empty())
        fast_forward(pl, ci, cv, aT + s[e] * pl.in_size, b + e * d2, we, sc.accT.data(), sc);
      for (int64_t q : pl.generic)
        tp_path_forward<T>(p + q * P_NCOLS, ci, cv, a + s[e] * d1, b + e * d2, we, o);
    }
    add_from_ir_mul(sc.accT.data(), pl.out, o);
  }
};

// gx [N, d1] += the ir_mul rows gaT [N, in_size] of the fast paths' grad_x.
template <typename T>
void add_ir_mul_rows(const TPPlan& pl, const T* gaT, int64_t N, int64_t d1, T* gx) {
  if (!pl.in_size) return;
  at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) add_from_ir_mul(gaT + r * pl.in_size, pl.in, gx + r * d1);
  });
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                int64_t dim_out) {
  const ConvArgs c = check_conv(x, y, w, src, dst, num_nodes, paths, cg_index, cg_value, dim_out);
  auto out = at::zeros({num_nodes, dim_out}, x.options());
  if (c.E == 0) return out;
  const TPPlan pl = make_plan(paths, cg_index);
  std::vector<int64_t> off, order;
  csr(dst.data_ptr<int64_t>(), c.E, num_nodes, off, order);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv", [&] {
    const scalar_t* a = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    const ForwardRows<scalar_t> f{pl,
                                  paths.data_ptr<int64_t>(),
                                  cg_index.data_ptr<int64_t>(),
                                  src.data_ptr<int64_t>(),
                                  order.data(),
                                  cg_value.data_ptr<double>(),
                                  a,
                                  aT.data(),
                                  y.data_ptr<scalar_t>(),
                                  c.d1,
                                  c.d2,
                                  dim_out};
    const auto weight = [&](int64_t e) { return c.shared ? wp : wp + e * c.wn; };
    at::parallel_for(0, num_nodes, 8, [&](int64_t n0, int64_t n1) {
      Scratch<scalar_t> sc(pl, pl.out_size);
      for (int64_t n = n0; n < n1; ++n) f.node(off[n], off[n + 1], weight, sc, o + n * dim_out);
    });
  });
  return out;
}

// Adds the grad_x rows of edges [t0, t1) (destination order) to their sources: the ir_mul part
// to gaT [N, in_size], the mul_ir part to gx. Each thread owns a range of source nodes and scans
// the edges in order, so each node's sum runs in destination order on one thread.
template <typename T, typename K>
void add_to_sources(const K& k, const T* rows, int64_t t0, int64_t t1, T* gaT, T* gx) {
  const int64_t in = k.pl.in_size, d1 = k.c.d1;
  at::parallel_for(0, k.c.N, 64, [&](int64_t s0, int64_t s1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t v = k.s[k.order[t]];
      if (v < s0 || v >= s1) continue;
      const T* r = rows + (t - t0) * k.rw;
      T* o = gaT + v * in;
      for (int64_t q = 0; q < in; ++q) o[q] += r[q];
      if (k.rw > in)
        for (int64_t q = 0; q < d1; ++q) gx[v * d1 + q] += r[in + q];
    }
  });
}

// Destination nodes [n0, n1) whose edges, about `chunk` of them, form one backward chunk (at
// least one node each); boundaries depend on the graph only.
std::vector<int64_t> node_chunks(const std::vector<int64_t>& off, int64_t chunk) {
  const int64_t M = int64_t(off.size()) - 1;
  std::vector<int64_t> at{0};
  for (int64_t n = 1; n <= M; ++n)
    if (n == M || off[n + 1] - off[at.back()] > chunk) at.push_back(n);
  return at;
}

// Edges per chunk when grad_x is wanted: its rows (rw values per edge) stay in cache between
// the chunk's compute and its scatter (1,024 x 576 float64 is 4.7 MB).
constexpr int64_t kEdgeChunk = 1024;

// The backward of one chunk: edges [t0, t1) of destination order, grad_x rows of edge t at
// rows + (t - t0) * rw: [in_size] ir_mul for the fast paths, then [d1] mul_ir for the others.
template <typename T>
struct BackwardChunk {
  const ConvArgs& c;
  const TPPlan& pl;
  const int64_t *p, *ci, *s, *off, *order;
  const double* cv;
  const T *a, *aT, *b, *wp, *gp;
  T *gb, *gW, *rows;
  int64_t dout, rw;
  int64_t e0 = 0;    // edge of wp's and gW's first row (conv_radial: a block's weights)
  bool zero = true;  // false: add to the per-edge outputs (the double backward sums terms)

  void node(int64_t n, T* acc, T* gT, Scratch<T>& sc) const {
    if (off[n] == off[n + 1]) return;
    to_ir_mul(gp + n * dout, pl.out, gT);
    for (int64_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t e = order[t];
      const T* we = c.shared ? wp : wp + (e - e0) * c.wn;
      T* gae = rows ? rows + (t - off[n]) * rw : nullptr;
      T* gye = gb ? gb + e * c.d2 : nullptr;
      T* gwe = gW ? (c.shared ? acc : gW + (e - e0) * c.wn) : nullptr;
      if (gae && zero) std::fill(gae, gae + rw, T(0));
      if (gye && zero) std::fill(gye, gye + c.d2, T(0));
      if (gwe && zero && !c.shared) std::fill(gwe, gwe + c.wn, T(0));
      if (!pl.fast.empty())
        fast_backward(pl, ci, cv, aT + s[e] * pl.in_size, gT, b + e * c.d2, we, gae, gye, gwe, sc);
      for (int64_t q : pl.generic)
        tp_path_backward<T>(p + q * P_NCOLS, ci, cv, gp + n * dout, a + s[e] * c.d1, b + e * c.d2,
                            we, gae ? gae + pl.in_size : nullptr, gye, gwe);
    }
  }
};

// Edges grouped by destination, as in the forward: a node's grad_out row is made ir_mul once and
// stays in cache while its edges gather x[src] rows (the feature width, not the output's).
// Grouping by source instead gathered a grad_out row per edge: conv-64x3 reads 54 KB (float64)
// per edge from a 108 MB array (twice L3), and the backward took 2.5x float32's time.
// grad_x: a chunk's per-edge rows are added to their source nodes by threads owning ranges of
// source nodes, in destination order: every sum has one order whatever the thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
    const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 3> mask) {
  check_grad_out(g, x);
  const int64_t dout = g.size(1), M = g.size(0);
  const ConvArgs c = check_conv(x, y, w, src, dst, M, paths, cg_index, cg_value, dout);
  // Per-edge outputs are zeroed row by row inside the edge loop (each edge is visited once):
  // a separate memset of [E, numel] weight gradients would stream them through memory twice.
  auto gx = masked(mask[0], x);
  auto gy = mask[1] ? at::empty_like(y) : at::empty({0}, y.options());
  auto gw = !mask[2]   ? at::empty({0}, w.options())
            : c.shared ? at::zeros_like(w)
                       : at::empty_like(w);
  if (c.E == 0 || !(mask[0] || mask[1] || mask[2])) return {gx, gy, gw};
  const TPPlan pl = make_plan(paths, cg_index);
  std::vector<int64_t> off, order;
  csr(dst.data_ptr<int64_t>(), c.E, M, off, order);
  const int64_t rw = mask[0] ? pl.in_size + (pl.generic.empty() ? 0 : c.d1) : 0;
  const auto chunks = node_chunks(off, mask[0] ? kEdgeChunk : c.E);
  int64_t max_chunk = 0;
  for (size_t q = 0; q + 1 < chunks.size(); ++q)
    max_chunk = std::max(max_chunk, off[chunks[q + 1]] - off[chunks[q]]);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    const scalar_t* a = x.data_ptr<scalar_t>();
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    std::vector<scalar_t> rows(rw * max_chunk);
    std::vector<scalar_t> gaT(mask[0] ? c.N * pl.in_size : 0);
    const BackwardChunk<scalar_t> k{c,
                                    pl,
                                    paths.data_ptr<int64_t>(),
                                    cg_index.data_ptr<int64_t>(),
                                    src.data_ptr<int64_t>(),
                                    off.data(),
                                    order.data(),
                                    cg_value.data_ptr<double>(),
                                    a,
                                    aT.data(),
                                    y.data_ptr<scalar_t>(),
                                    w.data_ptr<scalar_t>(),
                                    g.data_ptr<scalar_t>(),
                                    mask[1] ? gy.data_ptr<scalar_t>() : nullptr,
                                    mask[2] ? gw.data_ptr<scalar_t>() : nullptr,
                                    nullptr,
                                    dout,
                                    rw};
    for (size_t q = 0; q + 1 < chunks.size(); ++q) {
      const int64_t n0 = chunks[q], n1 = chunks[q + 1];
      const auto nodes = [&](int64_t r0, int64_t r1, scalar_t* acc) {
        Scratch<scalar_t> sc(pl, 0);
        std::vector<scalar_t> gT(pl.out_size);
        BackwardChunk<scalar_t> kc = k;
        for (int64_t n = n0 + r0; n < n0 + r1; ++n) {
          kc.rows = rw ? rows.data() + (off[n] - off[n0]) * rw : nullptr;
          kc.node(n, acc, gT.data(), sc);
        }
      };
      for_row_blocks<scalar_t>(n1 - n0, (k.gW && c.shared) ? c.wn : 0, k.gW, nodes);
      if (rw) add_to_sources(k, rows.data(), off[n0], off[n1], gaT.data(), gx.data_ptr<scalar_t>());
    }
    if (mask[0]) add_ir_mul_rows(pl, gaT.data(), c.N, c.d1, gx.data_ptr<scalar_t>());
  });
  return {gx, gy, gw};
}

// ---- convs with weights made in the kernel (cpu/conv_radial.h) ----

// BLAS's Fortran GEMM, called single-threaded inside the kernels' parallel regions. PyTorch's
// x86 builds export MKL's; weak, so that a torch without it (another BLAS) falls back to at::mm.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*, const int*)
    __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

// A column-major [rows, cols] matrix with leading dimension ld, as a tensor view.
template <typename T>
at::Tensor colmajor(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {cols, rows}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value))
      .t();
}

// Column-major C [m, n] = op(A) op(B) + beta C, beta 0 or 1 (BLAS's conventions).
template <typename T>
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  const int im = int(m), in = int(n), ik = int(k), ilda = int(lda), ildb = int(ldb),
            ildc = int(ldc);
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) return sgemm_(&ta, &tb, &im, &in, &ik, &one, A, &ilda, B, &ildb, &beta, C, &ildc);
  } else {
    if (dgemm_) return dgemm_(&ta, &tb, &im, &in, &ik, &one, A, &ilda, B, &ildb, &beta, C, &ildc);
  }
  const at::Tensor a = ta == 'N' ? colmajor(A, m, k, lda) : colmajor(A, k, m, lda).t();
  const at::Tensor b = tb == 'N' ? colmajor(B, k, n, ldb) : colmajor(B, n, k, ldb).t();
  at::Tensor c = colmajor(C, m, n, ldc);
  if (beta == T(0)) {
    c.copy_(at::mm(a, b));
  } else {
    c.add_(at::mm(a, b));
  }
}

// Cubic Hermite weights of edge length r: rows [G + 1, 2, wn] of values and step-scaled
// derivatives; w = h00 f_i + h10 d_i + h01 f_i+1 + h11 d_i+1 at t = r / step - i.
template <typename T>
FASTCG_HDI void spline_row_impl(const T* tab, int64_t G, T step, int64_t wn, T r, T* w) {
  const T x = r / step;
  const int64_t i = std::min<int64_t>(int64_t(x), G - 1);
  const T t = x - T(i), t2 = t * t, t3 = t2 * t;
  const T h00 = 2 * t3 - 3 * t2 + 1, h10 = t3 - 2 * t2 + t, h01 = 3 * t2 - 2 * t3, h11 = t3 - t2;
  const T *f0 = tab + i * 2 * wn, *d0 = f0 + wn, *f1 = d0 + wn, *d1 = f1 + wn;
  for (int64_t k = 0; k < wn; ++k) w[k] = h00 * f0[k] + h10 * d0[k] + h01 * f1[k] + h11 * d1[k];
}

// d/dr of spline_row_impl's weights contracted with gw: sum_k gw[k] dw_k/dr.
template <typename T>
FASTCG_HDI T spline_grad_impl(const T* tab, int64_t G, T step, int64_t wn, T r, const T* gw) {
  const T x = r / step;
  const int64_t i = std::min<int64_t>(int64_t(x), G - 1);
  const T t = x - T(i), t2 = t * t;
  const T p00 = 6 * t2 - 6 * t, p10 = 3 * t2 - 4 * t + 1, p11 = 3 * t2 - 2 * t;
  const T *f0 = tab + i * 2 * wn, *d0 = f0 + wn, *f1 = d0 + wn, *d1 = f1 + wn;
  constexpr int L = 8;  // independent partial sums: the loop vectorises without reassociation
  T acc[L] = {};
  int64_t k = 0;
  for (; k + L <= wn; k += L)
    for (int j = 0; j < L; ++j)
      acc[j] += gw[k + j] * (p00 * (f0[k + j] - f1[k + j]) + p10 * d0[k + j] + p11 * d1[k + j]);
  T sum = 0;
  for (; k < wn; ++k) sum += gw[k] * (p00 * (f0[k] - f1[k]) + p10 * d0[k] + p11 * d1[k]);
  for (int j = 0; j < L; ++j) sum += acc[j];
  return sum / step;
}

#define FASTCG_SPLINE_FOR(T)                                                                       \
  [[maybe_unused]] FASTCG_CLONES static void spline_row(const T* tab, int64_t G, T step,           \
                                                        int64_t wn, T r, T* w) {                   \
    spline_row_impl<T>(tab, G, step, wn, r, w);                                                    \
  }                                                                                                \
  [[maybe_unused]] FASTCG_CLONES static T spline_grad(const T* tab, int64_t G, T step, int64_t wn, \
                                                      T r, const T* gw) {                          \
    return spline_grad_impl<T>(tab, G, step, wn, r, gw);                                           \
  }
FASTCG_SPLINE_FOR(float)
FASTCG_SPLINE_FOR(double)
#undef FASTCG_SPLINE_FOR

// Weights a thread makes at once: 512 KB of float32 stay in L2 between the GEMM (or spline)
// that writes them and the tensor product that reads them, where csrc/conv_radial.cpp's
// device-agnostic chunks (8 MB, both threads) went through L3. FASTCG_CONV_RADIAL_CHUNK
// overrides it (the tests make small inputs take many blocks).
int64_t weight_block(int64_t wn) {
  int64_t budget = int64_t{1} << 17;
  if (const char* env = std::getenv("FASTCG_CONV_RADIAL_CHUNK")) {
    const long long v = std::atoll(env);
    if (v > 0) budget = v;
  }
  return std::max<int64_t>(1, budget / std::max<int64_t>(wn, 1));
}

template <typename T>
struct Weights {
  const WeightSource& s;
  const T *a, *b;
  int64_t K, wn, G;
  T step;

  Weights(const WeightSource& src)
      : s(src), a(src.a.data_ptr<T>()), b(src.b.data_ptr<T>()), K(src.table ? 1 : src.a.size(1)),
        wn(src.numel()), G(src.table ? src.b.size(0) - 1 : 0), step(T(src.step)) {}

  // w [e1 - e0, wn] = the weights of edges [e0, e1)
  void make(int64_t e0, int64_t e1, T* w) const {
    if (e1 == e0) return;
    if (s.table) {
      for (int64_t e = e0; e < e1; ++e) spline_row(b, G, step, wn, a[e], w + (e - e0) * wn);
      return;
    }
    // row-major w = a[e0:e1] @ b, as column-major w^T = b^T a^T
    gemm<T>('N', 'N', wn, e1 - e0, K, b, wn, a + e0 * K, K, T(0), w, wn);
  }

  // ga rows [e0, e1) (gradients of a) from the weights' gradient gw; gb += that block's part of
  // the gradient of b (matmul source only; nullptr: not wanted)
  void back(int64_t e0, int64_t e1, const T* gw, T* ga, T* gb) const {
    if (e1 == e0) return;
    if (s.table) {
      if (ga)
        for (int64_t e = e0; e < e1; ++e)
          ga[e] = spline_grad(b, G, step, wn, a[e], gw + (e - e0) * wn);
      return;
    }
    if (ga)  // ga = gw @ b^T
      gemm<T>('T', 'N', K, e1 - e0, wn, b, wn, gw, wn, T(0), ga + e0 * K, K);
    if (gb)  // gb += a[e0:e1]^T @ gw
      gemm<T>('N', 'T', wn, K, e1 - e0, gw, wn, a + e0 * K, K, T(1), gb, wn);
  }
};

// Checks of the graph and the weight source.
ConvArgs check_weighted(const at::Tensor& x, const at::Tensor& y, const WeightSource& w,
                        const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                        const at::Tensor& paths, const at::Tensor& cg_index,
                        const at::Tensor& cg_value, int64_t dim_out) {
  return check_graph(x, y, src, dst, num_nodes, paths, cg_index, cg_value, dim_out, [&](int64_t E) {
    check_like(w.a, x, w.table ? "r" : "radial");
    check_like(w.b, x, w.table ? "table" : "radial_weight");
    TORCH_CHECK(w.a.is_contiguous() && w.b.is_contiguous(), "the weight source must be contiguous");
    if (w.table) {
      TORCH_CHECK(w.a.dim() == 1 && w.a.size(0) == E, "r must be [num_edges]");
      TORCH_CHECK(w.b.dim() == 3 && w.b.size(0) >= 2 && w.b.size(1) == 2,
                  "table must be [G + 1, 2, numel] with G >= 1, got ", w.b.sizes());
      TORCH_CHECK(std::isfinite(w.step) && w.step > 0, "step must be positive, got ", w.step);
    } else {
      TORCH_CHECK(w.a.dim() == 2 && w.a.size(0) == E, "radial must be [num_edges, K]");
      TORCH_CHECK(w.b.dim() == 2 && w.b.size(0) == w.a.size(1),
                  "radial_weight must be [K, numel] with K = radial.shape[1]");
    }
    return w.numel();
  });
}

// Per-thread scratch blocks, allocated once per call (a fresh 512 KB vector per block would be
// a fresh mmap and its page faults).
template <typename T>
struct ThreadBlocks {
  int64_t size;
  std::vector<std::vector<T>> w, gw;
  ThreadBlocks(int64_t sz, bool grad)
      : size(sz), w(at::get_num_threads()), gw(grad ? at::get_num_threads() : 0) {}
  T* get(std::vector<std::vector<T>>& v) {
    auto& b = v[at::get_thread_num()];
    if (int64_t(b.size()) < size) b.resize(size);
    return b.data();
  }
};

inline bool is_identity(const std::vector<int64_t>& order) {
  for (size_t t = 0; t < order.size(); ++t)
    if (order[t] != int64_t(t)) return false;
  return true;
}

inline int64_t max_degree(const std::vector<int64_t>& off) {
  int64_t d = 0;
  for (size_t n = 0; n + 1 < off.size(); ++n) d = std::max(d, off[n + 1] - off[n]);
  return d;
}

// Nodes [n, m) from n whose edges fit `block` (at least node n): one block of weights.
inline int64_t block_end(const std::vector<int64_t>& off, int64_t n, int64_t end, int64_t block) {
  int64_t m = n + 1;
  while (m < end && off[m + 1] - off[n] <= block) ++m;
  return m;
}

// The blocked backward's plan over destination-sorted edges: the CSR, the weight blocks, and
// the chunks whose grad_x rows (rw values per edge) stay in cache between compute and scatter.
struct WeightedPlan {
  TPPlan pl;
  std::vector<int64_t> off, order, chunks;
  int64_t wblock = 0, block = 0, rw = 0, max_chunk = 0;

  WeightedPlan(const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& dst,
               const ConvArgs& c, int64_t num_nodes, bool grad_x)
      : pl(make_plan(paths, cg_index)) {
    csr(dst.data_ptr<int64_t>(), c.E, num_nodes, off, order);
    TORCH_CHECK(is_identity(order), "conv_weighted_cpu: edges must be sorted by destination");
    wblock = weight_block(c.wn), block = std::max(wblock, max_degree(off));
    rw = grad_x ? pl.in_size + (pl.generic.empty() ? 0 : c.d1) : 0;
    chunks = node_chunks(off, grad_x ? kEdgeChunk : c.E);
    for (size_t q = 0; q + 1 < chunks.size(); ++q)
      max_chunk = std::max(max_chunk, off[chunks[q + 1]] - off[chunks[q]]);
  }
};

}  // namespace

void check_table_lengths(const at::Tensor& r, int64_t knots, double step) {
  TORCH_CHECK(r.device().is_cpu() && r.dim() == 1 && knots >= 2, "check_table_lengths: bad input");
  const double top = double(knots - 1) * step * (1 + 1e-5);
  const at::Tensor rc = r.contiguous();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "check_table_lengths", [&] {
    const scalar_t* p = rc.data_ptr<scalar_t>();
    std::atomic<int64_t> bad{rc.numel()};
    at::parallel_for(0, rc.numel(), 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const double v = p[e];
        if (!(v >= 0 && v <= top)) {  // NaN fails too
          int64_t cur = bad.load();
          while (e < cur && !bad.compare_exchange_weak(cur, e)) {
          }
          break;
        }
      }
    });
    const int64_t e = bad.load();
    TORCH_CHECK(e == rc.numel(), "conv_tabulated: edge ", e, " has length ",
                e < rc.numel() ? double(p[e]) : 0.0, " outside the table's [0, ",
                double(knots - 1) * step, "]");
  });
}

at::Tensor conv_weighted_cpu(const at::Tensor& x, const at::Tensor& y, const WeightSource& ws,
                             const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                             const at::Tensor& paths, const at::Tensor& cg_index,
                             const at::Tensor& cg_value, int64_t dim_out) {
  const ConvArgs c =
      check_weighted(x, y, ws, src, dst, num_nodes, paths, cg_index, cg_value, dim_out);
  auto out = at::zeros({num_nodes, dim_out}, x.options());
  if (c.E == 0) return out;
  const TPPlan pl = make_plan(paths, cg_index);
  std::vector<int64_t> off, order;
  csr(dst.data_ptr<int64_t>(), c.E, num_nodes, off, order);
  // csrc/conv_radial.cpp sorts: a block of nodes' weights are then rows [off[n], off[m])
  TORCH_CHECK(is_identity(order), "conv_weighted_cpu: edges must be sorted by destination");
  const int64_t wblock = weight_block(c.wn), block = std::max(wblock, max_degree(off));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_weighted", [&] {
    const Weights<scalar_t> wsrc(ws);
    const scalar_t* a = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    const ForwardRows<scalar_t> f{pl,
                                  paths.data_ptr<int64_t>(),
                                  cg_index.data_ptr<int64_t>(),
                                  src.data_ptr<int64_t>(),
                                  order.data(),
                                  cg_value.data_ptr<double>(),
                                  a,
                                  aT.data(),
                                  y.data_ptr<scalar_t>(),
                                  c.d1,
                                  c.d2,
                                  dim_out};
    ThreadBlocks<scalar_t> tb(block * c.wn, false);
    at::parallel_for(0, num_nodes, 8, [&](int64_t n0, int64_t n1) {
      Scratch<scalar_t> sc(pl, pl.out_size);
      scalar_t* wb = tb.get(tb.w);
      for (int64_t n = n0; n < n1;) {
        const int64_t m = block_end(off, n, n1, wblock), e0 = off[n];
        wsrc.make(e0, off[m], wb);
        const auto weight = [&](int64_t e) { return wb + (e - e0) * c.wn; };
        for (int64_t v = n; v < m; ++v) f.node(off[v], off[v + 1], weight, sc, o + v * dim_out);
        n = m;
      }
    });
  });
  return out;
}

// conv_backward's chunks, blocks and source-owned grad_x sums, with each block's weights made
// (and their gradient consumed: gh = gw W^T, gW += h^T gw, or the spline's d/dr) by the thread
// that runs it. gW's partials are per fixed block of nodes (for_row_blocks): every sum has one
// order whatever the thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_weighted_backward_cpu(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const WeightSource& ws,
    const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 4> mask) {
  check_grad_out(g, x);
  const int64_t dout = g.size(1), M = g.size(0);
  const ConvArgs c = check_weighted(x, y, ws, src, dst, M, paths, cg_index, cg_value, dout);
  TORCH_CHECK(!(mask[3] && ws.table), "conv_tabulated: the table has no gradient");
  auto gx = masked(mask[0], x);
  auto gy = mask[1] ? at::empty_like(y) : at::empty({0}, y.options());
  auto ga = mask[2] ? at::empty_like(ws.a) : at::empty({0}, x.options());
  auto gb = mask[3] ? at::zeros_like(ws.b) : at::empty({0}, x.options());
  if (mask[2] && c.E == 0) ga.zero_();
  const bool want_gw = mask[2] || mask[3];
  if (c.E == 0 || !(mask[0] || mask[1] || want_gw)) return {gx, gy, ga, gb};
  const WeightedPlan plan(paths, cg_index, dst, c, M, mask[0]);
  const TPPlan& pl = plan.pl;
  const auto &off = plan.off, &order = plan.order, &chunks = plan.chunks;
  const int64_t wblock = plan.wblock, block = plan.block, rw = plan.rw;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_weighted_backward", [&] {
    const Weights<scalar_t> wsrc(ws);
    const scalar_t* a = x.data_ptr<scalar_t>();
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    std::vector<scalar_t> rows(rw * plan.max_chunk);
    std::vector<scalar_t> gaT(mask[0] ? c.N * pl.in_size : 0);
    ThreadBlocks<scalar_t> tb(block * c.wn, want_gw);
    scalar_t* gap = mask[2] ? ga.data_ptr<scalar_t>() : nullptr;
    const BackwardChunk<scalar_t> k{c,
                                    pl,
                                    paths.data_ptr<int64_t>(),
                                    cg_index.data_ptr<int64_t>(),
                                    src.data_ptr<int64_t>(),
                                    off.data(),
                                    order.data(),
                                    cg_value.data_ptr<double>(),
                                    a,
                                    aT.data(),
                                    y.data_ptr<scalar_t>(),
                                    nullptr,
                                    g.data_ptr<scalar_t>(),
                                    mask[1] ? gy.data_ptr<scalar_t>() : nullptr,
                                    nullptr,
                                    nullptr,
                                    dout,
                                    rw};
    for (size_t q = 0; q + 1 < chunks.size(); ++q) {
      const int64_t n0 = chunks[q], n1 = chunks[q + 1];
      const auto nodes = [&](int64_t r0, int64_t r1, scalar_t* acc) {
        Scratch<scalar_t> sc(pl, 0);
        std::vector<scalar_t> gT(pl.out_size);
        BackwardChunk<scalar_t> kc = k;
        scalar_t* wb = tb.get(tb.w);
        scalar_t* gwb = want_gw ? tb.get(tb.gw) : nullptr;
        for (int64_t n = n0 + r0; n < n0 + r1;) {
          const int64_t m = block_end(off, n, n0 + r1, wblock), e0 = off[n], e1 = off[m];
          wsrc.make(e0, e1, wb);
          kc.wp = wb, kc.gW = gwb, kc.e0 = e0;
          for (int64_t v = n; v < m; ++v) {
            kc.rows = rw ? rows.data() + (off[v] - off[n0]) * rw : nullptr;
            kc.node(v, nullptr, gT.data(), sc);
          }
          if (want_gw) wsrc.back(e0, e1, gwb, gap, acc);
          n = m;
        }
      };
      const int64_t width = mask[3] ? ws.b.numel() : 0;
      for_row_blocks<scalar_t>(n1 - n0, width, mask[3] ? gb.data_ptr<scalar_t>() : nullptr, nodes);
      if (rw) add_to_sources(k, rows.data(), off[n0], off[n1], gaT.data(), gx.data_ptr<scalar_t>());
    }
    if (mask[0]) add_ir_mul_rows(pl, gaT.data(), c.N, c.d1, gx.data_ptr<scalar_t>());
  });
  return {gx, gy, ga, gb};
}

// conv_radial's double backward in one pass (see cpu/conv_radial.h): with w = h W and
// ggw = ggh W + h ggW, d_g = T(ggx, y, w) + T(x, ggy, w) + T(x, y, ggw), d_x = T_a(g, ggy, w) +
// T_a(g, y, ggw), d_y = T_b(g, ggx, w) + T_b(g, x, ggw), and through gw = T_c(ggx, y, g) +
// T_c(x, ggy, g) and gw0 = T_c(x, y, g): d_h = gw W^T + gw0 ggW^T, d_W = h^T gw + ggh^T gw0.
// A block's w and ggw are made once for every term and its gw / gw0 consumed at once: composed
// of the first-order ops, each term made its own (11 radial GEMMs per MACE interaction, not 5).
// Chunks, blocks and sums are conv_weighted_backward_cpu's: one order whatever the thread count.
std::array<at::Tensor, 5> conv_radial_double_backward_cpu(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
    const at::Tensor& W, const at::Tensor& ggx, const at::Tensor& ggy, const at::Tensor& ggh,
    const at::Tensor& ggW, const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 5> mask) {
  check_grad_out(g, x);
  const int64_t dout = g.size(1), M = g.size(0);
  const WeightSource ws{false, h, W};
  const ConvArgs c = check_weighted(x, y, ws, src, dst, M, paths, cg_index, cg_value, dout);
  const std::pair<const at::Tensor*, const at::Tensor*> gg[] = {
      {&ggx, &x}, {&ggy, &y}, {&ggh, &h}, {&ggW, &W}};
  const char* gg_names[] = {"grad_grad_x", "grad_grad_edge_attr", "grad_grad_radial",
                            "grad_grad_radial_weight"};
  for (int i = 0; i < 4; ++i) {
    const auto [t, like] = gg[i];
    if (!t->defined()) continue;
    check_like(*t, x, gg_names[i]);
    TORCH_CHECK(t->sizes() == like->sizes() && t->is_contiguous(), gg_names[i],
                " must be contiguous of shape ", like->sizes(), ", got ", t->sizes());
  }
  const int64_t* pp = paths.data_ptr<int64_t>();
  for (int64_t q = 0; q < paths.size(0); ++q)  // T(x, y, ggw) would count weightless paths
    TORCH_CHECK(pp[q * P_NCOLS + P_WOFF] >= 0, "conv_radial_double_backward_cpu: path ", q,
                " has no weights (csrc/conv_radial.cpp composes the first-order ops for those)");
  const bool has_x = ggx.defined(), has_y = ggy.defined(), has_h = ggh.defined(),
             has_W = ggW.defined(), uses_w = has_x || has_y, uses_gg = has_h || has_W;
  const bool want_gw = uses_w && (mask[3] || mask[4]);
  const bool want_gw0 = (has_h && mask[4]) || (has_W && mask[3]);
  // the three forward terms (d_g) and the three backward ones, each (a, b, weights)
  const bool f1 = mask[0] && has_x, f2 = mask[0] && has_y, f3 = mask[0] && uses_gg;
  const bool b1 = has_y && (mask[1] || want_gw);                // (x, ggy, w)
  const bool b2 = uses_gg && (mask[1] || mask[2] || want_gw0);  // (x, y, ggw)
  const bool b3 = has_x && (mask[2] || want_gw);                // (ggx, y, w)
  auto d_g = masked(mask[0], g), d_x = masked(mask[1], x), d_y = masked(mask[2], y),
       d_h = masked(mask[3], h), d_W = masked(mask[4], W);
  if (c.E == 0 || !(f1 || f2 || f3 || b1 || b2 || b3)) return {d_g, d_x, d_y, d_h, d_W};
  const WeightedPlan plan(paths, cg_index, dst, c, M, mask[1]);
  const TPPlan& pl = plan.pl;
  const auto &off = plan.off, &order = plan.order, &chunks = plan.chunks;
  const int64_t wblock = plan.wblock, block = plan.block, rw = plan.rw;
  // ggw's source: [ggh | h] [W ; ggW]
  const WeightSource ws2{false,
                         has_h && has_W ? at::cat({ggh, h}, 1)
                         : has_h        ? ggh
                                        : h,
                         has_h && has_W  ? at::cat({W, ggW}, 0)
                         : has_h         ? W
                         : ggW.defined() ? ggW
                                         : W};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_radial_double_backward", [&] {
    using T = scalar_t;
    const Weights<T> wsrc(ws), wsrc2(ws2);
    const int64_t K = h.size(1), wn = c.wn;
    const T* a = x.data_ptr<T>();
    const T* b = y.data_ptr<T>();
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    const T* gga = has_x ? ggx.data_ptr<T>() : nullptr;
    const auto ggaT = has_x ? rows_to_ir_mul(gga, c.N, c.d1, pl.in, pl.in_size) : std::vector<T>();
    const T* ggb = has_y ? ggy.data_ptr<T>() : nullptr;
    T* gdy = mask[2] ? d_y.data_ptr<T>() : nullptr;
    T* gdh = mask[3] ? d_h.data_ptr<T>() : nullptr;
    T* gdg = mask[0] ? d_g.data_ptr<T>() : nullptr;
    std::vector<T> rows(rw * plan.max_chunk);
    std::vector<T> gaT(mask[1] ? c.N * pl.in_size : 0);
    ThreadBlocks<T> tb(block * wn, true), tb2(block * wn, true);
    const int64_t *p = pp, *ci = cg_index.data_ptr<int64_t>(), *s = src.data_ptr<int64_t>();
    const double* cv = cg_value.data_ptr<double>();
    const ForwardRows<T> f0{pl, p, ci, s, order.data(), cv, a, aT.data(), b, c.d1, c.d2, dout};
    ForwardRows<T> fx = f0, fy = f0;
    fx.a = gga, fx.aT = ggaT.data(), fy.b = ggb;
    const BackwardChunk<T> k0{
        c,       pl,      p,         ci, s,       off.data(),      order.data(),
        cv,      a,       aT.data(), b,  nullptr, g.data_ptr<T>(), nullptr,
        nullptr, nullptr, dout,      rw};
    for (size_t q = 0; q + 1 < chunks.size(); ++q) {
      const int64_t n0 = chunks[q], n1 = chunks[q + 1];
      const auto nodes = [&](int64_t r0, int64_t r1, T* acc) {
        Scratch<T> sc(pl, pl.out_size);
        std::vector<T> gT(pl.out_size);
        T* wb = uses_w ? tb.get(tb.w) : nullptr;
        T* gwb = want_gw ? tb.get(tb.gw) : nullptr;
        T* ggwb = uses_gg ? tb2.get(tb2.w) : nullptr;
        T* gw0b = want_gw0 ? tb2.get(tb2.gw) : nullptr;
        BackwardChunk<T> k1 = k0, k2 = k0, k3 = k0;  // (x, ggy, w), (x, y, ggw), (ggx, y, w)
        k1.b = ggb, k1.wp = wb, k1.gW = gwb, k1.zero = false;
        k2.wp = ggwb, k2.gW = gw0b, k2.gb = gdy, k2.zero = false;
        k3.a = gga, k3.aT = ggaT.data(), k3.wp = wb, k3.gW = gwb, k3.gb = gdy, k3.zero = false;
        for (int64_t n = n0 + r0; n < n0 + r1;) {
          const int64_t m = block_end(off, n, n0 + r1, wblock), e0 = off[n], e1 = off[m];
          if (uses_w) wsrc.make(e0, e1, wb);
          if (uses_gg) wsrc2.make(e0, e1, ggwb);
          if (gwb) std::fill(gwb, gwb + (e1 - e0) * wn, T(0));
          if (gw0b) std::fill(gw0b, gw0b + (e1 - e0) * wn, T(0));
          k1.e0 = k2.e0 = k3.e0 = e0;
          const auto w_of = [&](int64_t e) { return wb + (e - e0) * wn; };
          const auto ggw_of = [&](int64_t e) { return ggwb + (e - e0) * wn; };
          for (int64_t v = n; v < m; ++v) {
            T* o = gdg ? gdg + v * dout : nullptr;
            if (f1) fx.node(off[v], off[v + 1], w_of, sc, o);
            if (f2) fy.node(off[v], off[v + 1], w_of, sc, o);
            if (f3) f0.node(off[v], off[v + 1], ggw_of, sc, o);
            T* rv = rw ? rows.data() + (off[v] - off[n0]) * rw : nullptr;
            if (rv) std::fill(rv, rv + (off[v + 1] - off[v]) * rw, T(0));
            k1.rows = k2.rows = rv;
            if (b1) k1.node(v, nullptr, gT.data(), sc);
            if (b2) k2.node(v, nullptr, gT.data(), sc);
            if (b3) k3.node(v, nullptr, gT.data(), sc);
          }
          const int64_t ne = e1 - e0;
          if (want_gw && gdh)  // d_h += gw W^T
            gemm<T>('T', 'N', K, ne, wn, W.data_ptr<T>(), wn, gwb, wn, T(1), gdh + e0 * K, K);
          if (want_gw && acc)  // d_W += h^T gw
            gemm<T>('N', 'T', wn, K, ne, gwb, wn, h.data_ptr<T>() + e0 * K, K, T(1), acc, wn);
          if (gw0b && has_W && gdh)  // d_h += gw0 ggW^T
            gemm<T>('T', 'N', K, ne, wn, ggW.data_ptr<T>(), wn, gw0b, wn, T(1), gdh + e0 * K, K);
          if (gw0b && has_h && acc)  // d_W += ggh^T gw0
            gemm<T>('N', 'T', wn, K, ne, gw0b, wn, ggh.data_ptr<T>() + e0 * K, K, T(1), acc, wn);
          n = m;
        }
      };
      const int64_t width = mask[4] ? W.numel() : 0;
      for_row_blocks<T>(n1 - n0, width, mask[4] ? d_W.data_ptr<T>() : nullptr, nodes);
      if (rw) add_to_sources(k0, rows.data(), off[n0], off[n1], gaT.data(), d_x.data_ptr<T>());
    }
    if (mask[1]) add_ir_mul_rows(pl, gaT.data(), c.N, c.d1, d_x.data_ptr<T>());
  });
  return {d_g, d_x, d_y, d_h, d_W};
}

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("conv", &conv);
  m.impl("conv_backward", &conv_backward);
}

}  // namespace fastcg
