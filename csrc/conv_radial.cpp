// conv_radial: the fused convolution with per-edge weights radial @ radial_weight (the last,
// linear layer of a NequIP / MACE radial MLP, folded in). Those weights are the largest tensors
// of such models: MACE's second interaction has 1,280 per edge, 180 MB at 37k edges in float32,
// kept by autograd for the backward, plus as much again for their gradient. Here they exist for
// one chunk of edges at a time, forward and backward, and neither they nor their gradient are
// stored. Chunks are ranges of destination nodes, so each chunk's output rows are its own and
// the result is what fastcg::conv gives (same kernels, same order of sums). Device-agnostic:
// each chunk calls the fastcg::conv / conv_backward kernels of the inputs' device; on the CPU,
// cpu/conv.cpp's conv_weighted kernels make the weights per thread block instead (L2-sized).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "cpu/conv_radial.h"
#include "cpu/utils.h"

#include <array>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// Weight elements per chunk: CPU, 8 MB of float32 (the chunk's weights stay in cache between
// the matmul that makes them and the kernel that reads them); CUDA, enough edges to fill the GPU.
// FASTCG_CONV_RADIAL_CHUNK overrides both (the tests make small inputs take many chunks).
constexpr int64_t kCpuChunk = int64_t{1} << 21;
constexpr int64_t kCudaChunk = int64_t{1} << 27;

int64_t chunk_budget(bool cuda) {
  if (const char* env = std::getenv("FASTCG_CONV_RADIAL_CHUNK")) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  return cuda ? kCudaChunk : kCpuChunk;
}

struct Chunks {
  Tensor src, dst, edge_attr, radial;  // in destination order
  Tensor perm;                         // undefined when the edges already were in that order
  std::vector<int64_t> node_cut{0}, edge_cut{0};  // chunk k: [cut[k], cut[k + 1])
  int64_t max_edges = 0;                          // of one chunk

  // The chunk's weights radial[e0:e1] @ W, in one buffer reused by every chunk: a fresh
  // multi-MB tensor per chunk would be a fresh mmap (page faults) until glibc adapts.
  Tensor weights(int64_t e0, int64_t e1, const Tensor& W, Tensor& buf) const {
    if (!buf.defined()) buf = at::empty({max_edges, W.size(1)}, W.options());
    Tensor w = buf.slice(0, 0, e1 - e0);
    at::mm_out(w, radial.slice(0, e0, e1), W);
    return w;
  }
};

// Every tensor on x's device (the chunks call the fastcg::conv kernels of that device, and plan()
// reads dst there), radial / radial_weight of x's dtype, src / dst int64 [num_edges].
void check_radial(const Tensor& x, const Tensor& edge_attr, const Tensor& radial,
                  const Tensor& radial_weight, const Tensor& src, const Tensor& dst,
                  const Tensor& paths, const Tensor& cg_index, const Tensor& cg_value) {
  TORCH_CHECK(x.device().is_cpu() || x.device().is_cuda(),
              "conv_radial: x must be a CPU or CUDA tensor, got one on ", x.device());
  const std::pair<const Tensor*, const char*> args[] = {{&edge_attr, "edge_attr"},
                                                        {&radial, "radial"},
                                                        {&radial_weight, "radial_weight"},
                                                        {&src, "src"},
                                                        {&dst, "dst"},
                                                        {&paths, "paths"},
                                                        {&cg_index, "cg_index"},
                                                        {&cg_value, "cg_value"}};
  for (const auto& [t, name] : args)
    TORCH_CHECK(t->device() == x.device(), "conv_radial: ", name, " is on ", t->device(),
                " but x is on ", x.device());
  TORCH_CHECK(edge_attr.dim() == 2, "conv_radial: edge_attr must be 2-D [num_edges, dim2]");
  TORCH_CHECK(radial.dim() == 2 && radial.size(0) == edge_attr.size(0),
              "conv_radial: radial must be [num_edges, K]");
  TORCH_CHECK(radial_weight.dim() == 2 && radial_weight.size(0) == radial.size(1),
              "conv_radial: radial_weight must be [K, weight_numel] with K = radial.shape[1]");
  TORCH_CHECK(radial.scalar_type() == x.scalar_type(), "conv_radial: radial has dtype ",
              radial.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(radial_weight.scalar_type() == x.scalar_type(),
              "conv_radial: radial_weight has dtype ", radial_weight.scalar_type(), " but x has ",
              x.scalar_type());
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&src, "src"}, {&dst, "dst"}})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == edge_attr.size(0) && t->scalar_type() == at::kLong,
                "conv_radial: ", name, " must be int64 [num_edges]");
}

// The edges in destination order (stable), with perm set when they were not.
Chunks sorted_edges(const Tensor& edge_attr, const Tensor& radial, const Tensor& src,
                    const Tensor& dst) {
  Chunks c;
  const int64_t E = dst.size(0);
  const bool sorted = E < 2 || dst.slice(0, 1).ge(dst.slice(0, 0, E - 1)).all().item<bool>();
  if (sorted) {
    c.src = src, c.dst = dst, c.edge_attr = edge_attr.contiguous(), c.radial = radial.contiguous();
  } else {
    c.perm = std::get<1>(dst.sort(/*stable=*/true, 0, false));
    c.src = src.index_select(0, c.perm), c.dst = dst.index_select(0, c.perm);
    c.edge_attr = edge_attr.index_select(0, c.perm), c.radial = radial.index_select(0, c.perm);
  }
  return c;
}

Chunks plan(const Tensor& edge_attr, const Tensor& radial, const Tensor& src, const Tensor& dst,
            int64_t num_nodes, int64_t weight_numel) {
  TORCH_CHECK(num_nodes >= 0, "conv_radial: num_nodes must be >= 0");
  Chunks c = sorted_edges(edge_attr, radial, src, dst);
  const int64_t E = dst.size(0);
  if (E > 0) TORCH_CHECK(c.dst.min().item<int64_t>() >= 0, "conv_radial: dst has negative entries");
  const Tensor counts = at::bincount(c.dst, {}, num_nodes).cpu();
  // bincount grows past num_nodes exactly when some dst is out of range
  TORCH_CHECK_INDEX(counts.size(0) == num_nodes, "conv_radial: dst >= num_nodes");
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const int64_t budget = chunk_budget(dst.is_cuda());
  const int64_t target = std::max<int64_t>(1, budget / std::max<int64_t>(weight_numel, 1));
  int64_t e = 0;
  for (int64_t n = 0; n < num_nodes; ++n) {
    e += cnt[n];
    if (e - c.edge_cut.back() >= target || n + 1 == num_nodes) {
      c.max_edges = std::max(c.max_edges, e - c.edge_cut.back());
      c.node_cut.push_back(n + 1);
      c.edge_cut.push_back(e);
    }
  }
  return c;
}

// Indices in the caller's order (the kernels see them sorted: their messages would name other
// positions).
void check_graph_cpu(const Tensor& src, const Tensor& dst, int64_t num_src, int64_t num_nodes) {
  TORCH_CHECK(num_nodes >= 0, "num_nodes must be >= 0, got ", num_nodes);
  fastcg::check_index(src.contiguous(), src.size(0), num_src, "src");
  fastcg::check_index(dst.contiguous(), dst.size(0), num_nodes, "dst");
}

Tensor rows(const Tensor& t, int64_t a, int64_t b) { return t.slice(0, a, b); }

Tensor unpermute(const Tensor& g, const Tensor& perm) {
  if (!perm.defined() || !g.defined()) return g;
  return at::empty_like(g).index_copy_(0, perm, g);
}

using ConvSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                       int64_t, const Tensor&, const Tensor&, const Tensor&, int64_t);
using ConvBackwardSig = Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, std::array<bool, 3>);

template <class Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

Tensor conv_radial(const Tensor& x, const Tensor& edge_attr, const Tensor& radial,
                   const Tensor& radial_weight, const Tensor& src, const Tensor& dst,
                   int64_t num_nodes, const Tensor& paths, const Tensor& cg_index,
                   const Tensor& cg_value, int64_t dim_out) {
  static const auto op = handle<ConvSig>("fastcg::conv");
  check_radial(x, edge_attr, radial, radial_weight, src, dst, paths, cg_index, cg_value);
  if (x.device().is_cpu()) {  // cpu/conv.cpp makes the weights per thread block (L2-sized)
    check_graph_cpu(src, dst, x.size(0), num_nodes);
    const Chunks c = sorted_edges(edge_attr, radial, src, dst);
    return fastcg::conv_weighted_cpu(x, c.edge_attr, {false, c.radial, radial_weight.contiguous()},
                                     c.src, c.dst, num_nodes, paths, cg_index, cg_value, dim_out);
  }
  const Chunks c = plan(edge_attr, radial, src, dst, num_nodes, radial_weight.size(1));
  auto out = at::empty({num_nodes, dim_out}, x.options());
  Tensor buf;
  for (size_t k = 0; k + 1 < c.node_cut.size(); ++k) {
    const int64_t n0 = c.node_cut[k], n1 = c.node_cut[k + 1];
    const int64_t e0 = c.edge_cut[k], e1 = c.edge_cut[k + 1];
    const Tensor w = c.weights(e0, e1, radial_weight, buf);
    rows(out, n0, n1)
        .copy_(op.call(x, rows(c.edge_attr, e0, e1), w, rows(c.src, e0, e1),
                       rows(c.dst, e0, e1).sub(n0), n1 - n0, paths, cg_index, cg_value, dim_out));
  }
  return out;
}

Tensor4 conv_radial_backward(const Tensor& grad_out, const Tensor& x, const Tensor& edge_attr,
                             const Tensor& radial, const Tensor& radial_weight, const Tensor& src,
                             const Tensor& dst, const Tensor& paths, const Tensor& cg_index,
                             const Tensor& cg_value, std::array<bool, 4> mask) {
  static const auto op = handle<ConvBackwardSig>("fastcg::conv_backward");
  check_radial(x, edge_attr, radial, radial_weight, src, dst, paths, cg_index, cg_value);
  TORCH_CHECK(grad_out.device() == x.device(), "conv_radial_backward: grad_out is on ",
              grad_out.device(), " but x is on ", x.device());
  TORCH_CHECK(grad_out.dim() == 2, "conv_radial_backward: grad_out must be [num_nodes, dim_out]");
  if (x.device().is_cpu()) {
    check_graph_cpu(src, dst, x.size(0), grad_out.size(0));
    const Chunks c = sorted_edges(edge_attr, radial, src, dst);
    auto [gx, gy, gh, gW] = fastcg::conv_weighted_backward_cpu(
        grad_out.contiguous(), x, c.edge_attr, {false, c.radial, radial_weight.contiguous()}, c.src,
        c.dst, paths, cg_index, cg_value, mask);
    return {gx, mask[1] ? unpermute(gy, c.perm) : gy, mask[2] ? unpermute(gh, c.perm) : gh, gW};
  }
  const Chunks c = plan(edge_attr, radial, src, dst, grad_out.size(0), radial_weight.size(1));
  const Tensor g = grad_out.contiguous();
  Tensor gx = mask[0] ? at::zeros_like(x) : at::empty({0}, x.options());
  Tensor gy = mask[1] ? at::empty_like(c.edge_attr) : at::empty({0}, x.options());
  Tensor gh = mask[2] ? at::empty_like(c.radial) : at::empty({0}, x.options());
  Tensor gW = mask[3] ? at::zeros_like(radial_weight) : at::empty({0}, x.options());
  const std::array<bool, 3> inner = {mask[0], mask[1], mask[2] || mask[3]};
  if (inner[0] || inner[1] || inner[2]) {
    const Tensor wT = radial_weight.t();
    Tensor buf;
    for (size_t k = 0; k + 1 < c.node_cut.size(); ++k) {
      const int64_t n0 = c.node_cut[k], n1 = c.node_cut[k + 1];
      const int64_t e0 = c.edge_cut[k], e1 = c.edge_cut[k + 1];
      const Tensor h = rows(c.radial, e0, e1);
      const Tensor w = c.weights(e0, e1, radial_weight, buf);
      const auto [gx_k, gy_k, gw_k] =
          op.call(rows(g, n0, n1), x, rows(c.edge_attr, e0, e1), w, rows(c.src, e0, e1),
                  rows(c.dst, e0, e1).sub(n0), paths, cg_index, cg_value, inner);
      if (mask[0]) gx.add_(gx_k);
      if (mask[1]) rows(gy, e0, e1).copy_(gy_k);
      if (mask[2]) {
        Tensor dst_rows = rows(gh, e0, e1);
        at::mm_out(dst_rows, gw_k, wT);
      }
      if (mask[3]) gW.addmm_(h.t(), gw_k);
    }
  }
  if (mask[1]) gy = unpermute(gy, c.perm);
  if (mask[2]) gh = unpermute(gh, c.perm);
  return {gx, gy, gh, gW};
}

// conv_radial's double backward composed of the first-order ops, as fastcg/ops/conv.py composes
// it on CUDA: for tables with weightless paths, which T(x, y, ggw) must leave out (the one-pass
// kernel reads one plan of every path).
Tensor5 composed_double_backward(const Tensor& g, const Tensor& x, const Tensor& y, const Tensor& h,
                                 const Tensor& W, const std::optional<Tensor>& ggx_,
                                 const std::optional<Tensor>& ggy_,
                                 const std::optional<Tensor>& ggh_,
                                 const std::optional<Tensor>& ggW_, const Tensor& src,
                                 const Tensor& dst, const Tensor& paths, const Tensor& weighted,
                                 const Tensor& cgi, const Tensor& cgv, std::array<bool, 5> n) {
  const auto opt = [](const std::optional<Tensor>& t) {
    return t.has_value() && t->defined() ? *t : Tensor();
  };
  const Tensor ggx = opt(ggx_), ggy = opt(ggy_), ggh = opt(ggh_), ggW = opt(ggW_);
  const int64_t M = g.size(0), dout = g.size(1), k = h.size(1);
  Tensor d[5] = {at::zeros_like(g), at::zeros_like(x), at::zeros_like(y), at::zeros_like(h),
                 at::zeros_like(W)};
  const auto add = [&](int i, const Tensor& t) { d[i].add_(t); };
  struct Term {
    Tensor a, b;
    bool n_a, n_b;
  };
  std::vector<Term> terms;
  if (ggx.defined()) terms.push_back({ggx, y, false, n[2]});
  if (ggy.defined()) terms.push_back({x, ggy, n[1], false});
  for (const auto& t : terms) {  // <ggx, T_a(g, y, w)> = <g, T(ggx, y, w)>, likewise for ggy
    if (n[0]) add(0, conv_radial(t.a, t.b, h, W, src, dst, M, paths, cgi, cgv, dout));
    if (t.n_a || t.n_b || n[3] || n[4]) {
      const auto [ta, tb, th, tW] = conv_radial_backward(g, t.a, t.b, h, W, src, dst, paths, cgi,
                                                         cgv, {t.n_a, t.n_b, n[3], n[4]});
      if (t.n_a) add(1, ta);
      if (t.n_b) add(2, tb);
      if (n[3]) add(3, th);
      if (n[4]) add(4, tW);
    }
  }
  if (ggh.defined() || ggW.defined()) {
    // <gw, ggw> over the weighted paths, ggw = [ggh | h] [W ; ggW]; through gw it also gives
    // d radial = gw ggW^T and d W = ggh^T gw (that call's radial and W gradients)
    const Tensor wp = paths.index_select(0, weighted.nonzero().squeeze(1)).contiguous();
    const bool m_h = n[3] && ggW.defined(), m_W = n[4] && ggh.defined();
    const Tensor r = !ggW.defined() ? ggh : !ggh.defined() ? h : at::cat({ggh, h}, 1);
    const Tensor rw = !ggW.defined() ? W : !ggh.defined() ? ggW : at::cat({W, ggW}, 0);
    if (n[0]) add(0, conv_radial(x, y, r, rw, src, dst, M, wp, cgi, cgv, dout));
    if (n[1] || n[2] || m_h || m_W) {
      const auto [tx, ty, th, tW] =
          conv_radial_backward(g, x, y, r, rw, src, dst, wp, cgi, cgv, {n[1], n[2], m_h, m_W});
      if (n[1]) add(1, tx);
      if (n[2]) add(2, ty);
      if (m_h) add(3, th.slice(1, th.size(1) - k));  // the ggW columns
      if (m_W) add(4, tW.slice(0, 0, k));            // the ggh rows
    }
  }
  for (int i = 0; i < 5; ++i)
    if (!n[i]) d[i] = at::empty({0}, x.options());
  return {d[0], d[1], d[2], d[3], d[4]};
}

// conv_radial's double backward (cpu/conv.cpp; the first-order ops compose it on CUDA, in
// fastcg/ops/conv.py). The cotangents are those of conv_radial_backward's outputs.
Tensor5 conv_radial_double_backward(
    const Tensor& grad_out, const Tensor& x, const Tensor& edge_attr, const Tensor& radial,
    const Tensor& radial_weight, const std::optional<Tensor>& grad_grad_x,
    const std::optional<Tensor>& grad_grad_edge_attr, const std::optional<Tensor>& grad_grad_radial,
    const std::optional<Tensor>& grad_grad_radial_weight, const Tensor& src, const Tensor& dst,
    const Tensor& paths, const Tensor& cg_index, const Tensor& cg_value, std::array<bool, 5> mask) {
  check_radial(x, edge_attr, radial, radial_weight, src, dst, paths, cg_index, cg_value);
  TORCH_CHECK(x.device().is_cpu(), "conv_radial_double_backward: x must be a CPU tensor");
  TORCH_CHECK(grad_out.device() == x.device(), "conv_radial_double_backward: grad_out is on ",
              grad_out.device(), " but x is on ", x.device());
  TORCH_CHECK(grad_out.dim() == 2,
              "conv_radial_double_backward: grad_out must be [num_nodes, dim_out]");
  const std::pair<const std::optional<Tensor>*, const char*> gg[] = {
      {&grad_grad_x, "grad_grad_x"},
      {&grad_grad_edge_attr, "grad_grad_edge_attr"},
      {&grad_grad_radial, "grad_grad_radial"},
      {&grad_grad_radial_weight, "grad_grad_radial_weight"}};
  const Tensor* primal[] = {&x, &edge_attr, &radial, &radial_weight};
  for (int i = 0; i < 4; ++i) {
    const auto& [t, name] = gg[i];
    if (!t->has_value() || !(*t)->defined()) continue;
    TORCH_CHECK((*t)->device() == x.device(), "conv_radial_double_backward: ", name, " is on ",
                (*t)->device(), " but x is on ", x.device());
    TORCH_CHECK((*t)->scalar_type() == x.scalar_type(), "conv_radial_double_backward: ", name,
                " has dtype ", (*t)->scalar_type(), " but x has ", x.scalar_type());
    TORCH_CHECK((*t)->sizes() == primal[i]->sizes(), "conv_radial_double_backward: ", name,
                " must have the shape of its primal, ", primal[i]->sizes(), ", got ",
                (*t)->sizes());
  }
  check_graph_cpu(src, dst, x.size(0), grad_out.size(0));
  const Tensor weighted = paths.dim() == 2 && paths.size(1) > fastcg::P_WOFF
                              ? paths.select(1, fastcg::P_WOFF).ge(0)
                              : Tensor();
  if (weighted.defined() && !weighted.all().item<bool>())
    return composed_double_backward(grad_out, x, edge_attr, radial, radial_weight, grad_grad_x,
                                    grad_grad_edge_attr, grad_grad_radial, grad_grad_radial_weight,
                                    src, dst, paths, weighted, cg_index, cg_value, mask);
  const Chunks c = sorted_edges(edge_attr, radial, src, dst);
  const auto get = [&](const std::optional<Tensor>& t, bool per_edge) {
    if (!t.has_value() || !t->defined()) return Tensor();
    Tensor v = t->contiguous();
    return per_edge && c.perm.defined() && v.dim() >= 1 && v.size(0) == c.perm.size(0)
               ? v.index_select(0, c.perm)
               : v;
  };
  auto out = fastcg::conv_radial_double_backward_cpu(
      grad_out.contiguous(), x, c.edge_attr, c.radial, radial_weight.contiguous(),
      get(grad_grad_x, false), get(grad_grad_edge_attr, true), get(grad_grad_radial, true),
      get(grad_grad_radial_weight, false), c.src, c.dst, paths, cg_index, cg_value, mask);
  return {out[0], out[1], mask[2] ? unpermute(out[2], c.perm) : out[2],
          mask[3] ? unpermute(out[3], c.perm) : out[3], out[4]};
}

// conv_tabulated: the conv with per-edge weights read from a cubic Hermite table of the radial
// function at the edge lengths r (an opt-in approximation for MD, fastcg.nn.RadialFusedConv.
// tabulate). CPU only; the backward gives grad r (first derivatives only).
void check_tabulated(const Tensor& x, const Tensor& edge_attr, const Tensor& r, const Tensor& table,
                     double step, const Tensor& src, const Tensor& dst) {
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&x, "x"},
                                {&r, "r"},
                                {&edge_attr, "edge_attr"},
                                {&table, "table"},
                                {&src, "src"},
                                {&dst, "dst"}})
    TORCH_CHECK(t->device().is_cpu(), "conv_tabulated: ", name, " must be a CPU tensor");
  TORCH_CHECK(edge_attr.dim() == 2, "conv_tabulated: edge_attr must be 2-D [num_edges, dim2]");
  TORCH_CHECK(r.dim() == 1 && r.size(0) == edge_attr.size(0),
              "conv_tabulated: r must be [num_edges]");
  TORCH_CHECK(table.dim() == 3 && table.size(0) >= 2 && table.size(1) == 2,
              "conv_tabulated: table must be [G + 1, 2, numel] with G >= 1, got ", table.sizes());
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&r, "r"}, {&table, "table"}})
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "conv_tabulated: ", name, " has dtype ",
                t->scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(std::isfinite(step) && step > 0, "conv_tabulated: step must be positive, got ", step);
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&src, "src"}, {&dst, "dst"}})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == edge_attr.size(0) && t->scalar_type() == at::kLong,
                "conv_tabulated: ", name, " must be int64 [num_edges]");
}

Tensor conv_tabulated(const Tensor& x, const Tensor& edge_attr, const Tensor& r,
                      const Tensor& table, double step, const Tensor& src, const Tensor& dst,
                      int64_t num_nodes, const Tensor& paths, const Tensor& cg_index,
                      const Tensor& cg_value, int64_t dim_out) {
  check_tabulated(x, edge_attr, r, table, step, src, dst);
  check_graph_cpu(src, dst, x.size(0), num_nodes);
  fastcg::check_table_lengths(r, table.size(0), step);
  const Chunks c = sorted_edges(edge_attr, r, src, dst);
  return fastcg::conv_weighted_cpu(x, c.edge_attr, {true, c.radial, table.contiguous(), step},
                                   c.src, c.dst, num_nodes, paths, cg_index, cg_value, dim_out);
}

Tensor3 conv_tabulated_backward(const Tensor& grad_out, const Tensor& x, const Tensor& edge_attr,
                                const Tensor& r, const Tensor& table, double step,
                                const Tensor& src, const Tensor& dst, const Tensor& paths,
                                const Tensor& cg_index, const Tensor& cg_value,
                                std::array<bool, 3> mask) {
  check_tabulated(x, edge_attr, r, table, step, src, dst);
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.dim() == 2,
              "conv_tabulated_backward: grad_out must be a CPU [num_nodes, dim_out] tensor");
  check_graph_cpu(src, dst, x.size(0), grad_out.size(0));
  fastcg::check_table_lengths(r, table.size(0), step);
  const Chunks c = sorted_edges(edge_attr, r, src, dst);
  auto [gx, gy, gr, unused] = fastcg::conv_weighted_backward_cpu(
      grad_out.contiguous(), x, c.edge_attr, {true, c.radial, table.contiguous(), step}, c.src,
      c.dst, paths, cg_index, cg_value, {mask[0], mask[1], mask[2], false});
  return {gx, mask[1] ? unpermute(gy, c.perm) : gy, mask[2] ? unpermute(gr, c.perm) : gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("conv_radial", &conv_radial);
  m.impl("conv_radial_backward", &conv_radial_backward);
  m.impl("conv_radial_double_backward", &conv_radial_double_backward);
  m.impl("conv_tabulated", &conv_tabulated);
  m.impl("conv_tabulated_backward", &conv_tabulated_backward);
}

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) {
  m.impl("conv_radial", &conv_radial);
  m.impl("conv_radial_backward", &conv_radial_backward);
}
