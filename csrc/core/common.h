// Shared by csrc/cpu (plain C++) and csrc/cuda (nvcc): math bodies are FASTCG_HD functions.
#pragma once

#if defined(__CUDACC__)
#define FASTCG_HD __host__ __device__ __forceinline__
#else
#define FASTCG_HD inline
#endif

#include <cstdint>

namespace fastcg {

// Connection modes, in the order of fastcg/descriptor.py MODES.
enum Mode : int64_t { UVW = 0, UVU = 1, UUU = 2, UVV = 3, UUW = 4 };

// Columns of the int64 path table (fastcg/descriptor.py PATH_COLUMNS).
enum PathCol : int64_t {
  P_MODE = 0, P_L1, P_L2, P_L3, P_MUL1, P_MUL2, P_MULO,
  P_OFF1, P_OFF2, P_OFFO, P_WOFF, P_CG_BEGIN, P_CG_END, P_NCOLS
};

// Columns of the int64 linear path table.
enum LinCol : int64_t { L_MUL_IN = 0, L_MUL_OUT, L_IR_DIM, L_OFF_IN, L_OFF_OUT, L_WOFF, L_NCOLS };

}  // namespace fastcg
