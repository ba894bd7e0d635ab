// CPU tensor product: one row per task, every path of the descriptor table (core/tp.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "core/tp.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

at::Tensor tensor_product(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
                          const at::Tensor& paths, const at::Tensor& cg_index,
                          const at::Tensor& cg_value, int64_t dim_out) {
  check_tables(paths, cg_index, cg_value);
  const int64_t B = x1.size(0);
  check_rows(x1, B, "x1");
  check_rows(x2, B, "x2");
  check_like(x2, x1, "x2");
  check_weights(w, B, x1);
  check_paths(paths, cg_index, x1.size(1), x2.size(1), dim_out, w.size(-1));
  const bool shared = w.dim() == 1;
  auto out = at::zeros({B, dim_out}, x1.options());
  const auto bo = operand_blocks(paths, 2);
  const auto x1t = relayout(x1, operand_blocks(paths, 0), true);
  const auto x2t = relayout(x2, operand_blocks(paths, 1), true);
  const int64_t P = paths.size(0), wn = w.size(-1);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "tensor_product", [&] {
    const scalar_t *a = x1t.data_ptr<scalar_t>(), *b = x2t.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t d1 = x1.size(1), d2 = x2.size(1);
    at::parallel_for(0, B, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t q = 0; q < P; ++q)
          tp_path_forward<scalar_t>(p + q * P_NCOLS, ci, cv, a + r * d1, b + r * d2,
                                    shared ? wp : wp + r * wn, o + r * dim_out);
    });
  });
  return relayout(out, bo, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tensor_product_backward(
    const at::Tensor& g, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
    const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
    std::array<bool, 3> mask) {
  check_tables(paths, cg_index, cg_value);
  const int64_t B = x1.size(0);
  check_rows(g, B, "grad_out");
  check_rows(x1, B, "x1");
  check_rows(x2, B, "x2");
  check_like(x2, x1, "x2");
  check_like(g, x1, "grad_out");
  check_weights(w, B, x1);
  check_paths(paths, cg_index, x1.size(1), x2.size(1), g.size(1), w.size(-1));
  const bool shared = w.dim() == 1;
  auto gx1 = masked(mask[0], x1), gx2 = masked(mask[1], x2), gw = masked(mask[2], w);
  const auto b1 = operand_blocks(paths, 0), b2 = operand_blocks(paths, 1);
  const auto x1t = relayout(x1, b1, true), x2t = relayout(x2, b2, true);
  const auto gt = relayout(g, operand_blocks(paths, 2), true);
  const int64_t P = paths.size(0), wn = w.size(-1), dout = g.size(1);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "tensor_product_backward", [&] {
    const scalar_t *a = x1t.data_ptr<scalar_t>(), *b = x2t.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *gp = gt.data_ptr<scalar_t>();
    scalar_t* ga = mask[0] ? gx1.data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = mask[1] ? gx2.data_ptr<scalar_t>() : nullptr;
    scalar_t* gW = mask[2] ? gw.data_ptr<scalar_t>() : nullptr;
    const int64_t d1 = x1.size(1), d2 = x2.size(1);
    auto row = [&](int64_t r, scalar_t* ga_r, scalar_t* gb_r, scalar_t* gw_r) {
      for (int64_t q = 0; q < P; ++q)
        tp_path_backward<scalar_t>(p + q * P_NCOLS, ci, cv, gp + r * dout, a + r * d1, b + r * d2,
                                   shared ? wp : wp + r * wn, ga_r, gb_r, gw_r);
    };
    at::parallel_for(0, B, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        row(r, ga ? ga + r * d1 : nullptr, gb ? gb + r * d2 : nullptr,
            (gW && !shared) ? gW + r * wn : nullptr);
    });
    if (gW && shared && wn > 0)
      blocked_sum<scalar_t>(B, wn, gW, [&](int64_t r, scalar_t* acc) { row(r, nullptr, nullptr, acc); });
  });
  if (mask[0]) gx1 = relayout(gx1, b1, false);
  if (mask[1]) gx2 = relayout(gx2, b2, false);
  return {gx1, gx2, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("tensor_product", &tensor_product);
  m.impl("tensor_product_backward", &tensor_product_backward);
}

}  // namespace fastcg
