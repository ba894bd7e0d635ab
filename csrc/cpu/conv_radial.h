// CPU convs whose per-edge weights are made by the kernel, a block of edges at a time, from a
// per-edge source: a radial MLP's last linear layer (conv_radial: weights = radial @ W) or a
// cubic Hermite table of the weights as a function of the edge length (conv_tabulated). Edges
// must be in destination order (csrc/conv_radial.cpp sorts them).
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

namespace fastcg {

struct WeightSource {
  bool table;  // false: weights = a @ b, a = radial [E, K], b = radial_weight [K, numel]
               // true: a = edge lengths r [E], b = table [G + 1, 2, numel] of values and
               // step-scaled derivatives at r = i * step, weights(r) its cubic Hermite
  at::Tensor a, b;
  double step = 0;
  int64_t numel() const { return b.size(-1); }
};

// Every edge length r inside the table's [0, G step] (float32 lengths of edges at the cutoff may
// round just past it); an error naming the first edge outside, in the caller's order.
void check_table_lengths(const at::Tensor& r, int64_t knots, double step);

// [num_nodes, dim_out]
at::Tensor conv_weighted_cpu(const at::Tensor& x, const at::Tensor& edge_attr,
                             const WeightSource& w, const at::Tensor& src, const at::Tensor& dst,
                             int64_t num_nodes, const at::Tensor& paths, const at::Tensor& cg_index,
                             const at::Tensor& cg_value, int64_t dim_out);

// (grad x, grad edge_attr, grad a, grad b); mask as those four; grad b only for a matmul source.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_weighted_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& edge_attr,
    const WeightSource& w, const at::Tensor& src, const at::Tensor& dst, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, std::array<bool, 4> mask);

// conv_radial's double backward: the gradients (grad_out, x, edge_attr, radial, radial_weight;
// mask as those five) of <gg, conv_radial_backward(grad_out, ...)> given the cotangents gg of
// its four outputs (undefined where absent), every path weighted.
std::array<at::Tensor, 5> conv_radial_double_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& edge_attr,
    const at::Tensor& radial, const at::Tensor& radial_weight, const at::Tensor& ggx,
    const at::Tensor& ggy, const at::Tensor& ggh, const at::Tensor& ggW, const at::Tensor& src,
    const at::Tensor& dst, const at::Tensor& paths, const at::Tensor& cg_index,
    const at::Tensor& cg_value, std::array<bool, 5> mask);

}  // namespace fastcg
