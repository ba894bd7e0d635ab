// CUDA scatter_sum: rows grouped by index on the device (stable sort, no host sync), one thread
// per output element summing its group in input order: deterministic, no atomics, and the same
// order of additions as the CPU kernel.
#include <torch/library.h>

#include "core/scatter.h"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

template <typename T>
__global__ void scatter_sum_kernel(const T* src, const int64_t* order, const int64_t* off,
                                   int64_t N, int64_t F, T* out) {
  const int64_t t = thread_index();
  if (t >= N * F) return;
  const int64_t n = t / F, f = t % F;
  out[t] = segment_sum_column(src, order, off[n], off[n + 1], F, f);
}

// ---- host side: checks and launches (the kernels above also build as host code for
// tests/test_cuda_emulation.py) ----

at::Tensor scatter_sum(const at::Tensor& src, const at::Tensor& index, int64_t dim_size) {
  check_cuda(src, "src");
  TORCH_CHECK((src.dim() == 1 || src.dim() == 2) && src.is_contiguous(),
              "src must be a contiguous [E] or [E, F] tensor");
  TORCH_CHECK(dim_size >= 0, "dim_size must be >= 0");
  check_index_shape(index, src.size(0), src, "index");
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t E = src.size(0), F = src.dim() == 2 ? src.size(1) : 1;
  auto out = src.dim() == 2 ? at::zeros({dim_size, F}, src.options())
                            : at::zeros({dim_size}, src.options());
  if (E == 0 || F == 0 || dim_size == 0) return out;
  check_index_cuda(index, dim_size);
  const auto [order, off] = group_by(index, dim_size);
  const int64_t n = dim_size * F;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "scatter_sum_cuda", [&] {
    scatter_sum_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), off.data_ptr<int64_t>(), dim_size, F,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) { m.impl("scatter_sum", &scatter_sum); }

}  // namespace fastcg
