// CPU tensor product: rows in parallel, every path of the descriptor table for each row.
// uvu paths with a single-channel x2 block run channel-fastest on an ir_mul copy of the row
// (cpu/utils.h TPPlan); other paths run core/tp.h on the mul_ir row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "core/tp.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

void check_tp(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
              const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
              int64_t dim_out) {
  check_tables(paths, cg_index, cg_value);
  const int64_t B = x1.size(0);
  check_rows(x1, B, "x1");
  check_rows(x2, B, "x2");
  check_like(x2, x1, "x2");
  check_weights(w, B, x1);
  check_paths(paths, cg_index, x1.size(1), x2.size(1), dim_out, w.size(-1));
}

at::Tensor tensor_product(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
                          const at::Tensor& paths, const at::Tensor& cg_index,
                          const at::Tensor& cg_value, int64_t dim_out) {
  check_tp(x1, x2, w, paths, cg_index, cg_value, dim_out);
  const int64_t B = x1.size(0), d1 = x1.size(1), d2 = x2.size(1), wn = w.size(-1);
  const bool shared = w.dim() == 1;
  auto out = at::zeros({B, dim_out}, x1.options());
  const TPPlan pl = make_plan(paths, cg_index);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "tensor_product", [&] {
    const scalar_t *a = x1.data_ptr<scalar_t>(), *b = x2.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 8, [&](int64_t r0, int64_t r1) {
      Scratch<scalar_t> sc(pl, pl.out_size);
      std::vector<scalar_t> aT(pl.in_size);
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* wr = shared ? wp : wp + r * wn;
        if (!pl.fast.empty()) {
          to_ir_mul(a + r * d1, pl.in, aT.data());
          std::fill(sc.accT.begin(), sc.accT.end(), scalar_t(0));
          fast_forward(pl, ci, cv, aT.data(), b + r * d2, wr, sc.accT.data(), sc);
          add_from_ir_mul(sc.accT.data(), pl.out, o + r * dim_out);
        }
        for (int64_t q : pl.generic)
          tp_path_forward<scalar_t>(p + q * P_NCOLS, ci, cv, a + r * d1, b + r * d2, wr,
                                    o + r * dim_out);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tensor_product_backward(
    const at::Tensor& g, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w,
    const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
    std::array<bool, 3> mask) {
  check_rows(g, x1.size(0), "grad_out");
  check_like(g, x1, "grad_out");
  check_tp(x1, x2, w, paths, cg_index, cg_value, g.size(1));
  const int64_t B = x1.size(0), d1 = x1.size(1), d2 = x2.size(1), wn = w.size(-1);
  const int64_t dout = g.size(1);
  const bool shared = w.dim() == 1;
  auto gx1 = masked(mask[0], x1), gx2 = masked(mask[1], x2), gw = masked(mask[2], w);
  const TPPlan pl = make_plan(paths, cg_index);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const double* cv = cg_value.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "tensor_product_backward", [&] {
    const scalar_t *a = x1.data_ptr<scalar_t>(), *b = x2.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    scalar_t* ga = mask[0] ? gx1.data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = mask[1] ? gx2.data_ptr<scalar_t>() : nullptr;
    scalar_t* gW = mask[2] ? gw.data_ptr<scalar_t>() : nullptr;
    if (!(ga || gb || gW)) return;
    const bool reduce_w = gW && shared;
    for_row_blocks<scalar_t>(B, reduce_w ? wn : 0, gW, [&](int64_t r0, int64_t r1, scalar_t* acc) {
      Scratch<scalar_t> sc(pl, pl.in_size);
      std::vector<scalar_t> aT(pl.in_size), gT(pl.out_size);
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* wr = shared ? wp : wp + r * wn;
        scalar_t* gar = ga ? ga + r * d1 : nullptr;
        scalar_t* gbr = gb ? gb + r * d2 : nullptr;
        scalar_t* gwr = gW ? (shared ? acc : gW + r * wn) : nullptr;
        if (!pl.fast.empty()) {
          to_ir_mul(a + r * d1, pl.in, aT.data());
          to_ir_mul(gp + r * dout, pl.out, gT.data());
          std::fill(sc.accT.begin(), sc.accT.end(), scalar_t(0));
          fast_backward(pl, ci, cv, aT.data(), gT.data(), b + r * d2, wr,
                        gar ? sc.accT.data() : nullptr, gbr, gwr, sc);
          if (gar) add_from_ir_mul(sc.accT.data(), pl.in, gar);
        }
        for (int64_t q : pl.generic)
          tp_path_backward<scalar_t>(p + q * P_NCOLS, ci, cv, gp + r * dout, a + r * d1,
                                     b + r * d2, wr, gar, gbr, gwr);
      }
    });
  });
  return {gx1, gx2, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("tensor_product", &tensor_product);
  m.impl("tensor_product_backward", &tensor_product_backward);
}

}  // namespace fastcg
