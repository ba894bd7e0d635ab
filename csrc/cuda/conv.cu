// CUDA fused convolution: gather + tensor product + scatter without per-edge messages, over the
// per-path functions of csrc/core/tp.h. Two variants, chosen per call by torch's deterministic
// algorithms flag (the Triton backend, fastcg/triton/conv.py, also takes its deterministic forward
// for edges already sorted by dst, which it finds with a host sync that this backend avoids):
// - atomic (the default): one thread per edge adds its message into out[dst[e]] (forward), and
//   its terms into grad_x[src[e]] and shared grad_weights (backward), with atomicAdd (float and
//   double: sm_60+; the build targets sm_80 and sm_90). grad_edge_attr and per-edge grad_weights
//   rows belong to their edge's thread and are plain writes. No sort and no grouping pass, any
//   edge order; but float additions land in a run-dependent order, so results may differ between
//   runs in the last bits. Shared weights make every edge add into the same grad_weights row
//   (contended atomics); conv weights usually come per edge from a radial MLP (MACE, NequIP).
//   Except that a forward whose edges come sorted by dst stays reproducible bit for bit (DESIGN),
//   still with no host sync: a device flag (dst sorted?) lets the per-node kernel below sum the
//   CSR segments of dst itself; both kernels are launched and the one the flag does not pick
//   returns at once (a compare + all reduce and a searchsorted of num_nodes + 1 values extra).
// - deterministic, under torch.use_deterministic_algorithms(True): as in the CPU kernel, edges
//   are grouped by destination (forward) or source (backward) with a stable sort on the device
//   (no host sync), and one thread owns one node: it sums its edges in input order into its own
//   row, so results are reproducible bit for bit, whether or not the edges come sorted.
// One thread per edge rather than per (edge, path): several paths add into one grad_edge_attr
// block (they share the edge irrep), which a path split would turn into atomics too, and E threads
// (10^4 to 10^6 in MD) already fill the GPU.
#include <torch/library.h>

#include <array>
#include <type_traits>

#include "core/tp.h"
#include "cuda/tp_common.cuh"
#include "cuda/utils.cuh"

namespace fastcg {
namespace {

struct ConvDims {
  int64_t N, d1, d2, wn, dout;
  bool shared;
};

// out[n] = sum over edges e into n (input order) of TP(x[src[e]], y[e], w[e]). order null: the
// edges are sorted by dst (t is the edge); run non-null: a device flag, nothing to do unless set.
template <typename T>
__global__ void conv_fwd_kernel(TPTables tb, ConvDims c, const T* x, const T* y, const T* w,
                                const int64_t* src, const int64_t* order, const int64_t* off,
                                int64_t num_nodes, const bool* run, T* out) {
  const int64_t n = thread_index();
  if (n >= num_nodes || (run && !*run)) return;
  T* o = out + n * c.dout;
  for (int64_t t = off[n]; t < off[n + 1]; ++t) {
    const int64_t e = order ? order[t] : t;
    const T* we = c.shared ? w : w + e * c.wn;
    for (int64_t q = 0; q < tb.P; ++q)
      tp_path_forward<T>(tb.paths + q * P_NCOLS, tb.ci, tb.cv, x + src[e] * c.d1, y + e * c.d2, we,
                         o);
  }
}

// Source nodes [n0, n0 + count): grad_x[n] sums over the node's outgoing edges; grad_edge_attr
// and per-edge grad_weights rows belong to one edge; shared grad_weights go to row n - n0 of the
// chunk's partials.
template <typename T>
__global__ void conv_bwd_kernel(TPTables tb, ConvDims c, const T* g, const T* x, const T* y,
                                const T* w, const int64_t* dst, const int64_t* order,
                                const int64_t* off, int64_t n0, int64_t count, T* gx, T* gy,
                                T* gw) {
  const int64_t i = thread_index();
  if (i >= count) return;
  const int64_t n = n0 + i;
  T* ga = gx ? gx + n * c.d1 : nullptr;
  for (int64_t t = off[n]; t < off[n + 1]; ++t) {
    const int64_t e = order[t];
    const T* we = c.shared ? w : w + e * c.wn;
    T* gwe = gw ? gw + (c.shared ? i : e) * c.wn : nullptr;
    for (int64_t q = 0; q < tb.P; ++q)
      tp_path_backward<T>(tb.paths + q * P_NCOLS, tb.ci, tb.cv, g + dst[e] * c.dout, x + n * c.d1,
                          y + e * c.d2, we, ga, gy ? gy + e * c.d2 : nullptr, gwe);
  }
}

// Adds into elements that other threads also add into (atomic variant). The result is unused,
// so ptxas emits a reduction (RED), not a round trip.
struct AtomicAdd {
  template <typename T>
  static __device__ __forceinline__ void add(T* p, T v) {
    atomicAdd(p, v);
  }
};

// out[dst[e]] += TP(x[src[e]], y[e], w[e]) for edge e = this thread, atomically. Edges whose
// indices are out of range (check_index_cuda has already asserted on them) write nothing; nothing
// at all when the device flag `skip` is set (dst sorted: conv_fwd_kernel sums instead).
template <typename T>
__global__ void conv_fwd_atomic_kernel(TPTables tb, ConvDims c, const T* x, const T* y, const T* w,
                                       const int64_t* src, const int64_t* dst, int64_t E,
                                       int64_t num_nodes, const bool* skip, T* out) {
  const int64_t e = thread_index();
  if (e >= E || *skip) return;
  const int64_t s = src[e], d = dst[e];
  if (s < 0 || s >= c.N || d < 0 || d >= num_nodes) return;
  const T* we = c.shared ? w : w + e * c.wn;
  for (int64_t q = 0; q < tb.P; ++q)
    tp_path_forward<T, AtomicAdd>(tb.paths + q * P_NCOLS, tb.ci, tb.cv, x + s * c.d1, y + e * c.d2,
                                  we, out + d * c.dout);
}

// Backward of edge e = this thread: grad_x[src[e]] and, with shared weights (kShared), the one
// grad_weights row take atomic adds; grad_edge_attr[e] and per-edge grad_weights[e] are this
// thread's own. Null outputs are skipped.
template <typename T, bool kShared>
__global__ void conv_bwd_atomic_kernel(TPTables tb, ConvDims c, const T* g, const T* x, const T* y,
                                       const T* w, const int64_t* src, const int64_t* dst,
                                       int64_t E, int64_t num_nodes, T* gx, T* gy, T* gw) {
  using AddW = std::conditional_t<kShared, AtomicAdd, PlainAdd>;
  const int64_t e = thread_index();
  if (e >= E) return;
  const int64_t s = src[e], d = dst[e];
  if (s < 0 || s >= c.N || d < 0 || d >= num_nodes) return;
  const T* we = kShared ? w : w + e * c.wn;
  T* ga = gx ? gx + s * c.d1 : nullptr;
  T* gb = gy ? gy + e * c.d2 : nullptr;
  T* gwe = gw ? (kShared ? gw : gw + e * c.wn) : nullptr;
  for (int64_t q = 0; q < tb.P; ++q)
    tp_path_backward<T, AtomicAdd, PlainAdd, AddW>(tb.paths + q * P_NCOLS, tb.ci, tb.cv,
                                                   g + d * c.dout, x + s * c.d1, y + e * c.d2, we,
                                                   ga, gb, gwe);
}

// ---- host side: checks and launches (the kernels above also build as host code for
// tests/test_cuda_emulation.py) ----

// The atomic kernels unless deterministic algorithms are on (the file's header says why).
bool use_atomics() { return !at::globalContext().deterministicAlgorithms(); }

ConvDims check_conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                    const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                    const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                    int64_t dim_out) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D tensor");
  check_like_cuda(y, x, "edge_attr");
  TORCH_CHECK(y.dim() == 2, "edge_attr must be 2-D [E, dim2]");
  const int64_t E = y.size(0);
  check_like_cuda(w, x, "weights");
  TORCH_CHECK(w.dim() == 1 || (w.dim() == 2 && w.size(0) == E), "weights must be [numel] or [", E,
              ", numel]");
  TORCH_CHECK(num_nodes >= 0, "num_nodes must be >= 0");
  TORCH_CHECK(dim_out >= 0, "dim_out must be >= 0");
  check_index_shape(src, E, x, "src");
  check_index_shape(dst, E, x, "dst");
  check_tp_tables(paths, cg_index, cg_value, x);
  check_index_cuda(src, x.size(0));
  check_index_cuda(dst, num_nodes);
  check_paths_cuda(paths, cg_index, x.size(1), y.size(1), dim_out, w.size(-1));
  return {x.size(0), x.size(1), y.size(1), w.size(-1), dim_out, w.dim() == 1};
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                const at::Tensor& src, const at::Tensor& dst, int64_t num_nodes,
                const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                int64_t dim_out) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const ConvDims c = check_conv(x, y, w, src, dst, num_nodes, paths, cg_index, cg_value, dim_out);
  auto out = at::zeros({num_nodes, dim_out}, x.options());
  if (y.size(0) == 0 || num_nodes == 0 || paths.size(0) == 0) return out;
  const TPTables tb = tp_tables(paths, cg_index, cg_value);
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool atomics = use_atomics();
  // Atomic variant: CSR offsets of dst itself, used only when the device flag says it is sorted.
  const auto [order, off] =
      atomics ? std::pair{at::Tensor(), sorted_offsets(dst, num_nodes)} : group_by(dst, num_nodes);
  const at::Tensor is_sorted = atomics ? sorted_flag(dst) : at::Tensor();
  const bool* flag = atomics ? is_sorted.data_ptr<bool>() : nullptr;
  const int64_t E = y.size(0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_cuda", [&] {
    conv_fwd_kernel<scalar_t><<<blocks_for(num_nodes), kThreads, 0, stream>>>(
        tb, c, x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
        src.data_ptr<int64_t>(), atomics ? nullptr : order.data_ptr<int64_t>(),
        off.data_ptr<int64_t>(), num_nodes, flag, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (atomics) {
      conv_fwd_atomic_kernel<scalar_t><<<blocks_for(E), kThreads, 0, stream>>>(
          tb, c, x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
          src.data_ptr<int64_t>(), dst.data_ptr<int64_t>(), E, num_nodes, flag,
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

// Atomic backward into the zeroed gx, gy, gw (the masked-off ones are skipped).
void conv_backward_atomic(const TPTables& tb, const ConvDims& c, const at::Tensor& g,
                          const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                          const at::Tensor& src, const at::Tensor& dst, std::array<bool, 3> mask,
                          at::Tensor& gx, at::Tensor& gy, at::Tensor& gw) {
  const int64_t E = y.size(0), num_nodes = g.size(0);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward_cuda_atomic", [&] {
    scalar_t* ga = mask[0] ? gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = mask[1] ? gy.data_ptr<scalar_t>() : nullptr;
    scalar_t* gwp = mask[2] && c.wn > 0 ? gw.data_ptr<scalar_t>() : nullptr;
    auto kernel =
        c.shared ? conv_bwd_atomic_kernel<scalar_t, true> : conv_bwd_atomic_kernel<scalar_t, false>;
    kernel<<<blocks_for(E), kThreads, 0, stream>>>(
        tb, c, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
        w.data_ptr<scalar_t>(), src.data_ptr<int64_t>(), dst.data_ptr<int64_t>(), E, num_nodes, ga,
        gb, gwp);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
    const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 3> mask) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  check_like_cuda(g, x, "grad_out");
  TORCH_CHECK(g.dim() == 2, "grad_out must be 2-D [num_nodes, dim_out]");
  const ConvDims c = check_conv(x, y, w, src, dst, g.size(0), paths, cg_index, cg_value, g.size(1));
  auto gx = masked_zeros(mask[0], x), gy = masked_zeros(mask[1], y), gw = masked_zeros(mask[2], w);
  const int64_t N = c.N;
  if (y.size(0) == 0 || N == 0 || paths.size(0) == 0 || !(mask[0] || mask[1] || mask[2]))
    return {gx, gy, gw};
  const TPTables tb = tp_tables(paths, cg_index, cg_value);
  if (use_atomics()) {
    conv_backward_atomic(tb, c, g, x, y, w, src, dst, mask, gx, gy, gw);
    return {gx, gy, gw};
  }
  const auto [order, off] = group_by(src, N);
  // Shared weights: source nodes in chunks, each node writing its own partial gradient row.
  const bool partials = mask[2] && c.shared && c.wn > 0;
  const int64_t chunk = partials ? rows_per_chunk(N, c.wn) : N;
  auto part = partials ? at::empty({chunk, c.wn}, w.options()) : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward_cuda", [&] {
    scalar_t* ga = mask[0] ? gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = mask[1] ? gy.data_ptr<scalar_t>() : nullptr;
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t n = std::min(chunk, N - n0);
      scalar_t* gwp = nullptr;
      if (partials) {
        part.zero_();
        gwp = part.data_ptr<scalar_t>();
      } else if (mask[2] && c.wn > 0) {
        gwp = gw.data_ptr<scalar_t>();
      }
      conv_bwd_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          tb, c, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
          w.data_ptr<scalar_t>(), dst.data_ptr<int64_t>(), order.data_ptr<int64_t>(),
          off.data_ptr<int64_t>(), n0, n, ga, gb, gwp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (partials) gw.add_(part.narrow(0, 0, n).sum(0));
    }
  });
  return {gx, gy, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcg, CUDA, m) {
  m.impl("conv", &conv);
  m.impl("conv_backward", &conv_backward);
}

}  // namespace fastcg
