// CPU spherical harmonics for lmax 5-8 (the tile bodies of sh_tiles.h; the ops and lmax 0-4 are in
// spherical_harmonics.cpp). Built at -O2 with -O3's vectoriser cost model: at -O3 lmax 8 alone
// took 4.5 minutes of gcc's time on a 2-core machine, most of a fresh `make demo`; this takes
// about 3 for lmax 5-8. Plain -O2 made float32 lmax 6 1.4x slower (its cheap cost model leaves
// lane loops scalar); with the dynamic model the speed is -O3's within noise (1e5 vectors, one
// thread, lmax 6, float32 and float64, forward / backward / double backward, A/B alternated).
// The pragma comes before sh_tiles.h so that every body instantiated here takes it.
#include <ATen/core/Tensor.h>

#pragma GCC optimize("O2", "-fvect-cost-model=dynamic")

#include "cpu/sh_tiles.h"

namespace fastcg {

FASTCG_SH_ALL(5)
FASTCG_SH_ALL(6)
FASTCG_SH_ALL(7)
FASTCG_SH_ALL(8)

}  // namespace fastcg
