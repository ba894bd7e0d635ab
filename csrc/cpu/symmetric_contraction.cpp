// CPU symmetric contraction (MACE product basis): forward, backward and double backward.
//
// Nodes are grouped by species (counting sort) and cut into a fixed number of chunks, so the
// per-species matrix A = coeff * weights stays in cache and the weight gradient of a chunk only
// touches the few species it holds. Inside a chunk the channel block (W lanes) is the outer loop:
// A[:, block] and the monomial lanes fit in L1/L2. Results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/symmetric_contraction.h"
#include "cpu/utils.h"

namespace fastcg {
namespace {

// Channels per lane block: 4 AVX2 registers of either dtype.
template <typename T>
constexpr int kLanes = std::is_same_v<T, float> ? 32 : 16;

struct ScDims {
  const int64_t* mono;
  const int64_t* pairs;
  const int64_t* entries;
  const double* coeff;
  const int64_t* cols;  // out_cols [Dout, 2]: (first column of the irrep, its dimension)
  int64_t M, P, E, Dout, N, C, D, S, K, Cpad;
};

void check_table(const at::Tensor& t, int64_t cols, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dtype() == at::kLong && t.dim() == 2 && t.size(1) == cols &&
                  t.is_contiguous(),
              name, " must be a contiguous int64 CPU tensor [rows, ", cols, "]");
}

// Every table entry must index inside the tensors: a mismatched descriptor is an error here,
// not an out-of-bounds access in the loops.
ScDims check_tables(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& mono,
                    const at::Tensor& pairs, const at::Tensor& entries, const at::Tensor& coeff,
                    const at::Tensor& cols) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "x must be contiguous [N, C, D], got shape ",
              x.sizes());
  TORCH_CHECK(weights.dim() == 3 && weights.is_contiguous() && weights.size(2) == x.size(1) &&
                  weights.scalar_type() == x.scalar_type(),
              "weights must be contiguous [S, K, C] with x's dtype and C");
  check_table(mono, SC_MONO_NCOLS, "monomials");
  check_table(pairs, SC_PAIR_NCOLS, "pairs");
  check_table(entries, SC_ENTRY_NCOLS, "entries");
  check_table(cols, 2, "out_cols");
  check_cpu(coeff, "coeff");
  TORCH_CHECK(coeff.dtype() == at::kDouble && coeff.dim() == 1 && coeff.is_contiguous() &&
                  coeff.size(0) == entries.size(0),
              "coeff must be contiguous float64 [E] (E = entries.shape[0] = ", entries.size(0),
              "), got ", coeff.dtype(), " ", coeff.sizes());
  ScDims d{mono.data_ptr<int64_t>(),
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
           weights.size(1),
           0};
  // core/symmetric_contraction.h: the CUDA kernels assert the same conditions
  for (int64_t n = 0; n < d.M; ++n)
    TORCH_CHECK(sc_monomial_fits(d.mono, n, d.D), "monomials row ", n,
                " is invalid: parent must be in [-1, ", n, "), var in [0, ", d.D, ")");
  for (int64_t p = 0; p < d.P; ++p)
    TORCH_CHECK(sc_pair_fits(d.pairs, p, d.Dout, d.M), "pairs row ", p,
                " is invalid: column must be in [0, ", d.Dout, "), monomial in [0, ", d.M, ")");
  for (int64_t e = 0; e < d.E; ++e)
    TORCH_CHECK(sc_entry_fits(d.entries, e, d.P, d.K), "entries row ", e,
                " is invalid: pair must be in [0, ", d.P, "), weight row in [0, ", d.K,
                ") (weights have ", d.K, " rows)");
  for (int64_t j = 0; j < d.Dout; ++j)
    TORCH_CHECK(sc_out_col_fits(d.cols, j, d.Dout), "out_cols row ", j, " is invalid");
  return d;
}

// Nodes in species order (stable), the compact slot of each present species, fixed chunks.
struct Plan {
  std::vector<int64_t> order, slot;
  int64_t present = 0, nchunks = 0, chunk = 1;
};

Plan make_plan(const int64_t* sp, int64_t N, int64_t S) {
  Plan pl;
  std::vector<int64_t> start(S + 1, 0);
  for (int64_t b = 0; b < N; ++b) {
    TORCH_CHECK_INDEX(sp[b] >= 0 && sp[b] < S, "species[", b, "] = ", sp[b],
                      " is out of range for ", S, " species");
    ++start[sp[b] + 1];
  }
  pl.slot.assign(S, -1);
  for (int64_t e = 0; e < S; ++e) {
    if (start[e + 1] > 0) pl.slot[e] = pl.present++;
    start[e + 1] += start[e];
  }
  pl.order.resize(N);
  for (int64_t b = 0; b < N; ++b) pl.order[start[sp[b]]++] = b;
  // At most 256 chunks of >= 16 nodes: enough parallel work, few species shared between chunks.
  pl.nchunks = std::min<int64_t>(256, (N + 15) / 16);
  pl.chunk = pl.nchunks ? (N + pl.nchunks - 1) / pl.nchunks : 1;
  pl.nchunks = pl.nchunks ? (N + pl.chunk - 1) / pl.chunk : 0;
  return pl;
}

// A[slot][p][c] = sum over p's entries of coeff * weights[e, k, c], lanes c >= C left zero.
template <typename T>
std::vector<T> species_matrix(const ScDims& d, const Plan& pl, const T* w) {
  std::vector<T> A(pl.present * d.P * d.Cpad, T(0));
  at::parallel_for(0, d.S, 1, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      if (pl.slot[e] < 0) continue;
      T* a = A.data() + pl.slot[e] * d.P * d.Cpad;
      for (int64_t q = 0; q < d.E; ++q) {
        const T* wk = w + (e * d.K + d.entries[2 * q + SC_K]) * d.C;
        T* ap = a + d.entries[2 * q + SC_PAIR] * d.Cpad;
        const T c = static_cast<T>(d.coeff[q]);
        for (int64_t i = 0; i < d.C; ++i) ap[i] += c * wk[i];
      }
    }
  });
  return A;
}

// x[b] is [C, D]: lanes xt[i][w] = x[b, c0 + w, i], zero past C.
template <typename T, int W>
void gather_in(const T* xb, const ScDims& d, int64_t c0, T* xt) {
  const int64_t nc = std::min<int64_t>(W, d.C - c0);
  for (int64_t i = 0; i < d.D; ++i) {
    T* o = xt + i * W;
    for (int64_t w = 0; w < nc; ++w) o[w] = xb[(c0 + w) * d.D + i];
    for (int64_t w = nc; w < W; ++w) o[w] = T(0);
  }
}

template <typename T, int W>
void scatter_in(T* xb, const ScDims& d, int64_t c0, const T* xt) {
  const int64_t nc = std::min<int64_t>(W, d.C - c0);
  for (int64_t i = 0; i < d.D; ++i)
    for (int64_t w = 0; w < nc; ++w) xb[(c0 + w) * d.D + i] = xt[i * W + w];
}

// The output row is mul_ir: column j of irrep (s, dim) for channel c is at C*s + c*dim + j - s.
template <typename T, int W>
void gather_out(const T* ob, const ScDims& d, int64_t c0, T* gt) {
  const int64_t nc = std::min<int64_t>(W, d.C - c0);
  for (int64_t j = 0; j < d.Dout; ++j) {
    const int64_t s = d.cols[2 * j], dim = d.cols[2 * j + 1];
    const T* src = ob + d.C * s + c0 * dim + (j - s);
    T* o = gt + j * W;
    for (int64_t w = 0; w < nc; ++w) o[w] = src[w * dim];
    for (int64_t w = nc; w < W; ++w) o[w] = T(0);
  }
}

template <typename T, int W>
void scatter_out(T* ob, const ScDims& d, int64_t c0, const T* acc) {
  const int64_t nc = std::min<int64_t>(W, d.C - c0);
  for (int64_t j = 0; j < d.Dout; ++j) {
    const int64_t s = d.cols[2 * j], dim = d.cols[2 * j + 1];
    T* dst = ob + d.C * s + c0 * dim + (j - s);
    for (int64_t w = 0; w < nc; ++w) dst[w * dim] = acc[j * W + w];
  }
}

// Per-chunk weight-gradient accumulators over the chunk's species range [lo, hi] (the nodes are
// species-sorted, so ranges overlap only at chunk ends), reduced in chunk order at the end.
template <typename T>
struct WeightGrad {
  std::vector<int64_t> lo, off;
  std::vector<T> buf;
  int64_t row = 0;  // K * Cpad

  WeightGrad(const ScDims& d, const Plan& pl, const int64_t* sp, bool on) : row(d.K * d.Cpad) {
    if (!on) return;
    lo.resize(pl.nchunks);
    off.resize(pl.nchunks + 1, 0);
    for (int64_t t = 0; t < pl.nchunks; ++t) {
      const int64_t a = t * pl.chunk, b = std::min(d.N, a + pl.chunk) - 1;
      lo[t] = sp[pl.order[a]];
      off[t + 1] = off[t] + (sp[pl.order[b]] - lo[t] + 1) * row;
    }
    buf.assign(off[pl.nchunks], T(0));
  }

  // buf[t][e][k][c0 + w] += coeff * dA[p][w]; zeroes dA.
  template <int W>
  void flush(const ScDims& d, int64_t t, int64_t e, int64_t c0, T* dA) {
    T* g = buf.data() + off[t] + (e - lo[t]) * row + c0;
    for (int64_t q = 0; q < d.E; ++q) {
      const T* a = dA + d.entries[2 * q + SC_PAIR] * W;
      T* gk = g + d.entries[2 * q + SC_K] * d.Cpad;
      const T c = static_cast<T>(d.coeff[q]);
      for (int w = 0; w < W; ++w) gk[w] += c * a[w];
    }
    std::fill(dA, dA + d.P * W, T(0));
  }

  void reduce(const ScDims& d, const Plan& pl, T* out) {
    at::parallel_for(0, d.S, 1, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        T* o = out + e * d.K * d.C;
        std::fill(o, o + d.K * d.C, T(0));
        for (int64_t t = 0; t < pl.nchunks; ++t) {
          const int64_t n = (off[t + 1] - off[t]) / row;
          if (e < lo[t] || e >= lo[t] + n) continue;
          const T* g = buf.data() + off[t] + (e - lo[t]) * row;
          for (int64_t k = 0; k < d.K; ++k)
            for (int64_t c = 0; c < d.C; ++c) o[k * d.C + c] += g[k * d.Cpad + c];
        }
      }
    });
  }
};

template <typename T>
struct Args {
  const T* x;
  const T* g;    // grad_out [N, C*Dout]
  const T* t;    // tangent of x (grad_grad_x) or null
  const T* A;    // species matrix of the weights
  const T* Agg;  // species matrix of grad_grad_weights or null
  T* out;        // forward out / d grad_out
  T* dx;
  WeightGrad<T>* dw;
};

template <typename T>
void forward_chunk(const ScDims& d, const Plan& pl, const int64_t* sp, Args<T> a, int64_t t) {
  constexpr int W = kLanes<T>;
  std::vector<T> xt(d.D * W), val(d.M * W), acc(d.Dout * W);
  const int64_t p0 = t * pl.chunk, p1 = std::min(d.N, p0 + pl.chunk);
  for (int64_t c0 = 0; c0 < d.C; c0 += W) {
    for (int64_t q = p0; q < p1; ++q) {
      const int64_t b = pl.order[q];
      const T* A = a.A + pl.slot[sp[b]] * d.P * d.Cpad + c0;
      gather_in<T, W>(a.x + b * d.C * d.D, d, c0, xt.data());
      sc_monomials<T, W>(d.mono, d.M, xt.data(), val.data());
      std::fill(acc.begin(), acc.end(), T(0));
      sc_contract<T, W>(d.pairs, d.P, A, d.Cpad, val.data(), acc.data());
      scatter_out<T, W>(a.out + b * d.C * d.Dout, d, c0, acc.data());
    }
  }
}

template <typename T>
void backward_chunk(const ScDims& d, const Plan& pl, const int64_t* sp, Args<T> a, int64_t t) {
  constexpr int W = kLanes<T>;
  std::vector<T> xt(d.D * W), gt(d.Dout * W), val(d.M * W), seed(d.M * W), dxt(d.D * W);
  std::vector<T> dA(a.dw ? d.P * W : 0, T(0));
  const int64_t p0 = t * pl.chunk, p1 = std::min(d.N, p0 + pl.chunk);
  for (int64_t c0 = 0; c0 < d.C; c0 += W) {
    for (int64_t q = p0; q < p1; ++q) {
      const int64_t b = pl.order[q], e = sp[b];
      gather_in<T, W>(a.x + b * d.C * d.D, d, c0, xt.data());
      gather_out<T, W>(a.g + b * d.C * d.Dout, d, c0, gt.data());
      sc_monomials<T, W>(d.mono, d.M, xt.data(), val.data());
      if (a.dx) {
        const T* A = a.A + pl.slot[e] * d.P * d.Cpad + c0;
        std::fill(seed.begin(), seed.end(), T(0));
        std::fill(dxt.begin(), dxt.end(), T(0));
        sc_seed<T, W>(d.pairs, d.P, A, d.Cpad, gt.data(), seed.data());
        sc_monomials_backward<T, W>(d.mono, d.M, xt.data(), val.data(), seed.data(), dxt.data());
        scatter_in<T, W>(a.dx + b * d.C * d.D, d, c0, dxt.data());
      }
      if (a.dw) {
        sc_outer<T, W>(d.pairs, d.P, gt.data(), val.data(), dA.data(), W);
        if (q + 1 == p1 || sp[pl.order[q + 1]] != e)
          a.dw->template flush<W>(d, t, e, c0, dA.data());
      }
    }
  }
}

// Gradients of <ggx, dx> + <ggw, dw> w.r.t. (grad_out, x, weights), dx and dw being backward's.
template <typename T>
void double_backward_chunk(const ScDims& d, const Plan& pl, const int64_t* sp, Args<T> a,
                           int64_t t) {
  constexpr int W = kLanes<T>;
  std::vector<T> xt(d.D * W), tt(d.D * W), gt(d.Dout * W), val(d.M * W), dot(d.M * W);
  std::vector<T> acc(d.Dout * W), adj(d.M * W), adj_dot(d.M * W), dxt(d.D * W);
  std::vector<T> dA(a.dw ? d.P * W : 0, T(0));
  const int64_t p0 = t * pl.chunk, p1 = std::min(d.N, p0 + pl.chunk);
  for (int64_t c0 = 0; c0 < d.C; c0 += W) {
    for (int64_t q = p0; q < p1; ++q) {
      const int64_t b = pl.order[q], e = sp[b];
      const int64_t ao = pl.slot[e] * d.P * d.Cpad + c0;
      gather_in<T, W>(a.x + b * d.C * d.D, d, c0, xt.data());
      sc_monomials<T, W>(d.mono, d.M, xt.data(), val.data());
      if (a.t) {
        gather_in<T, W>(a.t + b * d.C * d.D, d, c0, tt.data());
        sc_monomials_tangent<T, W>(d.mono, d.M, xt.data(), tt.data(), val.data(), dot.data());
      }
      if (a.out) {
        std::fill(acc.begin(), acc.end(), T(0));
        if (a.t) sc_contract<T, W>(d.pairs, d.P, a.A + ao, d.Cpad, dot.data(), acc.data());
        if (a.Agg) sc_contract<T, W>(d.pairs, d.P, a.Agg + ao, d.Cpad, val.data(), acc.data());
        scatter_out<T, W>(a.out + b * d.C * d.Dout, d, c0, acc.data());
      }
      if (!a.dx && !a.dw) continue;
      gather_out<T, W>(a.g + b * d.C * d.Dout, d, c0, gt.data());
      if (a.dw) {
        sc_outer<T, W>(d.pairs, d.P, gt.data(), dot.data(), dA.data(), W);
        if (q + 1 == p1 || sp[pl.order[q + 1]] != e)
          a.dw->template flush<W>(d, t, e, c0, dA.data());
      }
      if (a.dx) {
        std::fill(adj.begin(), adj.end(), T(0));
        std::fill(dxt.begin(), dxt.end(), T(0));
        if (a.Agg) sc_seed<T, W>(d.pairs, d.P, a.Agg + ao, d.Cpad, gt.data(), adj.data());
        if (a.t) {
          std::fill(adj_dot.begin(), adj_dot.end(), T(0));
          sc_seed<T, W>(d.pairs, d.P, a.A + ao, d.Cpad, gt.data(), adj_dot.data());
          sc_monomials_tangent_backward<T, W>(d.mono, d.M, xt.data(), tt.data(), val.data(),
                                              dot.data(), adj.data(), adj_dot.data(), dxt.data());
        } else {
          sc_monomials_backward<T, W>(d.mono, d.M, xt.data(), val.data(), adj.data(), dxt.data());
        }
        scatter_in<T, W>(a.dx + b * d.C * d.D, d, c0, dxt.data());
      }
    }
  }
}

// One AVX2+FMA clone and one baseline clone of each chunk loop (the build has no -march).
#define FASTCG_SC_CLONES(T)                                                                     \
  FASTCG_CLONES void sc_forward(const ScDims& d, const Plan& pl, const int64_t* sp, Args<T> a,  \
                                int64_t t) {                                                    \
    forward_chunk<T>(d, pl, sp, a, t);                                                          \
  }                                                                                             \
  FASTCG_CLONES void sc_backward(const ScDims& d, const Plan& pl, const int64_t* sp, Args<T> a, \
                                 int64_t t) {                                                   \
    backward_chunk<T>(d, pl, sp, a, t);                                                         \
  }                                                                                             \
  FASTCG_CLONES void sc_double_backward(const ScDims& d, const Plan& pl, const int64_t* sp,     \
                                        Args<T> a, int64_t t) {                                 \
    double_backward_chunk<T>(d, pl, sp, a, t);                                                  \
  }
FASTCG_SC_CLONES(float)
FASTCG_SC_CLONES(double)
#undef FASTCG_SC_CLONES

template <typename F>
void for_chunks(const Plan& pl, F&& body) {
  at::parallel_for(0, pl.nchunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) body(t);
  });
}

struct Inputs {
  ScDims d;
  Plan pl;
  const int64_t* sp;
};

Inputs prepare(const at::Tensor& x, const at::Tensor& species, const at::Tensor& weights,
               const at::Tensor& mono, const at::Tensor& pairs, const at::Tensor& entries,
               const at::Tensor& coeff, const at::Tensor& cols) {
  check_cpu(x, "x");
  check_cpu(species, "species");
  check_cpu(weights, "weights");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(species.dtype() == at::kLong && species.dim() == 1 && species.is_contiguous() &&
                  species.size(0) == x.size(0),
              "species must be contiguous int64 [N]");
  Inputs in{check_tables(x, weights, mono, pairs, entries, coeff, cols), {}, nullptr};
  const int64_t W = x.scalar_type() == at::kFloat ? kLanes<float> : kLanes<double>;
  in.d.Cpad = (in.d.C + W - 1) / W * W;
  in.sp = species.data_ptr<int64_t>();
  in.pl = make_plan(in.sp, in.d.N, in.d.S);
  return in;
}

at::Tensor sc_forward_cpu(const at::Tensor& x, const at::Tensor& species, const at::Tensor& weights,
                          const at::Tensor& mono, const at::Tensor& pairs,
                          const at::Tensor& entries, const at::Tensor& coeff,
                          const at::Tensor& cols) {
  Inputs in = prepare(x, species, weights, mono, pairs, entries, coeff, cols);
  auto out = at::zeros({x.size(0), x.size(1) * cols.size(0)}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "symmetric_contraction", [&] {
    auto A = species_matrix<scalar_t>(in.d, in.pl, weights.data_ptr<scalar_t>());
    Args<scalar_t> a{x.data_ptr<scalar_t>(),   nullptr, nullptr, A.data(), nullptr,
                     out.data_ptr<scalar_t>(), nullptr, nullptr};
    for_chunks(in.pl, [&](int64_t t) { sc_forward(in.d, in.pl, in.sp, a, t); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sc_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                   const at::Tensor& species,
                                                   const at::Tensor& weights,
                                                   const at::Tensor& mono, const at::Tensor& pairs,
                                                   const at::Tensor& entries,
                                                   const at::Tensor& coeff, const at::Tensor& cols,
                                                   std::array<bool, 2> mask) {
  Inputs in = prepare(x, species, weights, mono, pairs, entries, coeff, cols);
  check_cpu(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type() &&
                  grad_out.dim() == 2 && grad_out.size(0) == in.d.N &&
                  grad_out.size(1) == in.d.C * in.d.Dout,
              "grad_out must be contiguous [N, C * dim_out] with x's dtype");
  auto gx = mask[0] ? at::zeros_like(x) : x.new_empty({0});
  auto gw = mask[1] ? at::zeros_like(weights) : weights.new_empty({0});
  if (in.d.N == 0 || in.d.C == 0 || (!mask[0] && !mask[1])) return {gx, gw};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "symmetric_contraction_backward", [&] {
    std::vector<scalar_t> A;
    if (mask[0]) A = species_matrix<scalar_t>(in.d, in.pl, weights.data_ptr<scalar_t>());
    WeightGrad<scalar_t> dw(in.d, in.pl, in.sp, mask[1]);
    Args<scalar_t> a{x.data_ptr<scalar_t>(),
                     grad_out.data_ptr<scalar_t>(),
                     nullptr,
                     A.data(),
                     nullptr,
                     nullptr,
                     mask[0] ? gx.data_ptr<scalar_t>() : nullptr,
                     mask[1] ? &dw : nullptr};
    for_chunks(in.pl, [&](int64_t t) { sc_backward(in.d, in.pl, in.sp, a, t); });
    if (mask[1]) dw.reduce(in.d, in.pl, gw.data_ptr<scalar_t>());
  });
  return {gx, gw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sc_double_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& species,
    const at::Tensor& weights, const std::optional<at::Tensor>& ggx,
    const std::optional<at::Tensor>& ggw, const at::Tensor& mono, const at::Tensor& pairs,
    const at::Tensor& entries, const at::Tensor& coeff, const at::Tensor& cols,
    std::array<bool, 3> mask) {
  Inputs in = prepare(x, species, weights, mono, pairs, entries, coeff, cols);
  check_cpu(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type() &&
                  grad_out.dim() == 2 && grad_out.size(0) == in.d.N &&
                  grad_out.size(1) == in.d.C * in.d.Dout,
              "grad_out must be contiguous [N, C * dim_out] with x's dtype");
  const bool has_t = ggx.has_value(), has_w = ggw.has_value();
  if (has_t) check_cpu(*ggx, "grad_grad_x");
  if (has_w) check_cpu(*ggw, "grad_grad_weights");
  TORCH_CHECK(!has_t || (ggx->sizes() == x.sizes() && ggx->is_contiguous() &&
                         ggx->scalar_type() == x.scalar_type()),
              "grad_grad_x must be contiguous and shaped like x");
  TORCH_CHECK(!has_w || (ggw->sizes() == weights.sizes() && ggw->is_contiguous() &&
                         ggw->scalar_type() == x.scalar_type()),
              "grad_grad_weights must be contiguous and shaped like weights");
  // Each output is zero unless some cotangent reaches it.
  const bool need_g = mask[0] && (has_t || has_w), need_x = mask[1] && (has_t || has_w);
  const bool need_w = mask[2] && has_t;
  auto dg = mask[0] ? at::zeros_like(grad_out) : grad_out.new_empty({0});
  auto dx = mask[1] ? at::zeros_like(x) : x.new_empty({0});
  auto dw = mask[2] ? at::zeros_like(weights) : weights.new_empty({0});
  if (in.d.N == 0 || in.d.C == 0 || !(need_g || need_x || need_w)) return {dg, dx, dw};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "symmetric_contraction_double_backward", [&] {
    std::vector<scalar_t> A, Agg;
    if (has_t) A = species_matrix<scalar_t>(in.d, in.pl, weights.data_ptr<scalar_t>());
    if (has_w && (need_g || need_x))
      Agg = species_matrix<scalar_t>(in.d, in.pl, ggw->data_ptr<scalar_t>());
    WeightGrad<scalar_t> wg(in.d, in.pl, in.sp, need_w);
    Args<scalar_t> a{x.data_ptr<scalar_t>(),
                     grad_out.data_ptr<scalar_t>(),
                     has_t ? ggx->data_ptr<scalar_t>() : nullptr,
                     has_t ? A.data() : nullptr,
                     Agg.empty() ? nullptr : Agg.data(),
                     need_g ? dg.data_ptr<scalar_t>() : nullptr,
                     need_x ? dx.data_ptr<scalar_t>() : nullptr,
                     need_w ? &wg : nullptr};
    for_chunks(in.pl, [&](int64_t t) { sc_double_backward(in.d, in.pl, in.sp, a, t); });
    if (need_w) wg.reduce(in.d, in.pl, dw.data_ptr<scalar_t>());
  });
  return {dg, dx, dw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CPU, m) {
  m.impl("symmetric_contraction", &sc_forward_cpu);
  m.impl("symmetric_contraction_backward", &sc_backward_cpu);
  m.impl("symmetric_contraction_double_backward", &sc_double_backward_cpu);
}

}  // namespace fastcg
