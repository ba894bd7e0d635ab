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

// Raw view of one conv call (operands already in ir_mul layout).
template <typename T>
struct ConvArgs {
  const int64_t* paths;
  int64_t num_paths;
  const int64_t* cg_index;
  const double* cg_value;
  const T *x, *y, *w, *g;
  int64_t d1, d2, dout, wn;
  bool shared;
  const int64_t *src, *dst;
  const T* weights(int64_t e) const { return shared ? w : w + e * wn; }
};

// out[n] = sum over the edges order[off[n]:off[n+1]] of TP(x[src], y, w), nodes n0..n1.
template <typename T>
inline void forward_nodes(const ConvArgs<T>& A, const int64_t* off, const int64_t* order,
                          int64_t n0, int64_t n1, T* out) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t e = order[t];
      for (int64_t q = 0; q < A.num_paths; ++q)
        tp_path_forward<T>(A.paths + q * P_NCOLS, A.cg_index, A.cg_value, A.x + A.src[e] * A.d1,
                           A.y + e * A.d2, A.weights(e), out + n * A.dout);
    }
}

// Gradients of one edge: ga (row of its source), gb (its edge_attr row), gw (its weights).
template <typename T>
inline void backward_edge(const ConvArgs<T>& A, int64_t e, T* ga, T* gb, T* gw) {
  for (int64_t q = 0; q < A.num_paths; ++q)
    tp_path_backward<T>(A.paths + q * P_NCOLS, A.cg_index, A.cg_value, A.g + A.dst[e] * A.dout,
                        A.x + A.src[e] * A.d1, A.y + e * A.d2, A.weights(e), ga, gb, gw);
}

template <typename T>
inline void grad_x_nodes(const ConvArgs<T>& A, const int64_t* off, const int64_t* order,
                         int64_t n0, int64_t n1, T* gx) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t t = off[n]; t < off[n + 1]; ++t)
      backward_edge<T>(A, order[t], gx + n * A.d1, nullptr, nullptr);
}

template <typename T>
inline void grad_edges(const ConvArgs<T>& A, int64_t e0, int64_t e1, T* gy, T* gw) {
  for (int64_t e = e0; e < e1; ++e)
    backward_edge<T>(A, e, nullptr, gy ? gy + e * A.d2 : nullptr, gw ? gw + e * A.wn : nullptr);
}

// Non-template entry points so the AVX2 clones apply (target_clones needs plain functions).
#define FASTCG_CONV_ENTRY(T, SUFFIX)                                                            \
  FASTCG_CLONES void forward_nodes_##SUFFIX(const ConvArgs<T>& A, const int64_t* off,           \
                                            const int64_t* order, int64_t n0, int64_t n1,       \
                                            T* out) {                                           \
    forward_nodes<T>(A, off, order, n0, n1, out);                                               \
  }                                                                                             \
  FASTCG_CLONES void grad_x_nodes_##SUFFIX(const ConvArgs<T>& A, const int64_t* off,            \
                                           const int64_t* order, int64_t n0, int64_t n1,        \
                                           T* gx) {                                             \
    grad_x_nodes<T>(A, off, order, n0, n1, gx);                                                 \
  }                                                                                             \
  FASTCG_CLONES void grad_edges_##SUFFIX(const ConvArgs<T>& A, int64_t e0, int64_t e1, T* gy,   \
                                         T* gw) {                                               \
    grad_edges<T>(A, e0, e1, gy, gw);                                                           \
  }

FASTCG_CONV_ENTRY(float, f)
FASTCG_CONV_ENTRY(double, d)

template <typename T>
void forward_entry(const ConvArgs<T>& A, const int64_t* off, const int64_t* order, int64_t n0,
                   int64_t n1, T* out) {
  if constexpr (std::is_same_v<T, float>) forward_nodes_f(A, off, order, n0, n1, out);
  else forward_nodes_d(A, off, order, n0, n1, out);
}

template <typename T>
void grad_x_entry(const ConvArgs<T>& A, const int64_t* off, const int64_t* order, int64_t n0,
                  int64_t n1, T* gx) {
  if constexpr (std::is_same_v<T, float>) grad_x_nodes_f(A, off, order, n0, n1, gx);
  else grad_x_nodes_d(A, off, order, n0, n1, gx);
}

template <typename T>
void grad_edges_entry(const ConvArgs<T>& A, int64_t e0, int64_t e1, T* gy, T* gw) {
  if constexpr (std::is_same_v<T, float>) grad_edges_f(A, e0, e1, gy, gw);
  else grad_edges_d(A, e0, e1, gy, gw);
}

void check_operands(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                    const at::Tensor& src, const at::Tensor& dst, int64_t num_dst,
                    const at::Tensor& paths, const at::Tensor& cg_index,
                    const at::Tensor& cg_value, int64_t dim_out) {
  check_tables(paths, cg_index, cg_value);
  const int64_t E = y.size(0), N = x.size(0);
  check_rows(x, N, "x");
  check_rows(y, E, "edge_attr");
  check_like(y, x, "edge_attr");
  check_weights(w, E, x);
  TORCH_CHECK(num_dst >= 0, "num_nodes must be >= 0");
  check_index(src, E, N, "src");
  check_index(dst, E, num_dst, "dst");
  check_paths(paths, cg_index, x.size(1), y.size(1), dim_out, w.size(-1));
}

template <typename T>
ConvArgs<T> conv_args(const at::Tensor& xt, const at::Tensor& yt, const at::Tensor& w,
                      const T* g, const at::Tensor& src, const at::Tensor& dst,
                      const at::Tensor& paths, const at::Tensor& cg_index,
                      const at::Tensor& cg_value, int64_t dout) {
  return {paths.data_ptr<int64_t>(), paths.size(0), cg_index.data_ptr<int64_t>(),
          cg_value.data_ptr<double>(), xt.data_ptr<T>(), yt.data_ptr<T>(), w.data_ptr<T>(), g,
          xt.size(1), yt.size(1), dout, w.size(-1), w.dim() == 1, src.data_ptr<int64_t>(),
          dst.data_ptr<int64_t>()};
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w, const at::Tensor& src,
                const at::Tensor& dst, int64_t num_nodes, const at::Tensor& paths,
                const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t dim_out) {
  check_operands(x, y, w, src, dst, num_nodes, paths, cg_index, cg_value, dim_out);
  auto out = at::zeros({num_nodes, dim_out}, x.options());
  const auto xt = relayout(x, operand_blocks(paths, 0), true);
  const auto yt = relayout(y, operand_blocks(paths, 1), true);
  std::vector<int64_t> off, order;
  csr(dst.data_ptr<int64_t>(), y.size(0), num_nodes, off, order);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv", [&] {
    const auto A = conv_args<scalar_t>(xt, yt, w, nullptr, src, dst, paths, cg_index, cg_value,
                                       dim_out);
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_nodes, 8, [&](int64_t n0, int64_t n1) {
      forward_entry<scalar_t>(A, off.data(), order.data(), n0, n1, o);
    });
  });
  return relayout(out, operand_blocks(paths, 2), false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
    const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 3> mask) {
  TORCH_CHECK(g.dim() == 2 && g.is_contiguous(), "grad_out must be contiguous 2-D");
  check_like(g, x, "grad_out");
  check_operands(x, y, w, src, dst, g.size(0), paths, cg_index, cg_value, g.size(1));
  const int64_t E = y.size(0), N = x.size(0);
  const bool shared = w.dim() == 1;
  auto gx = masked(mask[0], x), gy = masked(mask[1], y), gw = masked(mask[2], w);
  const auto b1 = operand_blocks(paths, 0), b2 = operand_blocks(paths, 1);
  const auto xt = relayout(x, b1, true), yt = relayout(y, b2, true);
  const auto gt = relayout(g, operand_blocks(paths, 2), true);
  std::vector<int64_t> off, order;
  if (mask[0]) csr(src.data_ptr<int64_t>(), E, N, off, order);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    const auto A = conv_args<scalar_t>(xt, yt, w, gt.data_ptr<scalar_t>(), src, dst, paths,
                                       cg_index, cg_value, g.size(1));
    if (mask[0]) {
      scalar_t* ga = gx.data_ptr<scalar_t>();
      at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
        grad_x_entry<scalar_t>(A, off.data(), order.data(), n0, n1, ga);
      });
    }
    scalar_t* gb = mask[1] ? gy.data_ptr<scalar_t>() : nullptr;
    scalar_t* gW = (mask[2] && !shared) ? gw.data_ptr<scalar_t>() : nullptr;
    if (gb || gW) {
      at::parallel_for(0, E, 16, [&](int64_t e0, int64_t e1) {
        grad_edges_entry<scalar_t>(A, e0, e1, gb, gW);
      });
    }
    if (mask[2] && shared && A.wn > 0)
      blocked_sum<scalar_t>(E, A.wn, gw.data_ptr<scalar_t>(), [&](int64_t e, scalar_t* acc) {
        backward_edge<scalar_t>(A, e, nullptr, nullptr, acc);
      });
  });
  if (mask[0]) gx = relayout(gx, b1, false);
  if (mask[1]) gy = relayout(gy, b2, false);
  return {gx, gy, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("conv", &conv);
  m.impl("conv_backward", &conv_backward);
}

}  // namespace fastcg
