// CPU equivariant linear: one matrix product per path (and per species group) through ATen.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "cpu/utils.h"

namespace fastcg {
namespace {

struct LinPath {
  int64_t mi, mo, d, oi, oo, wo;
  double c;
};

std::vector<LinPath> lin_paths(const at::Tensor& paths, const at::Tensor& coeff) {
  TORCH_CHECK(paths.dtype() == at::kLong && paths.dim() == 2 && paths.size(1) == L_NCOLS &&
                  paths.is_contiguous(),
              "linear paths must be contiguous int64 [P, 6]");
  TORCH_CHECK(coeff.dtype() == at::kDouble && coeff.numel() == paths.size(0), "path_coeff");
  std::vector<LinPath> out;
  const int64_t* p = paths.data_ptr<int64_t>();
  const double* c = coeff.data_ptr<double>();
  for (int64_t q = 0; q < paths.size(0); ++q, p += L_NCOLS)
    out.push_back({p[L_MUL_IN], p[L_MUL_OUT], p[L_IR_DIM], p[L_OFF_IN], p[L_OFF_OUT], p[L_WOFF], c[q]});
  return out;
}

// Rows of each species (in row order), so every group is one matrix product.
std::vector<at::Tensor> groups(const c10::optional<at::Tensor>& species, int64_t S) {
  std::vector<at::Tensor> out;
  if (!species.has_value()) return out;
  auto sp = species->contiguous();
  check_index(sp, sp.numel(), S, "species");
  for (int64_t s = 0; s < S; ++s) out.push_back((sp == s).nonzero().view({-1}));
  return out;
}

at::Tensor block(const at::Tensor& t, int64_t off, int64_t mul, int64_t d) {
  return t.narrow(1, off, mul * d).view({t.size(0), mul, d});
}

// out_b[B, mo, d] += c * W^T x_b for one weight matrix W [mi, mo].
void lin_fwd(const at::Tensor& x, const at::Tensor& w, const LinPath& p, at::Tensor& out) {
  auto W = w.narrow(0, p.wo, p.mi * p.mo).view({p.mi, p.mo});
  block(out, p.oo, p.mo, p.d).add_(at::matmul(W.t(), block(x, p.oi, p.mi, p.d)), p.c);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weights,
                  const c10::optional<at::Tensor>& species, const at::Tensor& paths,
                  const at::Tensor& coeff, int64_t dim_out) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D");
  auto ps = lin_paths(paths, coeff);
  auto out = at::zeros({x.size(0), dim_out}, x.options());
  if (!species.has_value()) {
    TORCH_CHECK(weights.dim() == 1, "weights must be 1-D without species");
    for (const auto& p : ps) lin_fwd(x, weights, p, out);
    return out;
  }
  TORCH_CHECK(weights.dim() == 2, "weights must be [S, numel] with species");
  auto rows = groups(species, weights.size(0));
  for (int64_t s = 0; s < (int64_t)rows.size(); ++s) {
    if (rows[s].numel() == 0) continue;
    auto xs = x.index_select(0, rows[s]);
    auto os = at::zeros({xs.size(0), dim_out}, x.options());
    for (const auto& p : ps) lin_fwd(xs, weights[s], p, os);
    out.index_copy_(0, rows[s], os);
  }
  return out;
}

// grad_x block += c * W g_b and grad_W += c * x_b^T g_b for one weight matrix.
void lin_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, const LinPath& p,
             at::Tensor* gx, at::Tensor* gw) {
  auto gb = block(g, p.oo, p.mo, p.d);
  if (gx) {
    auto W = w.narrow(0, p.wo, p.mi * p.mo).view({p.mi, p.mo});
    block(*gx, p.oi, p.mi, p.d).add_(at::matmul(W, gb), p.c);
  }
  if (gw) {
    auto xb = block(x, p.oi, p.mi, p.d);
    auto prod = at::einsum("bui,bwi->uw", {xb, gb});
    gw->narrow(0, p.wo, p.mi * p.mo).view({p.mi, p.mo}).add_(prod, p.c);
  }
}

std::tuple<at::Tensor, at::Tensor> linear_backward(const at::Tensor& g, const at::Tensor& x,
                                                   const at::Tensor& weights,
                                                   const c10::optional<at::Tensor>& species,
                                                   const at::Tensor& paths,
                                                   const at::Tensor& coeff,
                                                   std::array<bool, 2> mask) {
  auto ps = lin_paths(paths, coeff);
  auto empty = at::empty({0}, x.options());
  auto gx = masked(mask[0], x), gw = masked(mask[1], weights);
  if (!species.has_value()) {
    for (const auto& p : ps) lin_bwd(g, x, weights, p, mask[0] ? &gx : nullptr, mask[1] ? &gw : nullptr);
    return {gx, gw};
  }
  auto rows = groups(species, weights.size(0));
  for (int64_t s = 0; s < (int64_t)rows.size(); ++s) {
    if (rows[s].numel() == 0) continue;
    auto gs = g.index_select(0, rows[s]);
    auto xs = x.index_select(0, rows[s]);
    auto gxs = at::zeros_like(xs);
    auto gws = mask[1] ? gw[s] : empty;
    for (const auto& p : ps)
      lin_bwd(gs, xs, weights[s], p, mask[0] ? &gxs : nullptr, mask[1] ? &gws : nullptr);
    if (mask[0]) gx.index_copy_(0, rows[s], gxs);
  }
  return {gx, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("linear", &linear);
  m.impl("linear_backward", &linear_backward);
}

}  // namespace fastcg
