// CPU spherical harmonics: values, fused backward (grad_vectors directly) and double backward.
// Vectors go in tiles of W lanes (lane-fastest arrays, see tools/gen_sh.py) so the generated
// straight-line code vectorises across vectors; a partial last tile is padded with zero vectors.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "cpu/sh_tiles.h"
#include "cpu/utils.h"

namespace fastcg {

// lmax 0-4 here at the build's -O3; 5-8 in spherical_harmonics_high.cpp.
FASTCG_SH_ALL(0)
FASTCG_SH_ALL(1)
FASTCG_SH_ALL(2)
FASTCG_SH_ALL(3)
FASTCG_SH_ALL(4)

namespace {

#define FASTCG_SH_TABLE(P, S)                                            \
  {sh_##P##S##0, sh_##P##S##1, sh_##P##S##2, sh_##P##S##3, sh_##P##S##4, \
   sh_##P##S##5, sh_##P##S##6, sh_##P##S##7, sh_##P##S##8}
template <typename T>
struct Entries;
template <>
struct Entries<float> {
  static constexpr FwdFn<float> fwd[] = FASTCG_SH_TABLE(fwd_, f);
  static constexpr BwdFn<float> bwd[] = FASTCG_SH_TABLE(bwd_, f);
  static constexpr DblFn<float> dbl[] = FASTCG_SH_TABLE(dbl_, f);
};
template <>
struct Entries<double> {
  static constexpr FwdFn<double> fwd[] = FASTCG_SH_TABLE(fwd_, d);
  static constexpr BwdFn<double> bwd[] = FASTCG_SH_TABLE(bwd_, d);
  static constexpr DblFn<double> dbl[] = FASTCG_SH_TABLE(dbl_, d);
};

// e3nn divides its "component" values by sqrt(2l+1) ("norm") or sqrt(4 pi) ("integral").
double scale_of(const std::string& name, int l) {
  if (name == "component") return 1.0;
  if (name == "norm") return 1.0 / std::sqrt(2.0 * l + 1.0);
  if (name == "integral") return 1.0 / std::sqrt(4.0 * std::numbers::pi);
  TORCH_CHECK(false, "normalization must be 'component', 'norm' or 'integral', got '", name, "'");
}

ShCall check_vectors(const at::Tensor& v, int64_t lmax, bool normalize,
                     const std::string& normalization) {
  check_cpu(v, "vectors");
  TORCH_CHECK(v.dim() == 2 && v.size(1) == 3 && v.is_contiguous(),
              "vectors must be a contiguous [E, 3] tensor, got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
              "vectors must be float32 or float64, got ", v.scalar_type());
  TORCH_CHECK(lmax >= 0 && lmax <= SH_LMAX, "lmax must be in [0, ", SH_LMAX, "], got ", lmax);
  ShCall c{v.size(0), normalize, {}};
  for (int l = 0; l <= SH_LMAX; ++l)
    for (int m = l * l; m < sh_dim(l); ++m) c.scale[m] = scale_of(normalization, l);
  return c;
}

void check_grad_sh(const at::Tensor& g, const at::Tensor& v, int64_t lmax) {
  check_cpu(g, "grad_sh");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == v.size(0) && g.size(1) == (lmax + 1) * (lmax + 1) &&
                  g.is_contiguous() && g.dtype() == v.dtype(),
              "grad_sh must be a contiguous [E, (lmax+1)^2] tensor of the vectors' dtype");
}

template <typename T>
int64_t num_tiles(int64_t E) {
  return (E + kLanes<T> - 1) / kLanes<T>;
}

at::Tensor spherical_harmonics(const at::Tensor& vectors, int64_t lmax, bool normalize,
                               const std::string& normalization) {
  const ShCall c = check_vectors(vectors, lmax, normalize, normalization);
  auto out = at::empty({c.E, (lmax + 1) * (lmax + 1)}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics", [&] {
    const auto f = Entries<scalar_t>::fwd[lmax];
    const scalar_t* r = vectors.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles<scalar_t>(c.E), 64,
                     [&](int64_t a, int64_t b) { f(c, r, o, a, b); });
  });
  return out;
}

at::Tensor spherical_harmonics_backward(const at::Tensor& grad_sh, const at::Tensor& vectors,
                                        int64_t lmax, bool normalize,
                                        const std::string& normalization) {
  const ShCall c = check_vectors(vectors, lmax, normalize, normalization);
  check_grad_sh(grad_sh, vectors, lmax);
  auto grad = at::empty_like(vectors);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics_backward", [&] {
    const auto f = Entries<scalar_t>::bwd[lmax];
    const scalar_t *r = vectors.data_ptr<scalar_t>(), *g = grad_sh.data_ptr<scalar_t>();
    scalar_t* o = grad.data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles<scalar_t>(c.E), 32,
                     [&](int64_t a, int64_t b) { f(c, g, r, o, a, b); });
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> spherical_harmonics_double_backward(
    const at::Tensor& gg, const at::Tensor& grad_sh, const at::Tensor& vectors, int64_t lmax,
    bool normalize, const std::string& normalization) {
  const ShCall c = check_vectors(vectors, lmax, normalize, normalization);
  check_grad_sh(grad_sh, vectors, lmax);
  check_cpu(gg, "grad_grad_vectors");
  TORCH_CHECK(gg.sizes() == vectors.sizes() && gg.is_contiguous() && gg.dtype() == vectors.dtype(),
              "grad_grad_vectors must be a contiguous [E, 3] tensor of the vectors' dtype");
  auto gg_sh = at::empty_like(grad_sh);
  auto grad = at::empty_like(vectors);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics_double_backward", [&] {
    const auto f = Entries<scalar_t>::dbl[lmax];
    const scalar_t *r = vectors.data_ptr<scalar_t>(), *g = grad_sh.data_ptr<scalar_t>();
    const scalar_t* q = gg.data_ptr<scalar_t>();
    scalar_t *os = gg_sh.data_ptr<scalar_t>(), *ov = grad.data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles<scalar_t>(c.E), 16,
                     [&](int64_t a, int64_t b) { f(c, q, g, r, os, ov, a, b); });
  });
  return {gg_sh, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("spherical_harmonics", &spherical_harmonics);
  m.impl("spherical_harmonics_backward", &spherical_harmonics_backward);
  m.impl("spherical_harmonics_double_backward", &spherical_harmonics_double_backward);
}

}  // namespace fastcg
