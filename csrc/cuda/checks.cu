// Device-side argument checks shared by the CUDA kernels (see cuda/utils.cuh).
#include "core/linear.h"
#include "core/tp.h"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

__global__ void check_index_kernel(const int64_t* idx, int64_t n, int64_t bound) {
  const int64_t i = thread_index();
  if (i < n) CUDA_KERNEL_ASSERT(idx[i] >= 0 && idx[i] < bound);
}

__global__ void check_paths_kernel(const int64_t* paths, int64_t P, const int64_t* ci, int64_t nnz,
                                   int64_t d1, int64_t d2, int64_t dout, int64_t wn) {
  const int64_t q = thread_index();
  if (q < P) CUDA_KERNEL_ASSERT(path_fits(paths + q * P_NCOLS, ci, nnz, d1, d2, dout, wn));
}

__global__ void check_linear_paths_kernel(const int64_t* paths, int64_t P, int64_t din,
                                          int64_t dout, int64_t wn) {
  const int64_t q = thread_index();
  if (q < P) CUDA_KERNEL_ASSERT(linear_path_fits(paths + q * L_NCOLS, din, dout, wn));
}

}  // namespace

void check_index_cuda(const at::Tensor& idx, int64_t bound) {
  const int64_t n = idx.numel();
  if (n == 0) return;
  check_index_kernel<<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      idx.data_ptr<int64_t>(), n, bound);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_paths_cuda(const at::Tensor& paths, const at::Tensor& cg_index, int64_t d1, int64_t d2,
                      int64_t dout, int64_t wn) {
  const int64_t P = paths.size(0);
  if (P == 0) return;
  check_paths_kernel<<<blocks_for(P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      paths.data_ptr<int64_t>(), P, cg_index.data_ptr<int64_t>(), cg_index.size(0), d1, d2, dout,
      wn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_linear_paths_cuda(const at::Tensor& paths, int64_t din, int64_t dout, int64_t wn) {
  const int64_t P = paths.size(0);
  if (P == 0) return;
  check_linear_paths_kernel<<<blocks_for(P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      paths.data_ptr<int64_t>(), P, din, dout, wn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastcg
