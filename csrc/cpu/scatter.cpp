// CPU scatter_sum: rows grouped by index (stable counting sort), one output row per task, summed
// in input order: the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "core/scatter.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

at::Tensor scatter_sum(const at::Tensor& src, const at::Tensor& index, int64_t dim_size) {
  check_cpu(src, "src");
  TORCH_CHECK(src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble,
              "src must be float32 or float64, got ", src.scalar_type());
  TORCH_CHECK((src.dim() == 1 || src.dim() == 2) && src.is_contiguous(),
              "src must be a contiguous [E] or [E, F] tensor, got shape ", src.sizes());
  TORCH_CHECK(dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
  check_index(index, src.size(0), dim_size, "index");
  const int64_t E = src.size(0), F = src.dim() == 2 ? src.size(1) : 1;
  auto out = src.dim() == 2 ? at::zeros({dim_size, F}, src.options())
                            : at::zeros({dim_size}, src.options());
  if (E == 0 || F == 0) return out;
  std::vector<int64_t> off, order;
  csr(index.data_ptr<int64_t>(), E, dim_size, off, order);
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "scatter_sum", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // Grain in rows so a task holds at least ~2k elements: tiny F stays cheap to schedule.
    const int64_t grain = std::max<int64_t>(1, 2048 / F);
    at::parallel_for(0, dim_size, grain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        segment_sum(s, order.data(), off[n], off[n + 1], F, o + n * F);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) { m.impl("scatter_sum", &scatter_sum); }

}  // namespace fastcg
