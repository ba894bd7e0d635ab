// Shared helpers of the CPU kernels: table checks, CSR grouping, deterministic reductions.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "core/common.h"

// Hot loops are compiled twice, for x86-64-v3 (AVX2 + FMA) and the baseline, and picked at load
// time: the binary still runs on any x86-64 CPU (no -march=native).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTCG_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTCG_CLONES
#endif

namespace fastcg {

constexpr int64_t kBlock = 64;  // rows per partial sum: fixed, so sums do not depend on threads

inline void check_tables(const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value) {
  TORCH_CHECK(paths.dtype() == at::kLong && paths.dim() == 2 && paths.size(1) == P_NCOLS,
              "paths must be int64 [P, 13]");
  TORCH_CHECK(cg_index.dtype() == at::kLong && cg_index.dim() == 2 && cg_index.size(1) == 3,
              "cg_index must be int64 [NNZ, 3]");
  TORCH_CHECK(cg_value.dtype() == at::kDouble && cg_value.dim() == 1 &&
                  cg_value.size(0) == cg_index.size(0),
              "cg_value must be float64 [NNZ]");
  TORCH_CHECK(paths.is_contiguous() && cg_index.is_contiguous() && cg_value.is_contiguous(),
              "descriptor tables must be contiguous");
}

inline int64_t path_weight_numel(const int64_t* p) {
  const int64_t m1 = p[P_MUL1], m2 = p[P_MUL2], mo = p[P_MULO];
  switch (p[P_MODE]) {
    case UVW: return m1 * m2 * mo;
    case UVU:
    case UVV: return m1 * m2;
    case UUW: return m1 * mo;
    default: return m1;
  }
}

// Every path must stay inside the operands: a table that does not match the tensors (a wrong
// descriptor passed to torch.ops.fastcg directly) is an error here, not an out-of-bounds read.
inline void check_paths(const at::Tensor& paths, const at::Tensor& cg_index, int64_t d1,
                        int64_t d2, int64_t dout, int64_t wn) {
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const int64_t nnz = cg_index.size(0);
  for (int64_t q = 0; q < paths.size(0); ++q, p += P_NCOLS) {
    const int64_t l1 = p[P_L1], l2 = p[P_L2], l3 = p[P_L3];
    TORCH_CHECK(p[P_MODE] >= UVW && p[P_MODE] <= UUW, "path ", q, ": unknown mode");
    TORCH_CHECK(l1 >= 0 && l2 >= 0 && l3 >= 0 && p[P_MUL1] >= 0 && p[P_MUL2] >= 0 &&
                    p[P_MULO] >= 0 && p[P_OFF1] >= 0 && p[P_OFF2] >= 0 && p[P_OFFO] >= 0,
                "path ", q, ": negative entry");
    TORCH_CHECK(p[P_OFF1] + p[P_MUL1] * (2 * l1 + 1) <= d1, "path ", q, " reads past x1 (", d1,
                " features)");
    TORCH_CHECK(p[P_OFF2] + p[P_MUL2] * (2 * l2 + 1) <= d2, "path ", q, " reads past x2 (", d2,
                " features)");
    TORCH_CHECK(p[P_OFFO] + p[P_MULO] * (2 * l3 + 1) <= dout, "path ", q,
                " writes past the output (", dout, " features)");
    TORCH_CHECK(p[P_WOFF] < 0 || p[P_WOFF] + path_weight_numel(p) <= wn, "path ", q,
                " reads past the weights (", wn, " per row)");
    const bool mul_ok = p[P_MODE] == UVW ||
                        (p[P_MODE] == UVU && p[P_MULO] == p[P_MUL1]) ||
                        (p[P_MODE] == UVV && p[P_MULO] == p[P_MUL2]) ||
                        (p[P_MODE] == UUW && p[P_MUL1] == p[P_MUL2]) ||
                        (p[P_MODE] == UUU && p[P_MUL1] == p[P_MUL2] && p[P_MULO] == p[P_MUL1]);
    TORCH_CHECK(mul_ok, "path ", q, ": multiplicities do not fit its mode");
    TORCH_CHECK(0 <= p[P_CG_BEGIN] && p[P_CG_BEGIN] <= p[P_CG_END] && p[P_CG_END] <= nnz, "path ",
                q, ": CG rows out of range");
    for (int64_t n = p[P_CG_BEGIN]; n < p[P_CG_END]; ++n)
      TORCH_CHECK(0 <= ci[3 * n] && ci[3 * n] <= 2 * l1 && 0 <= ci[3 * n + 1] &&
                      ci[3 * n + 1] <= 2 * l2 && 0 <= ci[3 * n + 2] && ci[3 * n + 2] <= 2 * l3,
                  "path ", q, ": CG index out of range");
  }
}

inline void check_rows(const at::Tensor& t, int64_t rows, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.is_contiguous(), name,
              " must be a contiguous 2-D tensor with ", rows, " rows");
}

// Stable counting sort: offsets [n+1] and edge order grouped by key.
inline void csr(const int64_t* key, int64_t e, int64_t n, std::vector<int64_t>& off,
         std::vector<int64_t>& order) {
  off.assign(n + 1, 0);
  for (int64_t i = 0; i < e; ++i) off[key[i] + 1]++;
  for (int64_t i = 0; i < n; ++i) off[i + 1] += off[i];
  order.resize(e);
  std::vector<int64_t> pos(off.begin(), off.end() - 1);
  for (int64_t i = 0; i < e; ++i) order[pos[key[i]]++] = i;
}

// Sum of per-block partials in block order: deterministic for any thread count.
template <typename T, typename F>
void blocked_sum(int64_t rows, int64_t width, T* out, F&& per_row) {
  const int64_t nb = (rows + kBlock - 1) / kBlock;
  std::vector<T> part(nb * width, T(0));
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t r = b * kBlock; r < std::min(rows, (b + 1) * kBlock); ++r)
        per_row(r, part.data() + b * width);
  });
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t q = 0; q < width; ++q) out[q] += part[b * width + q];
}

inline void check_like(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.dtype() == like.dtype() && t.device() == like.device(), name,
              " must have the dtype and device of the features");
}

inline void check_weights(const at::Tensor& w, int64_t rows, const at::Tensor& like) {
  check_like(w, like, "weights");
  TORCH_CHECK(w.is_contiguous() && (w.dim() == 1 || (w.dim() == 2 && w.size(0) == rows)),
              "weights must be contiguous [numel] or [", rows, ", numel]");
}

// Index tensors are validated at the Python boundary too; this O(E) pass keeps direct
// torch.ops calls (TorchScript, C++) from writing out of bounds.
inline void check_index(const at::Tensor& idx, int64_t n, int64_t bound, const char* name) {
  TORCH_CHECK(idx.dtype() == at::kLong && idx.dim() == 1 && idx.size(0) == n && idx.is_contiguous(),
              name, " must be a contiguous int64 tensor of shape [", n, "]");
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < bound, name, "[", i, "] = ", p[i], " is out of range [0, ",
                bound, ")");
}

// A (mul, ir) block of an operand, read off the path table; which: 0 x1, 1 x2, 2 output.
struct Block {
  int64_t off, mul, dim;
};

inline std::vector<Block> operand_blocks(const at::Tensor& paths, int which) {
  const int64_t cols[3][3] = {{P_OFF1, P_MUL1, P_L1}, {P_OFF2, P_MUL2, P_L2}, {P_OFFO, P_MULO, P_L3}};
  std::vector<Block> out;
  const int64_t* p = paths.data_ptr<int64_t>();
  for (int64_t q = 0; q < paths.size(0); ++q, p += P_NCOLS) {
    const Block b{p[cols[which][0]], p[cols[which][1]], 2 * p[cols[which][2]] + 1};
    bool seen = false;
    for (const auto& o : out) seen = seen || o.off == b.off;
    if (!seen && b.mul > 1 && b.dim > 1) out.push_back(b);  // mul or dim 1: same in both layouts
  }
  return out;
}

// mul_ir -> ir_mul per block (to_irmul) and back; columns outside the blocks are kept.
inline at::Tensor relayout(const at::Tensor& t, const std::vector<Block>& blocks, bool to_irmul) {
  if (blocks.empty() || t.size(0) == 0) return t;
  auto out = t.clone();
  const int64_t n = t.size(0);
  for (const auto& b : blocks) {
    auto src = t.narrow(1, b.off, b.mul * b.dim);
    auto v = to_irmul ? src.reshape({n, b.mul, b.dim}) : src.reshape({n, b.dim, b.mul});
    out.narrow(1, b.off, b.mul * b.dim).copy_(v.transpose(1, 2).reshape({n, b.mul * b.dim}));
  }
  return out;
}

// A fresh empty tensor per masked output: outputs of one op must not alias each other.
inline at::Tensor masked(bool on, const at::Tensor& like) {
  return on ? at::zeros_like(like) : at::empty({0}, like.options());
}

}  // namespace fastcg
