// CUDA equivariant linear over csrc/core/linear.h: one thread per output element (row, feature)
// for the forward and grad_x, one thread per weight element (species, k) for grad_weights,
// summing over its rows (those of its species, grouped on the device by a stable sort) in input
// order. Every element has one writer: no atomics, deterministic.
#include <torch/library.h>

#include <array>

#include "core/linear.h"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

struct LinTables {
  const int64_t* paths;  // [P, L_NCOLS] (core/common.h LinCol)
  const double* coeff;   // [P]
  int64_t P;
};

// out[b, j] (linear_out_element) or grad_x[b, j] (linear_grad_in_element, with in = grad_out).
template <typename T, bool kGradIn>
__global__ void linear_rows_kernel(LinTables tb, const T* in, const T* w, const int64_t* species,
                                   int64_t B, int64_t in_width, int64_t out_width, int64_t wn,
                                   T* out) {
  const int64_t t = thread_index();
  if (t >= B * out_width) return;
  const int64_t b = t / out_width, j = t % out_width;
  const T* row = in + b * in_width;
  const T* wr = species ? w + species[b] * wn : w;
  out[t] = kGradIn ? linear_grad_in_element(tb.paths, tb.coeff, tb.P, row, wr, j)
                   : linear_out_element(tb.paths, tb.coeff, tb.P, row, wr, j);
}

// grad_w[s, k] = sum over the rows of species s (all rows without species) of the row's term.
template <typename T>
__global__ void linear_grad_w_kernel(LinTables tb, const T* x, const T* g, const int64_t* order,
                                     const int64_t* off, int64_t S, int64_t B, int64_t din,
                                     int64_t dout, int64_t wn, T* gw) {
  const int64_t t = thread_index();
  if (t >= S * wn) return;
  const int64_t s = t / wn, k = t % wn;
  const int64_t begin = order ? off[s] : 0, end = order ? off[s + 1] : B;
  T acc = T(0);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = order ? order[r] : r;
    acc += linear_grad_weight_element(tb.paths, tb.coeff, tb.P, x + b * din, g + b * dout, k);
  }
  gw[t] = acc;
}

// ---- host side: checks and launches (the kernels above also build as host code for
// tests/test_cuda_emulation.py) ----

LinTables check_linear(const at::Tensor& x, const at::Tensor& w,
                       const c10::optional<at::Tensor>& species, const at::Tensor& paths,
                       const at::Tensor& coeff, int64_t dout) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D tensor");
  check_like_cuda(w, x, "weights");
  TORCH_CHECK(w.dim() == (species.has_value() ? 2 : 1),
              "weights must be [numel] without species and [S, numel] with species");
  TORCH_CHECK(dout >= 0, "dim_out must be >= 0");
  check_table(paths, at::kLong, L_NCOLS, x, "linear paths");
  check_table(coeff, at::kDouble, 0, x, "path_coeff");
  TORCH_CHECK(coeff.size(0) == paths.size(0), "path_coeff must have one entry per path");
  if (species.has_value()) {
    check_index_shape(*species, x.size(0), x, "species");
    check_index_cuda(*species, w.size(0));
  }
  check_linear_paths_cuda(paths, x.size(1), dout, w.size(-1));
  return {paths.data_ptr<int64_t>(), coeff.data_ptr<double>(), paths.size(0)};
}

const int64_t* species_ptr(const c10::optional<at::Tensor>& species) {
  return species.has_value() ? species->data_ptr<int64_t>() : nullptr;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w,
                  const c10::optional<at::Tensor>& species, const at::Tensor& paths,
                  const at::Tensor& coeff, int64_t dim_out) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const LinTables tb = check_linear(x, w, species, paths, coeff, dim_out);
  const int64_t B = x.size(0), n = B * dim_out;
  auto out = at::empty({B, dim_out}, x.options());
  if (n == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_cuda", [&] {
    linear_rows_kernel<scalar_t, false><<<blocks_for(n), kThreads, 0, stream>>>(
        tb, x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), species_ptr(species), B, x.size(1),
        dim_out, w.size(-1), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> linear_backward(const at::Tensor& g, const at::Tensor& x,
                                                   const at::Tensor& w,
                                                   const c10::optional<at::Tensor>& species,
                                                   const at::Tensor& paths, const at::Tensor& coeff,
                                                   std::array<bool, 2> mask) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  check_like_cuda(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == x.size(0), "grad_out must be [", x.size(0),
              ", dim_out]");
  const LinTables tb = check_linear(x, w, species, paths, coeff, g.size(1));
  const int64_t B = x.size(0), din = x.size(1), dout = g.size(1), wn = w.size(-1);
  const int64_t S = species.has_value() ? w.size(0) : 1;
  auto gx = masked_zeros(mask[0], x), gw = masked_zeros(mask[1], w);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (mask[0] && B * din > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_backward_x_cuda", [&] {
      linear_rows_kernel<scalar_t, true><<<blocks_for(B * din), kThreads, 0, stream>>>(
          tb, g.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), species_ptr(species), B, dout, din,
          wn, gx.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (mask[1] && S * wn > 0) {
    at::Tensor order, off;
    if (species.has_value()) std::tie(order, off) = group_by(*species, S);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_backward_w_cuda", [&] {
      linear_grad_w_kernel<scalar_t><<<blocks_for(S * wn), kThreads, 0, stream>>>(
          tb, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
          order.defined() ? order.data_ptr<int64_t>() : nullptr,
          off.defined() ? off.data_ptr<int64_t>() : nullptr, S, B, din, dout, wn,
          gw.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {gx, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) {
  m.impl("linear", &linear);
  m.impl("linear_backward", &linear_backward);
}

}  // namespace fastcg
