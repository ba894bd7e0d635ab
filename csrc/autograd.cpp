// First-order autograd of the forward ops of both namespaces (fastcg, fastcg_triton), in C++ so
// that a process that only loads the library (a TorchScript model in LAMMPS) gets forces, and
// written once. Each backward calls the namespace's *_backward op through the dispatcher; those
// ops have their autograd registered by fastcg/ops (Python), so double backward works wherever
// the fastcg package is imported. Against a Python autograd.Function: conv + scatter_sum forward
// and backward on 8 nodes / 32 edges, 1 thread, 445 -> 320 us.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;

// The op namespaces whose forward ops get these autograd kernels: fastcg (C++ and CUDA kernels)
// and fastcg_triton (Triton kernels, same schemas: csrc/fastcg.cpp).
struct Fastcg {
  static constexpr const char* ns = "fastcg::";
};
struct FastcgTriton {
  static constexpr const char* ns = "fastcg_triton::";
};

template <class Sig, class Ns>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  const std::string qualified = std::string(Ns::ns) + name;
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "").typed<Sig>();
}

// Runs the op's kernels below autograd (the ops are functional: nothing for ADInplaceOrView).
template <class Sig, class... Args>
auto below_autograd(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

Tensor masked(const Tensor& grad, bool keep) { return keep ? grad : Tensor(); }

// The gradients returned by a backward, padded with undefined ones for the trailing
// non-differentiable arguments. Without the fastcg Python package the backward op has no
// autograd and PyTorch's fallback would only warn while giving wrong second derivatives: there,
// differentiating these gradients raises instead (as torch.autograd.function.once_differentiable).
template <class Sig>
variable_list first_order(const c10::TypedOperatorHandle<Sig>& backward_op, variable_list grads,
                          size_t num_inputs) {
  if (at::GradMode::is_enabled() &&
      !backward_op.hasKernelForDispatchKey(c10::DispatchKey::Autograd)) {
    const auto msg = "fastcg: second derivatives need the autograd of " +
                     backward_op.operator_name().name +
                     ", registered by the fastcg Python package (import fastcg); a process that "
                     "only loads the library has first derivatives only";
    const auto n = static_cast<int64_t>(grads.size());
    grads = std::make_shared<torch::autograd::DelayedError>(msg, n)->apply(std::move(grads));
  }
  grads.resize(num_inputs);
  return grads;
}

template <class Ns>
struct SphericalHarmonics : torch::autograd::Function<SphericalHarmonics<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& vectors, int64_t lmax, bool normalize,
                        const std::string& normalization) {
    static const auto op =
        handle<Tensor(const Tensor&, int64_t, bool, const std::string&), Ns>("spherical_harmonics");
    ctx->save_for_backward({vectors});
    ctx->saved_data["lmax"] = lmax;
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["normalization"] = normalization;
    return below_autograd(op, vectors, lmax, normalize, normalization);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        handle<Tensor(const Tensor&, const Tensor&, int64_t, bool, const std::string&), Ns>(
            "spherical_harmonics_backward");
    const auto saved = ctx->get_saved_variables();
    const auto gv = op.call(grads[0].contiguous(), saved[0], ctx->saved_data["lmax"].toInt(),
                            ctx->saved_data["normalize"].toBool(),
                            ctx->saved_data["normalization"].toStringRef());
    return first_order(op, {gv}, 4);
  }
};

using TPSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                     const Tensor&, int64_t);
using TPBackwardSig = Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const Tensor&, const Tensor&, std::array<bool, 3>);

template <class Ns>
struct TensorProduct : torch::autograd::Function<TensorProduct<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x1, const Tensor& x2, const Tensor& w,
                        const Tensor& paths, const Tensor& cg_index, const Tensor& cg_value,
                        int64_t dim_out) {
    static const auto op = handle<TPSig, Ns>("tensor_product");
    ctx->save_for_backward({x1, x2, w, paths, cg_index, cg_value});
    return below_autograd(op, x1, x2, w, paths, cg_index, cg_value, dim_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<TPBackwardSig, Ns>("tensor_product_backward");
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    const auto [g1, g2, gw] =
        op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], mask);
    return first_order(op, {masked(g1, mask[0]), masked(g2, mask[1]), masked(gw, mask[2])}, 7);
  }
};

// num_nodes / dim_size are SymInt in the schemas and stay c10::SymInt here: an int64_t would
// specialise a traced graph (torch.compile, torch.export) to one number of atoms.
using ConvSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                       c10::SymInt, const Tensor&, const Tensor&, const Tensor&, int64_t);
using ConvBackwardSig = Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, std::array<bool, 3>);

template <class Ns>
struct Conv : torch::autograd::Function<Conv<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& edge_attr,
                        const Tensor& w, const Tensor& src, const Tensor& dst,
                        c10::SymInt num_nodes, const Tensor& paths, const Tensor& cg_index,
                        const Tensor& cg_value, int64_t dim_out) {
    static const auto op = handle<ConvSig, Ns>("conv");
    ctx->save_for_backward({x, edge_attr, w, src, dst, paths, cg_index, cg_value});
    return below_autograd(op, x, edge_attr, w, src, dst, num_nodes, paths, cg_index, cg_value,
                          dim_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<ConvBackwardSig, Ns>("conv_backward");
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    const auto [gx, gy, gw] =
        op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], mask);
    return first_order(op, {masked(gx, mask[0]), masked(gy, mask[1]), masked(gw, mask[2])}, 10);
  }
};

using ConvRadialSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&, const Tensor&, c10::SymInt, const Tensor&,
                             const Tensor&, const Tensor&, int64_t);
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using ConvRadialBackwardSig = Tensor4(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const Tensor&, std::array<bool, 4>);

template <class Ns>
struct ConvRadial : torch::autograd::Function<ConvRadial<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& edge_attr,
                        const Tensor& radial, const Tensor& radial_weight, const Tensor& src,
                        const Tensor& dst, c10::SymInt num_nodes, const Tensor& paths,
                        const Tensor& cg_index, const Tensor& cg_value, int64_t dim_out) {
    static const auto op = handle<ConvRadialSig, Ns>("conv_radial");
    ctx->save_for_backward(
        {x, edge_attr, radial, radial_weight, src, dst, paths, cg_index, cg_value});
    return below_autograd(op, x, edge_attr, radial, radial_weight, src, dst, num_nodes, paths,
                          cg_index, cg_value, dim_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<ConvRadialBackwardSig, Ns>("conv_radial_backward");
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    const auto [gx, gy, gh, gw] =
        op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], mask);
    return first_order(
        op, {masked(gx, mask[0]), masked(gy, mask[1]), masked(gh, mask[2]), masked(gw, mask[3])},
        11);
  }
};

using ConvTabulatedSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                                const Tensor&, const Tensor&, c10::SymInt, const Tensor&,
                                const Tensor&, const Tensor&, int64_t);
using ConvTabulatedBackwardSig = Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                         const Tensor&, double, const Tensor&, const Tensor&,
                                         const Tensor&, const Tensor&, const Tensor&,
                                         std::array<bool, 3>);

// First derivatives only, with or without the Python package: a tabulated radial serves MD
// (forces, stress); training on forces differentiates the exact radial MLP instead.
template <class Ns>
struct ConvTabulated : torch::autograd::Function<ConvTabulated<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& edge_attr,
                        const Tensor& r, const Tensor& table, double step, const Tensor& src,
                        const Tensor& dst, c10::SymInt num_nodes, const Tensor& paths,
                        const Tensor& cg_index, const Tensor& cg_value, int64_t dim_out) {
    static const auto op = handle<ConvTabulatedSig, Ns>("conv_tabulated");
    ctx->save_for_backward({x, edge_attr, r, table, src, dst, paths, cg_index, cg_value});
    ctx->saved_data["step"] = step;
    return below_autograd(op, x, edge_attr, r, table, step, src, dst, num_nodes, paths, cg_index,
                          cg_value, dim_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<ConvTabulatedBackwardSig, Ns>("conv_tabulated_backward");
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    const auto [gx, gy, gr] =
        op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], ctx->saved_data["step"].toDouble(),
                s[4], s[5], s[6], s[7], s[8], mask);
    variable_list out = {masked(gx, mask[0]), masked(gy, mask[1]), masked(gr, mask[2])};
    if (at::GradMode::is_enabled()) {
      // as torch.autograd.function.once_differentiable: the error node needs inputs that
      // require grad, or a backward through it would silently skip it (zero second derivatives)
      for (auto& t : out)
        if (t.defined()) t = t.detach().requires_grad_(true);
      out = std::make_shared<torch::autograd::DelayedError>(
                "fastcg: conv_tabulated has first derivatives only (a tabulated radial is for "
                "MD; train with the exact radial MLP)",
                3)
                ->apply(std::move(out));
    }
    out.resize(12);
    return out;
  }
};

template <class Ns>
struct ScatterSum : torch::autograd::Function<ScatterSum<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& src, const Tensor& index,
                        c10::SymInt dim_size) {
    static const auto op =
        handle<Tensor(const Tensor&, const Tensor&, c10::SymInt), Ns>("scatter_sum");
    ctx->save_for_backward({index});
    return below_autograd(op, src, index, dim_size);
  }

  // The transpose of a scatter is a gather; index_select's own autograd (index_add) gives the
  // double backward.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto index = ctx->get_saved_variables()[0];
    return {grads[0].index_select(0, index), Tensor(), Tensor()};
  }
};

using Species = std::optional<Tensor>;
using LinearSig = Tensor(const Tensor&, const Tensor&, const Species&, const Tensor&, const Tensor&,
                         int64_t);
using LinearBackwardSig = Tensor2(const Tensor&, const Tensor&, const Tensor&, const Species&,
                                  const Tensor&, const Tensor&, std::array<bool, 2>);

template <class Ns>
struct Linear : torch::autograd::Function<Linear<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                        const Species& species, const Tensor& paths, const Tensor& coeff,
                        int64_t dim_out) {
    static const auto op = handle<LinearSig, Ns>("linear");
    // An undefined saved tensor stands for "no species".
    ctx->save_for_backward({x, w, paths, coeff, species.value_or(Tensor())});
    return below_autograd(op, x, w, species, paths, coeff, dim_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<LinearBackwardSig, Ns>("linear_backward");
    const auto s = ctx->get_saved_variables();
    const Species species = s[4].defined() ? Species(s[4]) : std::nullopt;
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const auto [gx, gw] = op.call(grads[0].contiguous(), s[0], s[1], species, s[2], s[3], mask);
    return first_order(op, {masked(gx, mask[0]), masked(gw, mask[1])}, 6);
  }
};

using SCSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                     const Tensor&, const Tensor&, const Tensor&);
using SCBackwardSig = Tensor2(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, std::array<bool, 2>);

template <class Ns>
struct SymmetricContraction : torch::autograd::Function<SymmetricContraction<Ns>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& species,
                        const Tensor& w, const Tensor& monomials, const Tensor& pairs,
                        const Tensor& entries, const Tensor& coeff, const Tensor& out_cols) {
    static const auto op = handle<SCSig, Ns>("symmetric_contraction");
    ctx->save_for_backward({x, species, w, monomials, pairs, entries, coeff, out_cols});
    return below_autograd(op, x, species, w, monomials, pairs, entries, coeff, out_cols);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<SCBackwardSig, Ns>("symmetric_contraction_backward");
    const auto s = ctx->get_saved_variables();
    // species (input 1) is an index tensor: x is input 0, the weights input 2.
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(2)};
    const auto [gx, gw] =
        op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], mask);
    return first_order(op, {masked(gx, mask[0]), Tensor(), masked(gw, mask[1])}, 8);
  }
};

template <class Ns>
Tensor spherical_harmonics(const Tensor& vectors, int64_t lmax, bool normalize,
                           const std::string& normalization) {
  return SphericalHarmonics<Ns>::apply(vectors, lmax, normalize, normalization);
}

template <class Ns>
Tensor tensor_product(const Tensor& x1, const Tensor& x2, const Tensor& w, const Tensor& paths,
                      const Tensor& cg_index, const Tensor& cg_value, int64_t dim_out) {
  return TensorProduct<Ns>::apply(x1, x2, w, paths, cg_index, cg_value, dim_out);
}

template <class Ns>
Tensor conv(const Tensor& x, const Tensor& edge_attr, const Tensor& w, const Tensor& src,
            const Tensor& dst, c10::SymInt num_nodes, const Tensor& paths, const Tensor& cg_index,
            const Tensor& cg_value, int64_t dim_out) {
  return Conv<Ns>::apply(x, edge_attr, w, src, dst, num_nodes, paths, cg_index, cg_value, dim_out);
}

template <class Ns>
Tensor conv_radial(const Tensor& x, const Tensor& edge_attr, const Tensor& radial,
                   const Tensor& radial_weight, const Tensor& src, const Tensor& dst,
                   c10::SymInt num_nodes, const Tensor& paths, const Tensor& cg_index,
                   const Tensor& cg_value, int64_t dim_out) {
  return ConvRadial<Ns>::apply(x, edge_attr, radial, radial_weight, src, dst, num_nodes, paths,
                               cg_index, cg_value, dim_out);
}

template <class Ns>
Tensor conv_tabulated(const Tensor& x, const Tensor& edge_attr, const Tensor& r,
                      const Tensor& table, double step, const Tensor& src, const Tensor& dst,
                      c10::SymInt num_nodes, const Tensor& paths, const Tensor& cg_index,
                      const Tensor& cg_value, int64_t dim_out) {
  // here, not in forward (which runs without grad mode)
  TORCH_CHECK(!(at::GradMode::is_enabled() && table.requires_grad()),
              "conv_tabulated: the table has no gradient (train the exact radial MLP)");
  return ConvTabulated<Ns>::apply(x, edge_attr, r, table, step, src, dst, num_nodes, paths,
                                  cg_index, cg_value, dim_out);
}

template <class Ns>
Tensor scatter_sum(const Tensor& src, const Tensor& index, c10::SymInt dim_size) {
  return ScatterSum<Ns>::apply(src, index, dim_size);
}

template <class Ns>
Tensor linear(const Tensor& x, const Tensor& w, const Species& species, const Tensor& paths,
              const Tensor& coeff, int64_t dim_out) {
  return Linear<Ns>::apply(x, w, species, paths, coeff, dim_out);
}

template <class Ns>
Tensor symmetric_contraction(const Tensor& x, const Tensor& species, const Tensor& w,
                             const Tensor& monomials, const Tensor& pairs, const Tensor& entries,
                             const Tensor& coeff, const Tensor& out_cols) {
  return SymmetricContraction<Ns>::apply(x, species, w, monomials, pairs, entries, coeff, out_cols);
}

// The forward ops both namespaces have.
template <class Ns>
void impl_shared(torch::Library& m) {
  m.impl("spherical_harmonics", &spherical_harmonics<Ns>);
  m.impl("tensor_product", &tensor_product<Ns>);
  m.impl("conv", &conv<Ns>);
  m.impl("scatter_sum", &scatter_sum<Ns>);
  m.impl("linear", &linear<Ns>);
  m.impl("symmetric_contraction", &symmetric_contraction<Ns>);
}

}  // namespace

// The Autograd alias key covers every backend (CPU, CUDA). These are the forward ops' only
// autograd: fastcg/ops registers the backward ops' (double backward), once for both namespaces.
TORCH_LIBRARY_IMPL(fastcg, Autograd, m) {
  impl_shared<Fastcg>(m);
  m.impl("conv_radial", &conv_radial<Fastcg>);
  m.impl("conv_tabulated", &conv_tabulated<Fastcg>);
}

// The Triton backend has no conv_radial / conv_tabulated (csrc/fastcg.cpp).
TORCH_LIBRARY_IMPL(fastcg_triton, Autograd, m) { impl_shared<FastcgTriton>(m); }
