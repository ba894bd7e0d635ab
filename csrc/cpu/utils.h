// Shared helpers of the CPU kernels: table checks, CSR grouping, deterministic reductions, and
// the channel-fastest plan of the tensor-product kernels.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <vector>

#include "core/common.h"
#include "core/tp.h"
#include "cpu/uvu1.h"

namespace fastcg {

// Every tensor a CPU kernel reads through a raw pointer must be a CPU tensor: the dispatcher
// picks the CPU kernel from the highest-priority device among the arguments, so an argument on
// another device would otherwise be read as host memory.
inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
}

inline void check_tables(const at::Tensor& paths, const at::Tensor& cg_index,
                         const at::Tensor& cg_value) {
  check_cpu(paths, "paths");
  check_cpu(cg_index, "cg_index");
  check_cpu(cg_value, "cg_value");
  TORCH_CHECK(paths.dtype() == at::kLong && paths.dim() == 2 && paths.size(1) == P_NCOLS,
              "paths must be int64 [P, 13], got ", paths.dtype(), " ", paths.sizes());
  TORCH_CHECK(cg_index.dtype() == at::kLong && cg_index.dim() == 2 && cg_index.size(1) == 3,
              "cg_index must be int64 [NNZ, 3], got ", cg_index.dtype(), " ", cg_index.sizes());
  TORCH_CHECK(cg_value.dtype() == at::kDouble && cg_value.dim() == 1 &&
                  cg_value.size(0) == cg_index.size(0),
              "cg_value must be float64 [NNZ] (NNZ = cg_index.shape[0] = ", cg_index.size(0),
              "), got ", cg_value.dtype(), " ", cg_value.sizes());
  TORCH_CHECK(paths.is_contiguous() && cg_index.is_contiguous() && cg_value.is_contiguous(),
              "descriptor tables (paths, cg_index, cg_value) must be contiguous");
}

inline const char* path_fault_message(int fault) {
  static_assert(kMaxPathL == 1024, "update PATH_L's message");
  switch (fault) {
    case PATH_MODE: return "unknown connection mode";
    case PATH_L: return "l1, l2 or l3 outside [0, 1024]";
    case PATH_X1: return "its x1 block (off1, mul1, 2 l1 + 1) reads past x1's features";
    case PATH_X2: return "its x2 block (off2, mul2, 2 l2 + 1) reads past x2's features";
    case PATH_OUT: return "its output block (off_out, mul_out, 2 l3 + 1) writes past dim_out";
    case PATH_MULS: return "multiplicities do not fit its mode";
    case PATH_NO_WEIGHTS: return "a uvw path needs weights (w_off >= 0)";
    case PATH_WEIGHTS: return "its weight slice reads past the weights";
    case PATH_CG_ROWS: return "CG rows [cg_begin, cg_end) out of range of cg_index";
    case PATH_CG_INDEX: return "a CG index (i, j, k) out of range of the irreps' dimensions";
    default: return "invalid";
  }
}

// Every path must stay inside the operands: a table that does not match the tensors (a wrong
// descriptor passed to torch.ops.fastcg directly) is an error here, not an out-of-bounds read.
// core/tp.h path_fault is the one definition of "fits" (the CUDA kernels assert path_fits).
inline void check_paths(const at::Tensor& paths, const at::Tensor& cg_index, int64_t d1, int64_t d2,
                        int64_t dout, int64_t wn) {
  TORCH_CHECK(dout >= 0, "dim_out must be >= 0, got ", dout);
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  const int64_t nnz = cg_index.size(0);
  for (int64_t q = 0; q < paths.size(0); ++q, p += P_NCOLS) {
    const int fault = path_fault(p, ci, nnz, d1, d2, dout, wn);
    TORCH_CHECK(fault == PATH_OK, "paths row ", q, ": ", path_fault_message(fault), " (x1 has ", d1,
                " features, x2 ", d2, ", the output ", dout, ", the weights ", wn,
                " per row, cg_index ", nnz, " rows)");
  }
}

// The features tensor every other argument is compared with: a float32 / float64 CPU matrix.
inline void check_features(const at::Tensor& x, const char* name) {
  check_cpu(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), name,
              " must be a contiguous 2-D tensor, got shape ", x.sizes());
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
constexpr int64_t kBlock = 64;  // rows per partial sum: fixed, so sums do not depend on threads

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
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the features are on ",
              like.device());
  TORCH_CHECK(t.dtype() == like.dtype(), name, " has dtype ", t.dtype(), " but the features have ",
              like.dtype());
}

inline void check_weights(const at::Tensor& w, int64_t rows, const at::Tensor& like) {
  check_like(w, like, "weights");
  TORCH_CHECK(w.is_contiguous() && (w.dim() == 1 || (w.dim() == 2 && w.size(0) == rows)),
              "weights must be contiguous [numel] or [", rows, ", numel]");
}

// The one check of index values on CPU (the Python boundary checks metadata only, which costs
// no pass over the data and no host sync on a GPU): an O(E) pass that keeps every caller, direct
// torch.ops calls included, from reading or writing out of bounds. IndexError in Python.
inline void check_index(const at::Tensor& idx, int64_t n, int64_t bound, const char* name) {
  check_cpu(idx, name);
  TORCH_CHECK(idx.dtype() == at::kLong && idx.dim() == 1 && idx.size(0) == n && idx.is_contiguous(),
              name, " must be a contiguous int64 tensor of shape [", n, "]");
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < bound, name, "[", i, "] = ", p[i],
                      " is out of range [0, ", bound, ")");
}

// A fresh empty tensor per masked output: outputs of one op must not alias each other.
inline at::Tensor masked(bool on, const at::Tensor& like) {
  return on ? at::zeros_like(like) : at::empty({0}, like.options());
}

// ---------------------------------------------------------------------------------------------
// Tensor-product plan shared by tensor_product.cpp and conv.cpp. uvu paths with mul2 == 1 run
// channel-fastest (cpu/uvu1.h) on ir_mul copies of their x1 / output blocks; every other path
// runs tp_path_* on the mul_ir rows.

// A mul_ir block (mul, dim) at `off` of a row, and where its ir_mul copy starts (`at`).
struct Block {
  int64_t off, mul, dim, at;
};

// A uvu path with mul2 == 1: channels m, dims d1 / d3, its x1 / output copies at in_at / out_at,
// its x2 block at y_off, weights at woff (-1: none), CG rows [begin, end), and its coupled (i, k)
// pairs at [pairs, pairs + npairs) of the plan's lists by_k (forward) and by_i (backward).
struct FastPath {
  int64_t m, d1, d3, in_at, y_off, out_at, woff, begin, end, pairs, npairs;
};

struct TPPlan {
  std::vector<FastPath> fast;
  std::vector<int64_t> generic;  // rows of the path table
  std::vector<Block> in, out;    // distinct x1 / output blocks read / written by fast paths
  std::vector<Pair> by_k, by_i;  // coupled (i, k) pairs of each fast path, sorted by k / by i
  int64_t in_size = 0, out_size = 0, s_size = 0;
};

// The distinct (i, k) of CG rows [begin, end), sorted by (i, k) and by (k, i), appended.
inline int64_t add_pairs(const int64_t* ci, int64_t begin, int64_t end, TPPlan& pl) {
  std::vector<std::pair<int32_t, int32_t>> ik;
  for (int64_t n = begin; n < end; ++n) ik.emplace_back(int32_t(ci[3 * n]), int32_t(ci[3 * n + 2]));
  std::sort(ik.begin(), ik.end());
  ik.erase(std::unique(ik.begin(), ik.end()), ik.end());
  for (const auto& [i, k] : ik) pl.by_i.push_back({i, k});
  std::sort(ik.begin(), ik.end(), [](auto x, auto y) {
    return std::make_pair(x.second, x.first) < std::make_pair(y.second, y.first);
  });
  for (const auto& [i, k] : ik) pl.by_k.push_back({i, k});
  return int64_t(ik.size());
}

inline int64_t block_at(std::vector<Block>& bl, int64_t& size, int64_t off, int64_t mul,
                        int64_t dim) {
  for (const auto& b : bl)
    if (b.off == off && b.mul == mul && b.dim == dim) return b.at;
  bl.push_back({off, mul, dim, size});
  size += mul * dim;
  return bl.back().at;
}

inline TPPlan make_plan(const at::Tensor& paths, const at::Tensor& cg_index) {
  TPPlan pl;
  const int64_t* p = paths.data_ptr<int64_t>();
  const int64_t* ci = cg_index.data_ptr<int64_t>();
  for (int64_t q = 0; q < paths.size(0); ++q, p += P_NCOLS) {
    if (p[P_MODE] != UVU || p[P_MUL2] != 1) {
      pl.generic.push_back(q);
      continue;
    }
    const int64_t m = p[P_MUL1], d1 = 2 * p[P_L1] + 1, d3 = 2 * p[P_L3] + 1;
    const int64_t pairs = int64_t(pl.by_i.size());
    FastPath f{m,
               d1,
               d3,
               block_at(pl.in, pl.in_size, p[P_OFF1], m, d1),
               p[P_OFF2],
               block_at(pl.out, pl.out_size, p[P_OFFO], m, d3),
               p[P_WOFF],
               p[P_CG_BEGIN],
               p[P_CG_END],
               pairs,
               add_pairs(ci, p[P_CG_BEGIN], p[P_CG_END], pl)};
    pl.s_size = std::max(pl.s_size, d1 * d3);
    pl.fast.push_back(f);
  }
  return pl;
}

template <typename T>
void to_ir_mul(const T* row, const std::vector<Block>& bl, T* rowT) {
  for (const auto& b : bl)
    for (int64_t u = 0; u < b.mul; ++u)
      for (int64_t i = 0; i < b.dim; ++i) rowT[b.at + i * b.mul + u] = row[b.off + u * b.dim + i];
}

template <typename T>
void add_from_ir_mul(const T* rowT, const std::vector<Block>& bl, T* row) {
  for (const auto& b : bl)
    for (int64_t u = 0; u < b.mul; ++u)
      for (int64_t i = 0; i < b.dim; ++i) row[b.off + u * b.dim + i] += rowT[b.at + i * b.mul + u];
}

// [rows, width] -> [rows, size] ir_mul copies of the blocks (empty when there are none).
template <typename T>
std::vector<T> rows_to_ir_mul(const T* x, int64_t rows, int64_t width, const std::vector<Block>& bl,
                              int64_t size) {
  std::vector<T> out(bl.empty() ? 0 : rows * size);
  if (bl.empty()) return out;
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) to_ir_mul(x + r * width, bl, out.data() + r * size);
  });
  return out;
}

// Per-thread scratch of the fast paths.
template <typename T>
struct Scratch {
  std::vector<T> s, Mt, accT, Mv;
  Scratch(const TPPlan& pl, int64_t acc)
      : s(pl.s_size), Mt(pl.s_size), accT(acc), Mv(pl.s_size * sizeof(Vec<T>) / sizeof(T)) {}
};

template <typename T>
FASTCG_HDI void fast_forward_impl(const TPPlan& pl, const int64_t* ci, const double* cv,
                                  const T* aT, const T* y, const T* w, T* oT, Scratch<T>& sc) {
  for (const auto& f : pl.fast) {
    T* s = sc.s.data();
    for (int64_t n = 0; n < f.d1 * f.d3; ++n) s[n] = T(0);
    uvu1_coupling(ci, cv, f.begin, f.end, f.d3, y + f.y_off, s);
    const Pair* pb = pl.by_k.data() + f.pairs;
    uvu1_fwd(f.m, f.d3, pb, pb + f.npairs, s, aT + f.in_at, f.woff >= 0 ? w + f.woff : nullptr,
             oT + f.out_at);
  }
}

template <typename T>
FASTCG_HDI void fast_backward_impl(const TPPlan& pl, const int64_t* ci, const double* cv,
                                   const T* aT, const T* gT, const T* y, const T* w, T* gaT, T* gy,
                                   T* gw, Scratch<T>& sc) {
  for (const auto& f : pl.fast) {
    T* s = sc.s.data();
    for (int64_t n = 0; n < f.d1 * f.d3; ++n) s[n] = T(0);
    uvu1_coupling(ci, cv, f.begin, f.end, f.d3, y + f.y_off, s);
    const bool has_w = f.woff >= 0;
    const Pair* pb = pl.by_i.data() + f.pairs;
    uvu1_bwd(f.m, f.d3, pb, pb + f.npairs, ci, cv, f.begin, f.end, s, aT + f.in_at, gT + f.out_at,
             has_w ? w + f.woff : nullptr, gaT ? gaT + f.in_at : nullptr,
             gy ? gy + f.y_off : nullptr, (gw && has_w) ? gw + f.woff : nullptr,
             Uvu1Acc<T>{sc.Mv.data(), sc.Mt.data()});
  }
}

// One x86-64-v3 (AVX2 + FMA) clone and one baseline clone, picked at load time: the build has no
// -march flag. Measured on the MACE-size conv benchmark with shared weights (compute-bound):
// forward 0.155 -> 0.108 CPU-s, backward 0.37 -> 0.25 CPU-s.
#if defined(__x86_64__) && !defined(__clang__)
#define FASTCG_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTCG_CLONES
#endif

#define FASTCG_FAST_FOR(T)                                                                         \
  [[maybe_unused]] FASTCG_CLONES static void fast_forward(                                         \
      const TPPlan& pl, const int64_t* ci, const double* cv, const T* aT, const T* y, const T* w,  \
      T* oT, Scratch<T>& sc) {                                                                     \
    fast_forward_impl<T>(pl, ci, cv, aT, y, w, oT, sc);                                            \
  }                                                                                                \
  [[maybe_unused]] FASTCG_CLONES static void fast_backward(                                        \
      const TPPlan& pl, const int64_t* ci, const double* cv, const T* aT, const T* gT, const T* y, \
      const T* w, T* gaT, T* gy, T* gw, Scratch<T>& sc) {                                          \
    fast_backward_impl<T>(pl, ci, cv, aT, gT, y, w, gaT, gy, gw, sc);                              \
  }
FASTCG_FAST_FOR(float)
FASTCG_FAST_FOR(double)
#undef FASTCG_FAST_FOR

// Runs body(r0, r1, acc) over row ranges. With width > 0 each fixed block of rows gets its own
// partial sum acc [width], added into out in block order: the result does not depend on threads.
template <typename T, typename F>
void for_row_blocks(int64_t rows, int64_t width, T* out, F&& body) {
  if (rows == 0) return;
  if (width == 0 || out == nullptr) {
    at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) { body(r0, r1, (T*)nullptr); });
    return;
  }
  // At most 256 partials (and ~64 MiB of them): enough blocks for any thread count.
  const int64_t nb_max = std::clamp<int64_t>((int64_t(1) << 24) / width, 1, 256);
  const int64_t bs = std::max<int64_t>(8, (rows + nb_max - 1) / nb_max);
  const int64_t nb = (rows + bs - 1) / bs;
  std::vector<T> part(nb * width, T(0));
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      body(b * bs, std::min(rows, (b + 1) * bs), part.data() + b * width);
  });
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t q = 0; q < width; ++q) out[q] += part[b * width + q];
}

}  // namespace fastcg
