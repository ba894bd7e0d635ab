// Segment sums shared by CPU and CUDA kernels.
#pragma once
#include "core/common.h"

namespace fastcg {

// out[f] += sum over the segment's rows r (in the given order) of src[order[r] * F + f].
template <typename T>
FASTCG_HD void segment_sum(const T* src, const int64_t* order, int64_t begin, int64_t end,
                           int64_t F, T* out) {
  for (int64_t t = begin; t < end; ++t) {
    const T* row = src + order[t] * F;
    for (int64_t f = 0; f < F; ++f) out[f] += row[f];
  }
}

// Column f of segment_sum (one CUDA thread per output element), summed in the same order.
template <typename T>
FASTCG_HD T segment_sum_column(const T* src, const int64_t* order, int64_t begin, int64_t end,
                               int64_t F, int64_t f) {
  T acc = T(0);
  for (int64_t t = begin; t < end; ++t) acc += src[order[t] * F + f];
  return acc;
}

}  // namespace fastcg
