// CPU spherical harmonics: values, fused backward (grad_vectors directly) and double backward.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "core/sh_eval.h"

namespace fastcg {
namespace {

int normalization_id(const std::string& name) {
  if (name == "component") return 0;
  if (name == "norm") return 1;
  if (name == "integral") return 2;
  TORCH_CHECK(false, "normalization must be 'component', 'norm' or 'integral', got '", name, "'");
}

void check_vectors(const at::Tensor& v, int64_t lmax) {
  TORCH_CHECK(v.dim() == 2 && v.size(1) == 3 && v.is_contiguous(),
              "vectors must be a contiguous [E, 3] tensor");
  TORCH_CHECK(v.is_floating_point(), "vectors must be floating point");
  TORCH_CHECK(lmax >= 0 && lmax <= SH_LMAX, "lmax must be in [0, ", SH_LMAX, "], got ", lmax);
}

// Calls f.template operator()<L>() with L = lmax as a compile-time constant.
template <typename F>
void with_lmax(int64_t lmax, F&& f) {
  switch (lmax) {
    case 0: return f.template operator()<0>();
    case 1: return f.template operator()<1>();
    case 2: return f.template operator()<2>();
    case 3: return f.template operator()<3>();
    case 4: return f.template operator()<4>();
    case 5: return f.template operator()<5>();
    case 6: return f.template operator()<6>();
    case 7: return f.template operator()<7>();
    default: return f.template operator()<8>();
  }
}

at::Tensor spherical_harmonics(const at::Tensor& vectors, int64_t lmax, bool normalize,
                               const std::string& normalization) {
  check_vectors(vectors, lmax);
  const int norm = normalization_id(normalization);
  const int64_t E = vectors.size(0), dim = (lmax + 1) * (lmax + 1);
  auto out = at::empty({E, dim}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics", [&] {
    const scalar_t* r = vectors.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    with_lmax(lmax, [&]<int L>() {
      at::parallel_for(0, E, 1024, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e)
          sh_forward<L, scalar_t>(r + 3 * e, normalize, norm, o + e * dim);
      });
    });
  });
  return out;
}

at::Tensor spherical_harmonics_backward(const at::Tensor& grad_sh, const at::Tensor& vectors,
                                        int64_t lmax, bool normalize,
                                        const std::string& normalization) {
  check_vectors(vectors, lmax);
  const int norm = normalization_id(normalization);
  const int64_t E = vectors.size(0), dim = (lmax + 1) * (lmax + 1);
  TORCH_CHECK(grad_sh.dim() == 2 && grad_sh.size(0) == E && grad_sh.size(1) == dim &&
                  grad_sh.is_contiguous() && grad_sh.dtype() == vectors.dtype(),
              "grad_sh must be a contiguous [E, (lmax+1)^2] tensor of the vectors' dtype");
  auto grad = at::empty_like(vectors);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics_backward", [&] {
    const scalar_t *r = vectors.data_ptr<scalar_t>(), *g = grad_sh.data_ptr<scalar_t>();
    scalar_t* o = grad.data_ptr<scalar_t>();
    with_lmax(lmax, [&]<int L>() {
      at::parallel_for(0, E, 512, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e)
          sh_backward<L, scalar_t>(g + e * dim, r + 3 * e, normalize, norm, o + 3 * e);
      });
    });
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> spherical_harmonics_double_backward(
    const at::Tensor& gg, const at::Tensor& grad_sh, const at::Tensor& vectors, int64_t lmax,
    bool normalize, const std::string& normalization) {
  check_vectors(vectors, lmax);
  const int norm = normalization_id(normalization);
  const int64_t E = vectors.size(0), dim = (lmax + 1) * (lmax + 1);
  TORCH_CHECK(grad_sh.dim() == 2 && grad_sh.size(0) == E && grad_sh.size(1) == dim &&
                  grad_sh.is_contiguous() && grad_sh.dtype() == vectors.dtype(),
              "grad_sh must be a contiguous [E, (lmax+1)^2] tensor of the vectors' dtype");
  TORCH_CHECK(gg.sizes() == vectors.sizes() && gg.is_contiguous() && gg.dtype() == vectors.dtype(),
              "grad_grad_vectors must be a contiguous [E, 3] tensor of the vectors' dtype");
  auto gg_sh = at::empty_like(grad_sh);
  auto grad = at::empty_like(vectors);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics_double_backward", [&] {
    const scalar_t *r = vectors.data_ptr<scalar_t>(), *g = grad_sh.data_ptr<scalar_t>();
    const scalar_t* q = gg.data_ptr<scalar_t>();
    scalar_t *os = gg_sh.data_ptr<scalar_t>(), *ov = grad.data_ptr<scalar_t>();
    with_lmax(lmax, [&]<int L>() {
      at::parallel_for(0, E, 256, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e)
          sh_double_backward<L, scalar_t>(q + 3 * e, g + e * dim, r + 3 * e, normalize, norm,
                                          os + e * dim, ov + 3 * e);
      });
    });
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
