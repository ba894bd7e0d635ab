// CPU equivariant linear: one GEMM per path (and per species group) through ATen. A block
// [B, mul, d] is used as a [B*d, mul] matrix so each path is a single at::mm whatever d is
// (a broadcast matmul over B would run B tiny GEMMs).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "core/linear.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

struct LinPath {
  int64_t mi, mo, d, oi, oo, wo;
  double c;
};

std::vector<LinPath> lin_paths(const at::Tensor& paths, const at::Tensor& coeff, int64_t dim_in,
                               int64_t dim_out, int64_t wn) {
  check_cpu(paths, "paths");
  check_cpu(coeff, "path_coeff");
  TORCH_CHECK(paths.dtype() == at::kLong && paths.dim() == 2 && paths.size(1) == L_NCOLS &&
                  paths.is_contiguous(),
              "linear paths must be contiguous int64 [P, 6], got ", paths.dtype(), " ",
              paths.sizes());
  TORCH_CHECK(coeff.dtype() == at::kDouble && coeff.dim() == 1 && coeff.size(0) == paths.size(0) &&
                  coeff.is_contiguous(),
              "path_coeff must be contiguous float64 [P] (P = ", paths.size(0), "), got ",
              coeff.dtype(), " ", coeff.sizes());
  TORCH_CHECK(dim_out >= 0, "dim_out must be >= 0, got ", dim_out);
  std::vector<LinPath> out;
  const int64_t* p = paths.data_ptr<int64_t>();
  const double* c = coeff.data_ptr<double>();
  for (int64_t q = 0; q < paths.size(0); ++q, p += L_NCOLS) {
    // core/linear.h linear_path_fits: the CUDA kernels assert the same condition
    TORCH_CHECK(linear_path_fits(p, dim_in, dim_out, wn), "linear paths row ", q,
                " does not fit the tensors (x has ", dim_in, " features, the output ", dim_out,
                ", the weights ", wn, " per row)");
    out.push_back(
        {p[L_MUL_IN], p[L_MUL_OUT], p[L_IR_DIM], p[L_OFF_IN], p[L_OFF_OUT], p[L_WOFF], c[q]});
  }
  return out;
}

// The [B*d, mul] matrix of a block (a view when d == 1, else a transposed copy).
at::Tensor as_matrix(const at::Tensor& t, int64_t off, int64_t mul, int64_t d) {
  if (d == 1) return t.narrow(1, off, mul);
  return t.narrow(1, off, mul * d).view({t.size(0), mul, d}).transpose(1, 2).reshape({-1, mul});
}

// block(t) += alpha * m, m being the [B*d, mul] matrix of that block.
void add_matrix(at::Tensor& t, int64_t off, int64_t mul, int64_t d, const at::Tensor& m,
                double alpha) {
  auto b = t.narrow(1, off, mul * d).view({t.size(0), mul, d});
  b.add_(m.view({t.size(0), d, mul}).transpose(1, 2), alpha);
}

at::Tensor weight_matrix(const at::Tensor& w, const LinPath& p) {
  return w.narrow(0, p.wo, p.mi * p.mo).view({p.mi, p.mo});
}

void lin_fwd(const at::Tensor& x, const at::Tensor& w, const std::vector<LinPath>& ps,
             at::Tensor& out) {
  for (const auto& p : ps) {
    if (p.d == 1) {
      out.narrow(1, p.oo, p.mo).addmm_(x.narrow(1, p.oi, p.mi), weight_matrix(w, p), 1.0, p.c);
    } else {
      add_matrix(out, p.oo, p.mo, p.d, at::mm(as_matrix(x, p.oi, p.mi, p.d), weight_matrix(w, p)),
                 p.c);
    }
  }
}

// grad_x block += c * g W^T and grad_W += c * x^T g for every path.
void lin_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
             const std::vector<LinPath>& ps, at::Tensor* gx, at::Tensor* gw) {
  for (const auto& p : ps) {
    const auto gm = as_matrix(g, p.oo, p.mo, p.d);
    if (gx) {
      if (p.d == 1)
        gx->narrow(1, p.oi, p.mi).addmm_(gm, weight_matrix(w, p).t(), 1.0, p.c);
      else
        add_matrix(*gx, p.oi, p.mi, p.d, at::mm(gm, weight_matrix(w, p).t()), p.c);
    }
    if (gw) {
      auto gwm = weight_matrix(*gw, p);
      gwm.addmm_(as_matrix(x, p.oi, p.mi, p.d).t(), gm, 1.0, p.c);
    }
  }
}

// Rows of each species: a stable sort, so each group keeps row order; (order, starts [S+1]).
std::pair<at::Tensor, std::vector<int64_t>> species_groups(const at::Tensor& species, int64_t S,
                                                           int64_t B) {
  check_index(species, B, S, "species");
  auto order = std::get<1>(species.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  std::vector<int64_t> starts(S + 1, 0);
  const int64_t* sp = species.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) starts[sp[b] + 1]++;
  for (int64_t s = 0; s < S; ++s) starts[s + 1] += starts[s];
  return {order, starts};
}

void check_linear(const at::Tensor& x, const at::Tensor& w,
                  const c10::optional<at::Tensor>& species) {
  check_features(x, "x");
  check_like(w, x, "weights");
  if (species.has_value()) check_cpu(*species, "species");
  TORCH_CHECK(w.is_contiguous(), "weights must be contiguous");
  TORCH_CHECK(w.dim() == (species.has_value() ? 2 : 1),
              "weights must be [numel] without species and [S, numel] with species");
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weights,
                  const c10::optional<at::Tensor>& species, const at::Tensor& paths,
                  const at::Tensor& coeff, int64_t dim_out) {
  check_linear(x, weights, species);
  const auto ps = lin_paths(paths, coeff, x.size(1), dim_out, weights.size(-1));
  auto out = at::zeros({x.size(0), dim_out}, x.options());
  if (!species.has_value()) {
    lin_fwd(x, weights, ps, out);
    return out;
  }
  const auto [order, starts] = species_groups(*species, weights.size(0), x.size(0));
  for (int64_t s = 0; s + 1 < (int64_t)starts.size(); ++s) {
    if (starts[s + 1] == starts[s]) continue;
    const auto rows = order.narrow(0, starts[s], starts[s + 1] - starts[s]);
    auto os = at::zeros({rows.size(0), dim_out}, x.options());
    lin_fwd(x.index_select(0, rows), weights[s], ps, os);
    out.index_copy_(0, rows, os);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> linear_backward(const at::Tensor& g, const at::Tensor& x,
                                                   const at::Tensor& weights,
                                                   const c10::optional<at::Tensor>& species,
                                                   const at::Tensor& paths, const at::Tensor& coeff,
                                                   std::array<bool, 2> mask) {
  check_linear(x, weights, species);
  check_like(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == x.size(0) && g.is_contiguous(),
              "grad_out must be contiguous [", x.size(0), ", dim_out], got shape ", g.sizes());
  const auto ps = lin_paths(paths, coeff, x.size(1), g.size(1), weights.size(-1));
  auto gx = masked(mask[0], x), gw = masked(mask[1], weights);
  if (!species.has_value()) {
    lin_bwd(g, x, weights, ps, mask[0] ? &gx : nullptr, mask[1] ? &gw : nullptr);
    return {gx, gw};
  }
  const auto [order, starts] = species_groups(*species, weights.size(0), x.size(0));
  for (int64_t s = 0; s + 1 < (int64_t)starts.size(); ++s) {
    if (starts[s + 1] == starts[s]) continue;
    const auto rows = order.narrow(0, starts[s], starts[s + 1] - starts[s]);
    auto gxs = mask[0] ? at::zeros({rows.size(0), x.size(1)}, x.options()) : at::Tensor();
    auto gws = mask[1] ? gw[s] : at::Tensor();
    lin_bwd(g.index_select(0, rows), x.index_select(0, rows), weights[s], ps,
            mask[0] ? &gxs : nullptr, mask[1] ? &gws : nullptr);
    if (mask[0]) gx.index_copy_(0, rows, gxs);
  }
  return {gx, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("linear", &linear);
  m.impl("linear_backward", &linear_backward);
}

}  // namespace fastcg
