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
  check_tables(paths, cg_index, cg_value);
  const int64_t E = y.size(0), N = x.size(0);
  check_rows(x, N, "x");
  check_rows(y, E, "edge_attr");
  check_like(y, x, "edge_attr");
  check_weights(w, E, x);
  check_index(src, E, N, "src");
  TORCH_CHECK(num_nodes >= 0, "num_nodes must be >= 0");
  check_index(dst, E, num_nodes, "dst");
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
  const TPPlan pl = make_plan(paths);
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

// One pass over edges grouped by source: grad_x of a node sums on one thread; grad_edge_attr and
// per-edge grad_weights rows belong to one edge; shared grad_weights sum per fixed node block.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
    const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 3> mask) {
  check_like(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.is_contiguous(), "grad_out must be contiguous 2-D");
  const int64_t dout = g.size(1);
  const ConvArgs c = check_conv(x, y, w, src, dst, g.size(0), paths, cg_index, cg_value, dout);
  // Per-edge outputs are zeroed row by row inside the edge loop (each edge is visited once):
  // a separate memset of [E, numel] weight gradients would stream them through memory twice.
  auto gx = masked(mask[0], x);
  auto gy = mask[1] ? at::empty_like(y) : at::empty({0}, y.options());
  auto gw = !mask[2]   ? at::empty({0}, w.options())
            : c.shared ? at::zeros_like(w)
                       : at::empty_like(w);
  if (c.E == 0 || !(mask[0] || mask[1] || mask[2])) return {gx, gy, gw};
  const TPPlan pl = make_plan(paths);
  std::vector<int64_t> off, order;
  csr(src.data_ptr<int64_t>(), c.E, c.N, off, order);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  const int64_t* d = dst.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    const scalar_t *a = x.data_ptr<scalar_t>(), *b = y.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    scalar_t* ga = mask[0] ? gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = mask[1] ? gy.data_ptr<scalar_t>() : nullptr;
    scalar_t* gW = mask[2] ? gw.data_ptr<scalar_t>() : nullptr;
    const auto aT = rows_to_ir_mul(a, c.N, c.d1, pl.in, pl.in_size);
    const auto gT = rows_to_ir_mul(gp, g.size(0), dout, pl.out, pl.out_size);
    const auto nodes = [&](int64_t n0, int64_t n1, scalar_t* acc) {
      Scratch<scalar_t> sc(pl, ga ? pl.in_size : 0);
      for (int64_t n = n0; n < n1; ++n) {
        if (off[n] == off[n + 1]) continue;
        std::fill(sc.accT.begin(), sc.accT.end(), scalar_t(0));
        for (int64_t t = off[n]; t < off[n + 1]; ++t) {
          const int64_t e = order[t];
          const scalar_t* we = c.shared ? wp : wp + e * c.wn;
          scalar_t* gye = gb ? gb + e * c.d2 : nullptr;
          scalar_t* gwe = gW ? (c.shared ? acc : gW + e * c.wn) : nullptr;
          if (gye) std::fill(gye, gye + c.d2, scalar_t(0));
          if (gwe && !c.shared) std::fill(gwe, gwe + c.wn, scalar_t(0));
          if (!pl.fast.empty())
            fast_backward(pl, ci, cv, aT.data() + n * pl.in_size, gT.data() + d[e] * pl.out_size,
                          b + e * c.d2, we, ga ? sc.accT.data() : nullptr, gye, gwe, sc);
          for (int64_t q : pl.generic)
            tp_path_backward<scalar_t>(p + q * P_NCOLS, ci, cv, gp + d[e] * dout, a + n * c.d1,
                                       b + e * c.d2, we, ga ? ga + n * c.d1 : nullptr, gye, gwe);
        }
        if (ga) add_from_ir_mul(sc.accT.data(), pl.in, ga + n * c.d1);
      }
    };
    for_row_blocks<scalar_t>(c.N, (gW && c.shared) ? c.wn : 0, gW, nodes);
  });
  return {gx, gy, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("conv", &conv);
  m.impl("conv_backward", &conv_backward);
}

}  // namespace fastcg
