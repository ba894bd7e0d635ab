// CPU fused convolution: gather + tensor product + scatter without per-edge messages.
// Destinations (and, for the backward, sources) are grouped by a stable counting sort, so each
// node's sum runs over its edges in input order on one thread: results do not depend on threads.
// uvu paths with a single-channel edge operand (spherical harmonics) run channel-fastest on an
// ir_mul copy of x (cpu/utils.h TPPlan); other paths run core/tp.h on the mul_ir rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "core/tp.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

struct ConvArgs {
  int64_t E, N, d1, d2, wn;
  bool shared;
};

ConvArgs check_conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                    const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                    const at::Tensor& paths, const at::Tensor& cg_index,
                    const at::Tensor& cg_value, int64_t dim_out) {
  check_features(x, "x");
  check_like(y, x, "edge_attr");
  TORCH_CHECK(y.dim() == 2, "edge_attr must be 2-D [E, dim2], got shape ", y.sizes());
  const int64_t E = y.size(0), N = x.size(0);
  check_rows(y, E, "edge_attr");
  check_weights(w, E, x);
  check_index(src, E, N, "src");
  TORCH_CHECK(num_nodes >= 0, "num_nodes must be >= 0, got ", num_nodes);
  check_index(dst, E, num_nodes, "dst");
  check_tables(paths, cg_index, cg_value);
  check_paths(paths, cg_index, x.size(1), y.size(1), dim_out, w.size(-1));
  return {E, N, x.size(1), y.size(1), w.size(-1), w.dim() == 1};
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
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  const int64_t* s = src.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv", [&] {
    const scalar_t *a = x.data_ptr<scalar_t>(), *b = y.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    at::parallel_for(0, num_nodes, 8, [&](int64_t n0, int64_t n1) {
      Scratch<scalar_t> sc(pl, pl.out_size);
      for (int64_t n = n0; n < n1; ++n) {
        if (off[n] == off[n + 1]) continue;
        std::fill(sc.accT.begin(), sc.accT.end(), scalar_t(0));
        for (int64_t t = off[n]; t < off[n + 1]; ++t) {
          const int64_t e = order[t];
          const scalar_t* we = c.shared ? wp : wp + e * c.wn;
          if (!pl.fast.empty())
            fast_forward(pl, ci, cv, aT.data() + s[e] * pl.in_size, b + e * c.d2, we,
                         sc.accT.data(), sc);
          for (int64_t q : pl.generic)
            tp_path_forward<scalar_t>(p + q * P_NCOLS, ci, cv, a + s[e] * c.d1, b + e * c.d2, we,
                                      o + n * dim_out);
        }
        add_from_ir_mul(sc.accT.data(), pl.out, o + n * dim_out);
      }
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

  void node(int64_t n, T* acc, T* gT, Scratch<T>& sc) const {
    if (off[n] == off[n + 1]) return;
    to_ir_mul(gp + n * dout, pl.out, gT);
    for (int64_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t e = order[t];
      const T* we = c.shared ? wp : wp + e * c.wn;
      T* gae = rows ? rows + (t - off[n]) * rw : nullptr;
      T* gye = gb ? gb + e * c.d2 : nullptr;
      T* gwe = gW ? (c.shared ? acc : gW + e * c.wn) : nullptr;
      if (gae) std::fill(gae, gae + rw, T(0));
      if (gye) std::fill(gye, gye + c.d2, T(0));
      if (gwe && !c.shared) std::fill(gwe, gwe + c.wn, T(0));
      if (!pl.fast.empty())
        fast_backward(pl, ci, cv, aT + s[e] * pl.in_size, gT, b + e * c.d2, we, gae, gye, gwe,
                      sc);
      for (int64_t q : pl.generic)
        tp_path_backward<T>(p + q * P_NCOLS, ci, cv, gp + n * dout, a + s[e] * c.d1,
                            b + e * c.d2, we, gae ? gae + pl.in_size : nullptr, gye, gwe);
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
  check_features(x, "x");
  check_like(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.is_contiguous(), "grad_out must be contiguous 2-D, got shape ",
              g.sizes());
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
    const BackwardChunk<scalar_t> k{
        c, pl, paths.data_ptr<int64_t>(), cg_index.data_ptr<int64_t>(), src.data_ptr<int64_t>(),
        off.data(), order.data(), cg_value.data_ptr<double>(), a, aT.data(),
        y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
        mask[1] ? gy.data_ptr<scalar_t>() : nullptr, mask[2] ? gw.data_ptr<scalar_t>() : nullptr,
        nullptr, dout, rw};
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
    if (mask[0] && pl.in_size) {
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      at::parallel_for(0, c.N, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          add_from_ir_mul(gaT.data() + r * pl.in_size, pl.in, gxp + r * c.d1);
      });
    }
  });
  return {gx, gy, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("conv", &conv);
  m.impl("conv_backward", &conv_backward);
}

}  // namespace fastcg
