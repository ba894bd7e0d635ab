// Descriptor tables of the tensor-product kernels (tensor_product.cu, conv.cu), passed by value.
#pragma once
#include "core/common.h"
#include "cuda/utils.cuh"

namespace fastcg {

struct TPTables {
  const int64_t* paths;  // [P, P_NCOLS] (core/common.h PathCol)
  int64_t P;
  const int64_t* ci;  // cg_index [NNZ, 3]
  const double* cv;   // cg_value [NNZ]
};

inline void check_tp_tables(const at::Tensor& paths, const at::Tensor& cg_index,
                            const at::Tensor& cg_value, const at::Tensor& like) {
  check_table(paths, at::kLong, P_NCOLS, like, "paths");
  check_table(cg_index, at::kLong, 3, like, "cg_index");
  check_table(cg_value, at::kDouble, 0, like, "cg_value");
  TORCH_CHECK(cg_value.size(0) == cg_index.size(0), "cg_value must have one entry per CG row");
}

inline TPTables tp_tables(const at::Tensor& paths, const at::Tensor& cg_index,
                          const at::Tensor& cg_value) {
  return {paths.data_ptr<int64_t>(), paths.size(0), cg_index.data_ptr<int64_t>(),
          cg_value.data_ptr<double>()};
}

}  // namespace fastcg
