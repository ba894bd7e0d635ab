// CPU spherical harmonics for lmax 5-8 (the tile bodies of sh_tiles.h; the ops and lmax 0-4 are in
// spherical_harmonics.cpp). Built at -O2: at -O3 these eight entry points alone took 4.5 minutes
// of gcc's time on this 2-core machine, most of a fresh `make demo`, for no measured speed-up
// (1e5 vectors, one thread, lmax 6 and 8, float32 and float64: within the machine's noise).
// The pragma comes before sh_tiles.h so that every body instantiated here takes it.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#pragma GCC optimize("O2")

#include "cpu/sh_tiles.h"

namespace fastcg {

FASTCG_SH_ALL(5)
FASTCG_SH_ALL(6)
FASTCG_SH_ALL(7)
FASTCG_SH_ALL(8)

}  // namespace fastcg
