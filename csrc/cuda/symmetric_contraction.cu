// CUDA MACE symmetric contraction over csrc/core/symmetric_contraction.h with W = 1 lane:
//  - one thread per (node, channel) for the output and grad_x (forward, backward and double
//    backward), its monomials in a per-thread slice of a global scratch buffer (launched in
//    chunks so the scratch stays under 2^25 elements);
//  - one thread per (species, channel) for weight gradients, summing over the species' nodes
//    (grouped on the device by a stable sort) in input order.
// Every output element has one writer: no atomics, deterministic.
#include <torch/library.h>

#include <array>
#include <optional>

#include "core/symmetric_contraction.h"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

struct ScTables {
  const int64_t* mono;     // [M, 2]
  const int64_t* pairs;    // [P, 2]
  const int64_t* entries;  // [E, 2]
  const double* coeff;     // [E]
  const int64_t* cols;     // out_cols [Dout, 2]
  int64_t M, P, E, Dout, N, C, D, S, K;
};

// out row of node b, channel c: column j of the output irrep (s, dim) is at C*s + c*dim + j - s.
__device__ __forceinline__ int64_t out_index(const ScTables& d, int64_t c, int64_t j) {
  const int64_t s = d.cols[2 * j], dim = d.cols[2 * j + 1];
  return d.C * s + c * dim + (j - s);
}

// A[s][p][c] = sum over the entries of pair p (grouped: eorder, eoff) of coeff * w[s, k, c].
template <typename T>
__global__ void species_matrix_kernel(ScTables d, const T* w, const int64_t* eorder,
                                      const int64_t* eoff, T* A) {
  const int64_t t = thread_index();
  if (t >= d.S * d.P * d.C) return;
  const int64_t s = t / (d.P * d.C), p = (t / d.C) % d.P, c = t % d.C;
  T acc = T(0);
  for (int64_t r = eoff[p]; r < eoff[p + 1]; ++r) {
    const int64_t q = eorder[r];
    acc += T(d.coeff[q]) * w[(s * d.K + d.entries[2 * q + SC_K]) * d.C + c];
  }
  A[t] = acc;
}

// What one (node, channel) thread computes. The output is contract(Aval, val) + contract(Adot,
// dot); grad_x is the adjoint of that map applied to grad_out. Forward: Aval = A. Backward:
// Aval = A, dx. Double backward: Aval = A(grad_grad_weights), Adot = A(weights) with tangent t.
template <typename T>
struct NodeArgs {
  const T* x;     // [N, C, D]
  const T* t;     // tangent of x (grad_grad_x) or null
  const T* g;     // grad_out [N, C * Dout] (for dx)
  const T* Aval;  // [S, P, C] or null
  const T* Adot;  // [S, P, C] or null (needs t)
  T* out;         // [N, C * Dout] or null
  T* dx;          // [N, C, D] or null
};

// Rows [i0, i0 + count) of the (node, channel) pairs; scratch holds 4 M + 2 Dout per thread.
template <typename T>
__global__ void sc_node_kernel(ScTables d, NodeArgs<T> a, const int64_t* sp, int64_t i0,
                               int64_t count, T* scratch) {
  const int64_t i = thread_index();
  if (i >= count) return;
  const int64_t bc = i0 + i, b = bc / d.C, c = bc % d.C;
  T* val = scratch + i * (4 * d.M + 2 * d.Dout);
  T* dot = val + d.M;
  T* adj = dot + d.M;
  T* adj_dot = adj + d.M;
  T* acc = adj_dot + d.M;
  T* gt = acc + d.Dout;
  const T* xt = a.x + bc * d.D;
  const T* tt = a.t ? a.t + bc * d.D : nullptr;
  const int64_t ao = sp[b] * d.P * d.C + c;
  sc_monomials<T, 1>(d.mono, d.M, xt, val);
  if (a.Adot) sc_monomials_tangent<T, 1>(d.mono, d.M, xt, tt, val, dot);
  if (a.out) {
    for (int64_t j = 0; j < d.Dout; ++j) acc[j] = T(0);
    if (a.Aval) sc_contract<T, 1>(d.pairs, d.P, a.Aval + ao, d.C, val, acc);
    if (a.Adot) sc_contract<T, 1>(d.pairs, d.P, a.Adot + ao, d.C, dot, acc);
    T* o = a.out + b * d.C * d.Dout;
    for (int64_t j = 0; j < d.Dout; ++j) o[out_index(d, c, j)] = acc[j];
  }
  if (!a.dx) return;
  const T* g = a.g + b * d.C * d.Dout;
  for (int64_t j = 0; j < d.Dout; ++j) gt[j] = g[out_index(d, c, j)];
  for (int64_t n = 0; n < d.M; ++n) adj[n] = T(0);
  if (a.Aval) sc_seed<T, 1>(d.pairs, d.P, a.Aval + ao, d.C, gt, adj);
  T* dxt = a.dx + bc * d.D;
  if (a.Adot) {
    for (int64_t n = 0; n < d.M; ++n) adj_dot[n] = T(0);
    sc_seed<T, 1>(d.pairs, d.P, a.Adot + ao, d.C, gt, adj_dot);
    sc_monomials_tangent_backward<T, 1>(d.mono, d.M, xt, tt, val, dot, adj, adj_dot, dxt);
  } else {
    sc_monomials_backward<T, 1>(d.mono, d.M, xt, val, adj, dxt);
  }
}

// dw[s, k, c] = sum over the nodes of species s of the weight cotangent: outer(grad_out, val)
// (backward) or outer(grad_out, dot) with the tangent t (double backward), pushed through the
// entries. Scratch holds 2 M + Dout + P per thread.
template <typename T>
__global__ void sc_weight_kernel(ScTables d, const T* x, const T* t, const T* g,
                                 const int64_t* order, const int64_t* off, T* scratch, T* dw) {
  const int64_t i = thread_index();
  if (i >= d.S * d.C) return;
  const int64_t s = i / d.C, c = i % d.C;
  T* val = scratch + i * (2 * d.M + d.Dout + d.P);
  T* dot = val + d.M;
  T* gt = dot + d.M;
  T* dA = gt + d.Dout;
  for (int64_t p = 0; p < d.P; ++p) dA[p] = T(0);
  for (int64_t r = off[s]; r < off[s + 1]; ++r) {
    const int64_t b = order[r], bc = b * d.C + c;
    sc_monomials<T, 1>(d.mono, d.M, x + bc * d.D, val);
    if (t) sc_monomials_tangent<T, 1>(d.mono, d.M, x + bc * d.D, t + bc * d.D, val, dot);
    const T* gb = g + b * d.C * d.Dout;
    for (int64_t j = 0; j < d.Dout; ++j) gt[j] = gb[out_index(d, c, j)];
    sc_outer<T, 1>(d.pairs, d.P, gt, t ? dot : val, dA, 1);
  }
  for (int64_t q = 0; q < d.E; ++q)
    dw[(s * d.K + d.entries[2 * q + SC_K]) * d.C + c] += T(d.coeff[q]) * dA[d.entries[2 * q]];
}

__global__ void check_sc_tables_kernel(ScTables d) {
  const int64_t i = thread_index();  // core/symmetric_contraction.h, as the CPU kernels check
  if (i < d.M) CUDA_KERNEL_ASSERT(sc_monomial_fits(d.mono, i, d.D));
  if (i < d.P) CUDA_KERNEL_ASSERT(sc_pair_fits(d.pairs, i, d.Dout, d.M));
  if (i < d.E) CUDA_KERNEL_ASSERT(sc_entry_fits(d.entries, i, d.P, d.K));
  if (i < d.Dout) CUDA_KERNEL_ASSERT(sc_out_col_fits(d.cols, i, d.Dout));
}

// ---- host side: checks and launches (the kernels above also build as host code for
// tests/test_cuda_emulation.py) ----

ScTables prepare(const at::Tensor& x, const at::Tensor& species, const at::Tensor& weights,
                 const at::Tensor& mono, const at::Tensor& pairs, const at::Tensor& entries,
                 const at::Tensor& coeff, const at::Tensor& cols) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "x must be contiguous [N, C, D]");
  check_like_cuda(weights, x, "weights");
  TORCH_CHECK(weights.dim() == 3 && weights.size(2) == x.size(1),
              "weights must be [S, K, C] with x's C");
  check_index_shape(species, x.size(0), x, "species");
  check_table(mono, at::kLong, SC_MONO_NCOLS, x, "monomials");
  check_table(pairs, at::kLong, SC_PAIR_NCOLS, x, "pairs");
  check_table(entries, at::kLong, SC_ENTRY_NCOLS, x, "entries");
  check_table(coeff, at::kDouble, 0, x, "coeff");
  check_table(cols, at::kLong, 2, x, "out_cols");
  TORCH_CHECK(coeff.size(0) == entries.size(0), "coeff must have one entry per table entry");
  ScTables d{mono.data_ptr<int64_t>(),
             pairs.data_ptr<int64_t>(),
             entries.data_ptr<int64_t>(),
             coeff.data_ptr<double>(),
             cols.data_ptr<int64_t>(),
             mono.size(0),
             pairs.size(0),
             entries.size(0),
             cols.size(0),
             x.size(0),
             x.size(1),
             x.size(2),
             weights.size(0),
             weights.size(1)};
  const int64_t rows = std::max(std::max(d.M, d.P), std::max(d.E, d.Dout));
  if (rows > 0) {
    check_sc_tables_kernel<<<blocks_for(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  check_index_cuda(species, d.S);
  return d;
}

void check_grad_out(const at::Tensor& g, const at::Tensor& x, const ScTables& d) {
  check_like_cuda(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == d.N && g.size(1) == d.C * d.Dout,
              "grad_out must be [N, C * dim_out]");
}

template <typename T>
at::Tensor species_matrix(const ScTables& d, const at::Tensor& w, const at::Tensor& entries) {
  auto A = at::empty({d.S, d.P, d.C}, w.options());
  if (A.numel() == 0) return A;
  const auto [eorder, eoff] = group_by(entries.select(1, SC_PAIR).contiguous(), d.P);
  species_matrix_kernel<T>
      <<<blocks_for(A.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          d, w.data_ptr<T>(), eorder.data_ptr<int64_t>(), eoff.data_ptr<int64_t>(),
          A.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return A;
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
void run_nodes(const ScTables& d, const NodeArgs<T>& a, const at::Tensor& species,
               const at::Tensor& like) {
  const int64_t rows = d.N * d.C, stride = 4 * d.M + 2 * d.Dout;
  const int64_t cap = (int64_t(1) << 25) / std::max<int64_t>(stride, 1);
  const int64_t chunk = std::min<int64_t>(rows, std::max<int64_t>(1, cap));
  auto scratch = at::empty({chunk * stride}, like.options());
  for (int64_t i0 = 0; i0 < rows; i0 += chunk) {
    const int64_t n = std::min(chunk, rows - i0);
    sc_node_kernel<T><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        d, a, species.data_ptr<int64_t>(), i0, n, scratch.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
void run_weights(const ScTables& d, const at::Tensor& x, const at::Tensor& t, const at::Tensor& g,
                 const at::Tensor& species, at::Tensor& dw) {
  const int64_t n = d.S * d.C;
  if (n == 0) return;
  const auto [order, off] = group_by(species, d.S);
  auto scratch = at::empty({n * (2 * d.M + d.Dout + d.P)}, x.options());
  sc_weight_kernel<T><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      d, x.data_ptr<T>(), ptr_or_null<T>(t), g.data_ptr<T>(), order.data_ptr<int64_t>(),
      off.data_ptr<int64_t>(), scratch.data_ptr<T>(), dw.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor sc_forward_cuda(const at::Tensor& x, const at::Tensor& species,
                           const at::Tensor& weights, const at::Tensor& mono,
                           const at::Tensor& pairs, const at::Tensor& entries,
                           const at::Tensor& coeff, const at::Tensor& cols) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const ScTables d = prepare(x, species, weights, mono, pairs, entries, coeff, cols);
  auto out = at::zeros({d.N, d.C * d.Dout}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "symmetric_contraction_cuda", [&] {
    const auto A = species_matrix<scalar_t>(d, weights, entries);
    NodeArgs<scalar_t> a{
        x.data_ptr<scalar_t>(),   nullptr, nullptr, A.data_ptr<scalar_t>(), nullptr,
        out.data_ptr<scalar_t>(), nullptr};
    run_nodes<scalar_t>(d, a, species, x);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sc_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                    const at::Tensor& species,
                                                    const at::Tensor& weights,
                                                    const at::Tensor& mono, const at::Tensor& pairs,
                                                    const at::Tensor& entries,
                                                    const at::Tensor& coeff, const at::Tensor& cols,
                                                    std::array<bool, 2> mask) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const ScTables d = prepare(x, species, weights, mono, pairs, entries, coeff, cols);
  check_grad_out(grad_out, x, d);
  auto gx = masked_zeros(mask[0], x), gw = masked_zeros(mask[1], weights);
  if (d.N == 0 || d.C == 0 || (!mask[0] && !mask[1])) return {gx, gw};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "symmetric_contraction_backward_cuda", [&] {
    if (mask[0]) {
      const auto A = species_matrix<scalar_t>(d, weights, entries);
      NodeArgs<scalar_t> a{x.data_ptr<scalar_t>(), nullptr, grad_out.data_ptr<scalar_t>(),
                           A.data_ptr<scalar_t>(), nullptr, nullptr,
                           gx.data_ptr<scalar_t>()};
      run_nodes<scalar_t>(d, a, species, x);
    }
    if (mask[1]) run_weights<scalar_t>(d, x, at::Tensor(), grad_out, species, gw);
  });
  return {gx, gw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sc_double_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& species,
    const at::Tensor& weights, const std::optional<at::Tensor>& ggx,
    const std::optional<at::Tensor>& ggw, const at::Tensor& mono, const at::Tensor& pairs,
    const at::Tensor& entries, const at::Tensor& coeff, const at::Tensor& cols,
    std::array<bool, 3> mask) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const ScTables d = prepare(x, species, weights, mono, pairs, entries, coeff, cols);
  check_grad_out(grad_out, x, d);
  const bool has_t = ggx.has_value(), has_w = ggw.has_value();
  if (has_t) {
    check_like_cuda(*ggx, x, "grad_grad_x");
    TORCH_CHECK(ggx->sizes() == x.sizes(), "grad_grad_x must be shaped like x");
  }
  if (has_w) {
    check_like_cuda(*ggw, x, "grad_grad_weights");
    TORCH_CHECK(ggw->sizes() == weights.sizes(), "grad_grad_weights must be shaped like weights");
  }
  // Each output is zero unless some cotangent reaches it.
  const bool need_g = mask[0] && (has_t || has_w), need_x = mask[1] && (has_t || has_w);
  const bool need_w = mask[2] && has_t;
  auto dg = masked_zeros(mask[0], grad_out), dx = masked_zeros(mask[1], x);
  auto dw = masked_zeros(mask[2], weights);
  if (d.N == 0 || d.C == 0 || !(need_g || need_x || need_w)) return {dg, dx, dw};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "symmetric_contraction_double_backward_cuda", [&] {
    if (need_g || need_x) {
      at::Tensor A, Agg;
      if (has_t) A = species_matrix<scalar_t>(d, weights, entries);
      if (has_w) Agg = species_matrix<scalar_t>(d, *ggw, entries);
      NodeArgs<scalar_t> a{x.data_ptr<scalar_t>(),
                           has_t ? ggx->data_ptr<scalar_t>() : nullptr,
                           grad_out.data_ptr<scalar_t>(),
                           ptr_or_null<scalar_t>(Agg),
                           ptr_or_null<scalar_t>(A),
                           need_g ? dg.data_ptr<scalar_t>() : nullptr,
                           need_x ? dx.data_ptr<scalar_t>() : nullptr};
      run_nodes<scalar_t>(d, a, species, x);
    }
    if (need_w) run_weights<scalar_t>(d, x, *ggx, grad_out, species, dw);
  });
  return {dg, dx, dw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) {
  m.impl("symmetric_contraction", &sc_forward_cuda);
  m.impl("symmetric_contraction_backward", &sc_backward_cuda);
  m.impl("symmetric_contraction_double_backward", &sc_double_backward_cuda);
}

}  // namespace fastcg
