// CUDA tensor product: one thread per row looping over the paths of csrc/core/tp.h (the same
// per-path functions as the CPU kernels' generic paths). Rows own their outputs, so nothing is
// atomic; shared-weight gradients go through per-row partials summed by ATen (deterministic).
#include <torch/library.h>

#include <array>

#include "core/tp.h"
#include "cuda/tp_common.cuh"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

template <typename T>
__global__ void tp_fwd_kernel(TPTables tb, const T* x1, const T* x2, const T* w, int64_t B,
                              int64_t d1, int64_t d2, int64_t wn, bool shared, int64_t dout,
                              T* out) {
  const int64_t r = thread_index();
  if (r >= B) return;
  const T* wr = shared ? w : w + r * wn;
  for (int64_t q = 0; q < tb.P; ++q)
    tp_path_forward<T>(tb.paths + q * P_NCOLS, tb.ci, tb.cv, x1 + r * d1, x2 + r * d2, wr,
                       out + r * dout);
}

// Rows [r0, r0 + n); gw row t belongs to row r0 + t (per-row weights) or is row t of the chunk's
// partials (shared weights).
template <typename T>
__global__ void tp_bwd_kernel(TPTables tb, const T* g, const T* x1, const T* x2, const T* w,
                              int64_t r0, int64_t n, int64_t d1, int64_t d2, int64_t wn,
                              bool shared, int64_t dout, T* gx1, T* gx2, T* gw) {
  const int64_t t = thread_index();
  if (t >= n) return;
  const int64_t r = r0 + t;
  const T* wr = shared ? w : w + r * wn;
  T* ga = gx1 ? gx1 + r * d1 : nullptr;
  T* gb = gx2 ? gx2 + r * d2 : nullptr;
  T* gwr = gw ? gw + (shared ? t : r) * wn : nullptr;
  for (int64_t q = 0; q < tb.P; ++q)
    tp_path_backward<T>(tb.paths + q * P_NCOLS, tb.ci, tb.cv, g + r * dout, x1 + r * d1,
                        x2 + r * d2, wr, ga, gb, gwr);
}

// ---- host side: checks and launches (the kernels above also build as host code for
// tests/test_cuda_emulation.py) ----

void check_tp(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
              const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
              int64_t dim_out) {
  TORCH_CHECK(x1.dim() == 2 && x1.is_contiguous(), "x1 must be a contiguous 2-D tensor");
  check_like_cuda(x2, x1, "x2");
  TORCH_CHECK(x2.dim() == 2 && x2.size(0) == x1.size(0), "x2 must be [", x1.size(0), ", dim2]");
  check_like_cuda(w, x1, "weights");
  TORCH_CHECK(w.dim() == 1 || (w.dim() == 2 && w.size(0) == x1.size(0)),
              "weights must be [numel] or [", x1.size(0), ", numel]");
  TORCH_CHECK(dim_out >= 0, "dim_out must be >= 0");
  check_tp_tables(paths, cg_index, cg_value, x1);
  check_paths_cuda(paths, cg_index, x1.size(1), x2.size(1), dim_out, w.size(-1));
}

at::Tensor tensor_product(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
                          const at::Tensor& paths, const at::Tensor& cg_index,
                          const at::Tensor& cg_value, int64_t dim_out) {
  check_cuda(x1, "x1");
  const c10::cuda::CUDAGuard guard(x1.device());
  check_tp(x1, x2, w, paths, cg_index, cg_value, dim_out);
  const int64_t B = x1.size(0);
  auto out = at::zeros({B, dim_out}, x1.options());
  if (B == 0 || paths.size(0) == 0) return out;
  const TPTables tb = tp_tables(paths, cg_index, cg_value);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "tensor_product_cuda", [&] {
    tp_fwd_kernel<scalar_t><<<blocks_for(B), kThreads, 0, stream>>>(
        tb, x1.data_ptr<scalar_t>(), x2.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), B, x1.size(1),
        x2.size(1), w.size(-1), w.dim() == 1, dim_out, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tensor_product_backward(
    const at::Tensor& g, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
    const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
    std::array<bool, 3> mask) {
  check_cuda(x1, "x1");
  const c10::cuda::CUDAGuard guard(x1.device());
  check_like_cuda(g, x1, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == x1.size(0), "grad_out must be [", x1.size(0),
              ", dim_out]");
  check_tp(x1, x2, w, paths, cg_index, cg_value, g.size(1));
  const int64_t B = x1.size(0), wn = w.size(-1);
  const bool shared = w.dim() == 1;
  auto gx1 = masked_zeros(mask[0], x1), gx2 = masked_zeros(mask[1], x2);
  auto gw = masked_zeros(mask[2], w);
  if (B == 0 || paths.size(0) == 0 || !(mask[0] || mask[1] || mask[2])) return {gx1, gx2, gw};
  const TPTables tb = tp_tables(paths, cg_index, cg_value);
  // Shared weights: rows in chunks, each row writing its own partial gradient row.
  const bool partials = mask[2] && shared && wn > 0;
  const int64_t chunk = partials ? rows_per_chunk(B, wn) : B;
  auto part = partials ? at::empty({chunk, wn}, w.options()) : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "tensor_product_backward_cuda", [&] {
    scalar_t* ga = mask[0] ? gx1.data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = mask[1] ? gx2.data_ptr<scalar_t>() : nullptr;
    for (int64_t r0 = 0; r0 < B; r0 += chunk) {
      const int64_t n = std::min(chunk, B - r0);
      scalar_t* gwp = nullptr;
      if (partials) {
        part.zero_();
        gwp = part.data_ptr<scalar_t>();
      } else if (mask[2] && wn > 0) {
        gwp = gw.data_ptr<scalar_t>();
      }
      tp_bwd_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          tb, g.data_ptr<scalar_t>(), x1.data_ptr<scalar_t>(), x2.data_ptr<scalar_t>(),
          w.data_ptr<scalar_t>(), r0, n, x1.size(1), x2.size(1), wn, shared, g.size(1), ga, gb,
          gwp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (partials) gw.add_(part.narrow(0, 0, n).sum(0));
    }
  });
  return {gx1, gx2, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) {
  m.impl("tensor_product", &tensor_product);
  m.impl("tensor_product_backward", &tensor_product_backward);
}

}  // namespace fastcg
