// Shared helpers of the CUDA kernels: launch geometry, checks, device-side grouping.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <utility>

namespace fastcg {

constexpr int kThreads = 128;

inline int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// Global index of this thread (64-bit: E * features can pass 2^31).
__device__ __forceinline__ int64_t thread_index() {
  return blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
}

// Same dtype and device as the features, contiguous.
inline void check_like_cuda(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.dtype() == like.dtype() && t.device() == like.device(), name,
              " must have the dtype and device of the features");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// An int64 index of shape [n] on the features' device. Its values are checked against [0, bound)
// by the Python boundary (fastcg/ops) and, without a host sync, by check_index_cuda below.
inline void check_index_shape(const at::Tensor& idx, int64_t n, const at::Tensor& like,
                              const char* name) {
  TORCH_CHECK(idx.dtype() == at::kLong && idx.dim() == 1 && idx.size(0) == n &&
                  idx.is_contiguous() && idx.device() == like.device(),
              name, " must be a contiguous int64 tensor of shape [", n, "] on ", like.device());
}

// A descriptor table: contiguous, of this dtype, on the features' device (fastcg/ops moves the
// descriptor's tables there once).
inline void check_table(const at::Tensor& t, at::ScalarType dtype, int64_t cols,
                        const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.device() == like.device() &&
                  (cols == 0 ? t.dim() == 1 : (t.dim() == 2 && t.size(1) == cols)),
              name, " must be a contiguous ", dtype, " table with ", cols,
              " columns on the features' device ", like.device());
}

// Device-side checks (CUDA_KERNEL_ASSERT stays on in release builds): a bad index or path table
// passed to torch.ops.fastcg directly stops with a device assert instead of writing out of
// bounds, and valid inputs cost one small launch and no host sync. Defined in checks.cu.
void check_index_cuda(const at::Tensor& idx, int64_t bound);
void check_paths_cuda(const at::Tensor& paths, const at::Tensor& cg_index, int64_t d1, int64_t d2,
                      int64_t dout, int64_t wn);
void check_linear_paths_cuda(const at::Tensor& paths, int64_t din, int64_t dout, int64_t wn);

// 0-d bool tensor on key's device: key (1-D, length >= 1) is non-decreasing. No host sync.
inline at::Tensor sorted_flag(const at::Tensor& key) {
  const int64_t n = key.size(0);
  return n < 2 ? at::ones({}, key.options().dtype(at::kBool))
               : at::ge(key.narrow(0, 1, n - 1), key.narrow(0, 0, n - 1)).all();
}

// CSR offsets of a key sorted in [0, bins): row range [off[b], off[b + 1]) holds key b (garbage
// for an unsorted key; sorted_flag tells).
inline at::Tensor sorted_offsets(const at::Tensor& key, int64_t bins) {
  return at::searchsorted(key, at::arange(bins + 1, key.options()));
}

// Rows grouped by key on the device, stably (input order inside a group), with no host sync:
// (order [n], offsets [bins + 1]); rows with a key outside [0, bins) fall outside every group.
inline std::pair<at::Tensor, at::Tensor> group_by(const at::Tensor& key, int64_t bins) {
  auto sorted = key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  return {std::get<1>(sorted), sorted_offsets(std::get<0>(sorted), bins)};
}

// A fresh empty tensor per masked output: outputs of one op must not alias each other.
inline at::Tensor masked_zeros(bool on, const at::Tensor& like) {
  return on ? at::zeros_like(like) : at::empty({0}, like.options());
}

// Rows per chunk when each row needs its own `width`-wide partial sum (shared weight gradients):
// at most 2^24 elements (64 MiB in float32) of partials at a time.
inline int64_t rows_per_chunk(int64_t rows, int64_t width) {
  const int64_t cap = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(width, 1));
  return std::max<int64_t>(1, std::min(rows, cap));
}

}  // namespace fastcg
