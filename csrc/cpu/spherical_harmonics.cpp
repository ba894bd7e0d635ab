// CPU spherical harmonics: values, fused backward (grad_vectors directly) and double backward.
// Vectors are processed in tiles of kLanes (lane-fastest arrays, see tools/gen_sh.py) so the
// generated recursion vectorises across vectors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "core/sh_eval.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

constexpr int kLanes = 8;  // one AVX2 register of float lanes

struct ShCall {
  int64_t E;
  bool normalize;
  int normalization;
};

template <int L, typename T>
void forward_tiles(const ShCall& c, const T* r, T* out, int64_t t0, int64_t t1) {
  constexpr int64_t dim = sh_dim(L);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t e = t * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, c.E - e));
    sh_forward<L, kLanes, T>(r + 3 * e, n, c.normalize, c.normalization, out + e * dim);
  }
}

template <int L, typename T>
void backward_tiles(const ShCall& c, const T* g, const T* r, T* grad, int64_t t0, int64_t t1) {
  constexpr int64_t dim = sh_dim(L);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t e = t * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, c.E - e));
    sh_backward<L, kLanes, T>(g + e * dim, r + 3 * e, n, c.normalize, c.normalization,
                              grad + 3 * e);
  }
}

template <int L, typename T>
void double_tiles(const ShCall& c, const T* gg, const T* g, const T* r, T* gg_sh, T* grad,
                  int64_t t0, int64_t t1) {
  constexpr int64_t dim = sh_dim(L);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t e = t * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, c.E - e));
    sh_double_backward<L, kLanes, T>(gg + 3 * e, g + e * dim, r + 3 * e, n, c.normalize,
                                     c.normalization, gg_sh + e * dim, grad + 3 * e);
  }
}

template <typename T>
using FwdFn = void (*)(const ShCall&, const T*, T*, int64_t, int64_t);
template <typename T>
using BwdFn = void (*)(const ShCall&, const T*, const T*, T*, int64_t, int64_t);
template <typename T>
using DblFn = void (*)(const ShCall&, const T*, const T*, const T*, T*, T*, int64_t, int64_t);

// Plain functions per (lmax, dtype) so the AVX2 + FMA clones apply (see cpu/utils.h).
#define FASTCG_SH_ENTRIES(L, T, S)                                                              \
  FASTCG_CLONES void fwd_##S##L(const ShCall& c, const T* r, T* o, int64_t a, int64_t b) {      \
    forward_tiles<L, T>(c, r, o, a, b);                                                         \
  }                                                                                             \
  FASTCG_CLONES void bwd_##S##L(const ShCall& c, const T* g, const T* r, T* o, int64_t a,       \
                                int64_t b) {                                                    \
    backward_tiles<L, T>(c, g, r, o, a, b);                                                     \
  }                                                                                             \
  FASTCG_CLONES void dbl_##S##L(const ShCall& c, const T* q, const T* g, const T* r, T* os,     \
                                T* ov, int64_t a, int64_t b) {                                  \
    double_tiles<L, T>(c, q, g, r, os, ov, a, b);                                               \
  }
#define FASTCG_SH_ALL(L) FASTCG_SH_ENTRIES(L, float, f) FASTCG_SH_ENTRIES(L, double, d)
FASTCG_SH_ALL(0)
FASTCG_SH_ALL(1)
FASTCG_SH_ALL(2)
FASTCG_SH_ALL(3)
FASTCG_SH_ALL(4)
FASTCG_SH_ALL(5)
FASTCG_SH_ALL(6)
FASTCG_SH_ALL(7)
FASTCG_SH_ALL(8)
static_assert(SH_LMAX == 8, "add entry points for the new lmax");

#define FASTCG_SH_TABLE(P, S) {P##S##0, P##S##1, P##S##2, P##S##3, P##S##4, P##S##5, P##S##6, \
                               P##S##7, P##S##8}
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

int normalization_id(const std::string& name) {
  if (name == "component") return 0;
  if (name == "norm") return 1;
  if (name == "integral") return 2;
  TORCH_CHECK(false, "normalization must be 'component', 'norm' or 'integral', got '", name, "'");
}

ShCall check_vectors(const at::Tensor& v, int64_t lmax, bool normalize,
                     const std::string& normalization) {
  TORCH_CHECK(v.dim() == 2 && v.size(1) == 3 && v.is_contiguous(),
              "vectors must be a contiguous [E, 3] tensor");
  TORCH_CHECK(v.is_floating_point(), "vectors must be floating point");
  TORCH_CHECK(lmax >= 0 && lmax <= SH_LMAX, "lmax must be in [0, ", SH_LMAX, "], got ", lmax);
  return {v.size(0), normalize, normalization_id(normalization)};
}

void check_grad_sh(const at::Tensor& g, const at::Tensor& v, int64_t lmax) {
  TORCH_CHECK(g.dim() == 2 && g.size(0) == v.size(0) && g.size(1) == (lmax + 1) * (lmax + 1) &&
                  g.is_contiguous() && g.dtype() == v.dtype(),
              "grad_sh must be a contiguous [E, (lmax+1)^2] tensor of the vectors' dtype");
}

int64_t num_tiles(int64_t E) { return (E + kLanes - 1) / kLanes; }

at::Tensor spherical_harmonics(const at::Tensor& vectors, int64_t lmax, bool normalize,
                               const std::string& normalization) {
  const ShCall c = check_vectors(vectors, lmax, normalize, normalization);
  auto out = at::empty({c.E, (lmax + 1) * (lmax + 1)}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics", [&] {
    const auto f = Entries<scalar_t>::fwd[lmax];
    const scalar_t* r = vectors.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles(c.E), 64, [&](int64_t a, int64_t b) { f(c, r, o, a, b); });
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
    at::parallel_for(0, num_tiles(c.E), 32, [&](int64_t a, int64_t b) { f(c, g, r, o, a, b); });
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> spherical_harmonics_double_backward(
    const at::Tensor& gg, const at::Tensor& grad_sh, const at::Tensor& vectors, int64_t lmax,
    bool normalize, const std::string& normalization) {
  const ShCall c = check_vectors(vectors, lmax, normalize, normalization);
  check_grad_sh(grad_sh, vectors, lmax);
  TORCH_CHECK(gg.sizes() == vectors.sizes() && gg.is_contiguous() && gg.dtype() == vectors.dtype(),
              "grad_grad_vectors must be a contiguous [E, 3] tensor of the vectors' dtype");
  auto gg_sh = at::empty_like(grad_sh);
  auto grad = at::empty_like(vectors);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics_double_backward", [&] {
    const auto f = Entries<scalar_t>::dbl[lmax];
    const scalar_t *r = vectors.data_ptr<scalar_t>(), *g = grad_sh.data_ptr<scalar_t>();
    const scalar_t* q = gg.data_ptr<scalar_t>();
    scalar_t *os = gg_sh.data_ptr<scalar_t>(), *ov = grad.data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles(c.E), 16,
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
