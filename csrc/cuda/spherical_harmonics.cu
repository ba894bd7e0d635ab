// CUDA spherical harmonics: one thread per vector over csrc/core/sh_eval.h (W = 1).
#include <torch/library.h>

#include <string>

#include "core/sh_eval.h"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

template <int L, typename T>
__global__ void sh_fwd_kernel(const T* r, int64_t E, bool nz, int nm, T* out) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e < E) sh_forward<L, 1, T>(r + 3 * e, 1, nz, nm, out + e * sh_dim(L));
}

template <int L, typename T>
__global__ void sh_bwd_kernel(const T* g, const T* r, int64_t E, bool nz, int nm, T* grad) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e < E) sh_backward<L, 1, T>(g + e * sh_dim(L), r + 3 * e, 1, nz, nm, grad + 3 * e);
}

template <int L, typename T>
__global__ void sh_dbl_kernel(const T* gg, const T* g, const T* r, int64_t E, bool nz, int nm,
                              T* gg_sh, T* grad) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e < E)
    sh_double_backward<L, 1, T>(gg + 3 * e, g + e * sh_dim(L), r + 3 * e, 1, nz, nm,
                                gg_sh + e * sh_dim(L), grad + 3 * e);
}

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

int normalization_id(const std::string& name) {
  if (name == "component") return 0;
  if (name == "norm") return 1;
  if (name == "integral") return 2;
  TORCH_CHECK(false, "normalization must be 'component', 'norm' or 'integral', got '", name, "'");
}

void check_vectors(const at::Tensor& v, int64_t lmax) {
  check_cuda(v, "vectors");
  TORCH_CHECK(v.dim() == 2 && v.size(1) == 3 && v.is_contiguous() && v.is_floating_point(),
              "vectors must be a contiguous floating [E, 3] tensor");
  TORCH_CHECK(lmax >= 0 && lmax <= SH_LMAX, "lmax must be in [0, ", SH_LMAX, "], got ", lmax);
}

at::Tensor spherical_harmonics(const at::Tensor& v, int64_t lmax, bool nz,
                               const std::string& normalization) {
  check_vectors(v, lmax);
  const int nm = normalization_id(normalization);
  const c10::cuda::CUDAGuard guard(v.device());
  const int64_t E = v.size(0);
  auto out = at::empty({E, (lmax + 1) * (lmax + 1)}, v.options());
  if (E == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "spherical_harmonics_cuda", [&] {
    with_lmax(lmax, [&]<int L>() {
      sh_fwd_kernel<L, scalar_t><<<blocks_for(E), kThreads, 0, stream>>>(
          v.data_ptr<scalar_t>(), E, nz, nm, out.data_ptr<scalar_t>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor spherical_harmonics_backward(const at::Tensor& g, const at::Tensor& v, int64_t lmax,
                                        bool nz, const std::string& normalization) {
  check_vectors(v, lmax);
  check_cuda(g, "grad_sh");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == v.size(0) && g.size(1) == (lmax + 1) * (lmax + 1) &&
                  g.is_contiguous() && g.dtype() == v.dtype(),
              "grad_sh must be a contiguous [E, (lmax+1)^2] tensor of the vectors' dtype");
  const int nm = normalization_id(normalization);
  const c10::cuda::CUDAGuard guard(v.device());
  const int64_t E = v.size(0);
  auto grad = at::empty_like(v);
  if (E == 0) return grad;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "spherical_harmonics_backward_cuda", [&] {
    with_lmax(lmax, [&]<int L>() {
      sh_bwd_kernel<L, scalar_t><<<blocks_for(E), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), E, nz, nm, grad.data_ptr<scalar_t>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

std::tuple<at::Tensor, at::Tensor> spherical_harmonics_double_backward(
    const at::Tensor& gg, const at::Tensor& g, const at::Tensor& v, int64_t lmax, bool nz,
    const std::string& normalization) {
  check_vectors(v, lmax);
  check_cuda(g, "grad_sh");
  check_cuda(gg, "grad_grad_vectors");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == v.size(0) && g.size(1) == (lmax + 1) * (lmax + 1) &&
                  g.is_contiguous() && g.dtype() == v.dtype(),
              "grad_sh must be a contiguous [E, (lmax+1)^2] tensor of the vectors' dtype");
  TORCH_CHECK(gg.sizes() == v.sizes() && gg.is_contiguous() && gg.dtype() == v.dtype(),
              "grad_grad_vectors must be a contiguous [E, 3] tensor of the vectors' dtype");
  const int nm = normalization_id(normalization);
  const c10::cuda::CUDAGuard guard(v.device());
  const int64_t E = v.size(0);
  auto gg_sh = at::empty_like(g);
  auto grad = at::empty_like(v);
  if (E == 0) return {gg_sh, grad};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "spherical_harmonics_double_backward_cuda", [&] {
    with_lmax(lmax, [&]<int L>() {
      sh_dbl_kernel<L, scalar_t><<<blocks_for(E), kThreads, 0, stream>>>(
          gg.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), E, nz, nm,
          gg_sh.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gg_sh, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) {
  m.impl("spherical_harmonics", &spherical_harmonics);
  m.impl("spherical_harmonics_backward", &spherical_harmonics_backward);
  m.impl("spherical_harmonics_double_backward", &spherical_harmonics_double_backward);
}

}  // namespace fastcg
