// CPU scatter_sum: rows grouped by index (stable), one output row per task: deterministic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/utils.h"

namespace fastcg {
namespace {

at::Tensor scatter_sum(const at::Tensor& src, const at::Tensor& index, int64_t dim_size) {
  TORCH_CHECK(src.dim() == 2 && src.is_contiguous(), "src must be contiguous 2-D");
  TORCH_CHECK(dim_size >= 0, "dim_size must be >= 0");
  check_index(index, src.size(0), dim_size, "index");
  const int64_t E = src.size(0), F = src.size(1);
  auto out = at::zeros({dim_size, F}, src.options());
  const int64_t* idx = index.data_ptr<int64_t>();
  std::vector<int64_t> off, order;
  csr(idx, E, dim_size, off, order);
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "scatter_sum", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, dim_size, 16, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t t = off[n]; t < off[n + 1]; ++t) {
          const scalar_t* row = s + order[t] * F;
          for (int64_t f = 0; f < F; ++f) o[n * F + f] += row[f];
        }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) { m.impl("scatter_sum", &scatter_sum); }

}  // namespace fastcg
