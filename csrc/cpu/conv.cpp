// CPU fused convolution: gather + tensor product + scatter without per-edge messages.
// Destinations (and, for grad_x, sources) are grouped by a stable counting sort, so each node's
// sum runs over its edges in input order on one thread: results do not depend on threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "core/tp.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

at::Tensor conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w, const at::Tensor& src,
                const at::Tensor& dst, int64_t num_nodes, const at::Tensor& paths,
                const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t dim_out) {
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
  const bool shared = w.dim() == 1;
  auto out = at::zeros({num_nodes, dim_out}, x.options());
  std::vector<int64_t> off, order;
  csr(dst.data_ptr<int64_t>(), E, num_nodes, off, order);
  const int64_t P = paths.size(0), wn = w.size(-1);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  const int64_t* s = src.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv", [&] {
    const scalar_t *a = x.data_ptr<scalar_t>(), *b = y.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t d1 = x.size(1), d2 = y.size(1);
    at::parallel_for(0, num_nodes, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t t = off[n]; t < off[n + 1]; ++t) {
          const int64_t e = order[t];
          for (int64_t q = 0; q < P; ++q)
            tp_path_forward<scalar_t>(p + q * P_NCOLS, ci, cv, a + s[e] * d1, b + e * d2,
                                      shared ? wp : wp + e * wn, o + n * dim_out);
        }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
    const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 3> mask) {
  check_tables(paths, cg_index, cg_value);
  const int64_t E = y.size(0), N = x.size(0);
  check_rows(x, N, "x");
  check_rows(y, E, "edge_attr");
  check_like(y, x, "edge_attr");
  check_like(g, x, "grad_out");
  check_weights(w, E, x);
  TORCH_CHECK(g.dim() == 2 && g.is_contiguous(), "grad_out must be contiguous 2-D");
  check_index(src, E, N, "src");
  check_index(dst, E, g.size(0), "dst");
  check_paths(paths, cg_index, x.size(1), y.size(1), g.size(1), w.size(-1));
  const bool shared = w.dim() == 1;
  auto gx = masked(mask[0], x), gy = masked(mask[1], y), gw = masked(mask[2], w);
  std::vector<int64_t> off, order;
  if (mask[0]) csr(src.data_ptr<int64_t>(), E, N, off, order);
  const int64_t P = paths.size(0), wn = w.size(-1), dout = g.size(1);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  const int64_t *s = src.data_ptr<int64_t>(), *d = dst.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    const scalar_t *a = x.data_ptr<scalar_t>(), *b = y.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    const int64_t d1 = x.size(1), d2 = y.size(1);
    auto edge = [&](int64_t e, scalar_t* ga, scalar_t* gb, scalar_t* gW) {
      for (int64_t q = 0; q < P; ++q)
        tp_path_backward<scalar_t>(p + q * P_NCOLS, ci, cv, gp + d[e] * dout, a + s[e] * d1,
                                   b + e * d2, shared ? wp : wp + e * wn, ga, gb, gW);
    };
    if (mask[0]) {
      scalar_t* ga = gx.data_ptr<scalar_t>();
      at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t t = off[n]; t < off[n + 1]; ++t) edge(order[t], ga + n * d1, nullptr, nullptr);
      });
    }
    scalar_t* gb = mask[1] ? gy.data_ptr<scalar_t>() : nullptr;
    scalar_t* gW = mask[2] ? gw.data_ptr<scalar_t>() : nullptr;
    if (gb || (gW && !shared)) {
      at::parallel_for(0, E, 16, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e)
          edge(e, nullptr, gb ? gb + e * d2 : nullptr, (gW && !shared) ? gW + e * wn : nullptr);
      });
    }
    if (gW && shared && wn > 0)
      blocked_sum<scalar_t>(E, wn, gW, [&](int64_t e, scalar_t* acc) { edge(e, nullptr, nullptr, acc); });
  });
  return {gx, gy, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("conv", &conv);
  m.impl("conv_backward", &conv_backward);
}

}  // namespace fastcg
