// Every op schema, nothing else: namespace fastcg (kernels per device in csrc/cpu and csrc/cuda)
// and fastcg_triton (the Triton kernels, registered by fastcg/triton/__init__.py). The forward
// ops' autograd of both is csrc/autograd.cpp's; Python adds fake (meta) kernels and the backward
// ops' autograd in fastcg/ops.
#include <Python.h>
#include <torch/library.h>

// Importing fastcg._C from Python only needs a module object; the ops register statically.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {

// A schema and whether the Triton backend (namespace fastcg_triton, kernels registered by
// fastcg/triton/__init__.py) has the op too: both namespaces get their schemas, and their forward
// ops their autograd (csrc/autograd.cpp), from this one list.
struct Schema {
  const char* text;
  bool triton;
};

const Schema kSchemas[] = {
    // Sizes that vary with the system (num_nodes, dim_size) are SymInt: one exported or compiled
    // graph serves every number of atoms. Backend kernels take them as int64_t; the autograd
    // kernels (csrc/autograd.cpp) keep them symbolic.
    // normalization: "component" | "norm" | "integral" (e3nn's names)
    {"spherical_harmonics(Tensor vectors, int lmax, bool normalize, str normalization) -> Tensor",
     true},
    {"spherical_harmonics_backward(Tensor grad_sh, Tensor vectors, int lmax, bool normalize, "
     "str normalization) -> Tensor",
     true},
    // (grad of grad_sh, grad of vectors) given the cotangent of spherical_harmonics_backward's
    // output
    {"spherical_harmonics_double_backward(Tensor grad_grad_vectors, Tensor grad_sh, "
     "Tensor vectors, int lmax, bool normalize, str normalization) -> (Tensor, Tensor)",
     true},

    // Descriptor tensors (fastcg/descriptors/): paths int64 [P, 13], cg_index int64 [NNZ, 3],
    // cg_value float64 [NNZ] (CG entry times the path's normalisation constant).
    {"tensor_product(Tensor x1, Tensor x2, Tensor weights, Tensor paths, Tensor cg_index, "
     "Tensor cg_value, int dim_out) -> Tensor",
     true},
    {"tensor_product_backward(Tensor grad_out, Tensor x1, Tensor x2, Tensor weights, "
     "Tensor paths, Tensor cg_index, Tensor cg_value, bool[3] output_mask) -> "
     "(Tensor, Tensor, Tensor)",
     true},

    {"conv(Tensor x, Tensor edge_attr, Tensor weights, Tensor src, Tensor dst, SymInt num_nodes, "
     "Tensor paths, Tensor cg_index, Tensor cg_value, int dim_out) -> Tensor",
     true},
    {"conv_backward(Tensor grad_out, Tensor x, Tensor edge_attr, Tensor weights, Tensor src, "
     "Tensor dst, Tensor paths, Tensor cg_index, Tensor cg_value, bool[3] output_mask) "
     "-> (Tensor, Tensor, Tensor)",
     true},

    // conv with weights = radial @ radial_weight (radial [E, K], radial_weight [K, numel]), never
    // stored whole (csrc/conv_radial.cpp)
    {"conv_radial(Tensor x, Tensor edge_attr, Tensor radial, Tensor radial_weight, Tensor src, "
     "Tensor dst, SymInt num_nodes, Tensor paths, Tensor cg_index, Tensor cg_value, int dim_out) "
     "-> Tensor",
     false},
    {"conv_radial_backward(Tensor grad_out, Tensor x, Tensor edge_attr, Tensor radial, "
     "Tensor radial_weight, Tensor src, Tensor dst, Tensor paths, Tensor cg_index, "
     "Tensor cg_value, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)",
     false},
    // (grad of grad_out, x, edge_attr, radial, radial_weight) given the cotangents of
    // conv_radial_backward's outputs; CPU, every path weighted (CUDA composes the ops above)
    {"conv_radial_double_backward(Tensor grad_out, Tensor x, Tensor edge_attr, Tensor radial, "
     "Tensor radial_weight, Tensor? grad_grad_x, Tensor? grad_grad_edge_attr, "
     "Tensor? grad_grad_radial, Tensor? grad_grad_radial_weight, Tensor src, Tensor dst, "
     "Tensor paths, Tensor cg_index, Tensor cg_value, bool[5] output_mask) "
     "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
     false},

    // conv with weights read from a cubic Hermite table [G + 1, 2, numel] (values, step-scaled
    // derivatives at r = i * step) at the edge lengths r [E]; CPU; first derivatives only
    {"conv_tabulated(Tensor x, Tensor edge_attr, Tensor r, Tensor table, float step, Tensor src, "
     "Tensor dst, SymInt num_nodes, Tensor paths, Tensor cg_index, Tensor cg_value, int dim_out) "
     "-> Tensor",
     false},
    {"conv_tabulated_backward(Tensor grad_out, Tensor x, Tensor edge_attr, Tensor r, "
     "Tensor table, float step, Tensor src, Tensor dst, Tensor paths, Tensor cg_index, "
     "Tensor cg_value, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
     false},

    {"scatter_sum(Tensor src, Tensor index, SymInt dim_size) -> Tensor", true},

    // Linear paths int64 [P, 6]: (mul_in, mul_out, ir_dim, off_in, off_out, w_off), path_coeff
    // float64 [P]. weights [numel] shared, or [S, numel] with species[B] picking a row per sample.
    {"linear(Tensor x, Tensor weights, Tensor? species, Tensor paths, Tensor path_coeff, "
     "int dim_out) -> Tensor",
     true},
    {"linear_backward(Tensor grad_out, Tensor x, Tensor weights, Tensor? species, Tensor paths, "
     "Tensor path_coeff, bool[2] output_mask) -> (Tensor, Tensor)",
     true},

    // MACE symmetric contraction (csrc/core/symmetric_contraction.h): x [N, C, D] (MACE's layout:
    // each channel's irreps side by side), species int64 [N], weights [S, K, C]; output
    // [N, C * dim_out] in mul_ir. Tables: monomials int64 [M, 2] (parent, var), pairs int64
    // [P, 2] (out column, monomial), entries int64 [E, 2] (pair, weight row), coeff float64 [E],
    // out_cols int64 [dim_out, 2] (first column of the output irrep, its dimension).
    {"symmetric_contraction(Tensor x, Tensor species, Tensor weights, Tensor monomials, "
     "Tensor pairs, Tensor entries, Tensor coeff, Tensor out_cols) -> Tensor",
     true},
    {"symmetric_contraction_backward(Tensor grad_out, Tensor x, Tensor species, Tensor weights, "
     "Tensor monomials, Tensor pairs, Tensor entries, Tensor coeff, Tensor out_cols, "
     "bool[2] output_mask) -> (Tensor, Tensor)",
     true},
    // (grad of grad_out, of x, of weights) given the cotangents of the backward's outputs
    {"symmetric_contraction_double_backward(Tensor grad_out, Tensor x, Tensor species, "
     "Tensor weights, Tensor? grad_grad_x, Tensor? grad_grad_weights, Tensor monomials, "
     "Tensor pairs, Tensor entries, Tensor coeff, Tensor out_cols, bool[3] output_mask) "
     "-> (Tensor, Tensor, Tensor)",
     true},

};

void define(torch::Library& m, bool triton) {
  for (const auto& s : kSchemas)
    if (s.triton || !triton) m.def(s.text);
}

}  // namespace

TORCH_LIBRARY(fastcg, m) { define(m, false); }
TORCH_LIBRARY(fastcg_triton, m) { define(m, true); }
