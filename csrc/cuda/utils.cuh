// Shared helpers of the CUDA kernels: launch geometry and checks.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace fastcg {

constexpr int kThreads = 128;

inline int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
}

}  // namespace fastcg
