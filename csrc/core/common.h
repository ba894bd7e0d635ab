// Shared by csrc/cpu (plain C++) and csrc/cuda (nvcc): math bodies are FASTCG_HD functions.
#pragma once

#if defined(__CUDACC__)
#define FASTCG_HD __host__ __device__ __forceinline__
#else
#define FASTCG_HD inline
#endif

#include <cstdint>

namespace fastcg {

// Connection modes, in the order of fastcg/descriptors/tensor_product.py MODES.
enum Mode : int64_t { UVW = 0, UVU = 1, UUU = 2, UVV = 3, UUW = 4 };

// A mode's rules come from its letters, the channel index of x1, x2 and the output (the Python
// MODE_RULES derive theirs from the same letters; tests/test_table_columns.py compares them):
// equal letters need equal multiplicities, and a path's weights hold one entry per combination
// of its distinct letters.
// uvw, uvu, uuu, uvv, uuw: the letters of Mode's members in order
#define FASTCG_MODE_LETTERS "uvwuvuuuuuvvuuw"

// (an unknown mode, which path_fault reports, reads as uvw: no bound is read past)
FASTCG_HD char mode_letter(int64_t mode, int operand) {
  return mode >= UVW && mode <= UUW ? FASTCG_MODE_LETTERS[3 * mode + operand] : "uvw"[operand];
}

// Columns of the int64 path table (fastcg/descriptors/tensor_product.py PATH_COLUMNS).
enum PathCol : int64_t {
  P_MODE = 0,
  P_L1,
  P_L2,
  P_L3,
  P_MUL1,
  P_MUL2,
  P_MULO,
  P_OFF1,
  P_OFF2,
  P_OFFO,
  P_WOFF,
  P_CG_BEGIN,
  P_CG_END,
  P_NCOLS
};

// Columns of the int64 linear path table (fastcg/descriptors/linear.py LINEAR_COLUMNS).
enum LinCol : int64_t { L_MUL_IN = 0, L_MUL_OUT, L_IR_DIM, L_OFF_IN, L_OFF_OUT, L_WOFF, L_NCOLS };

// Table checks take any int64 entries (a corrupted table passed to torch.ops.fastcg directly),
// so none of their arithmetic may overflow: each bound is tested by division first.

// Whether the block [off, off + mul * dim) lies inside [0, size) (dim >= 1, mul >= 0).
FASTCG_HD bool block_fits(int64_t off, int64_t mul, int64_t dim, int64_t size) {
  if (off < 0 || mul < 0 || dim < 1 || off > size) return false;
  return mul == 0 || dim <= (size - off) / mul;
}

// Whether a * b * c <= bound for a, b, c, bound >= 0.
FASTCG_HD bool product_fits(int64_t a, int64_t b, int64_t c, int64_t bound) {
  if (a == 0 || b == 0 || c == 0) return true;
  if (a > bound / b) return false;
  return a * b <= bound / c;
}

}  // namespace fastcg
