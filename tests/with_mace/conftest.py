"""Tests that need mace-torch 0.3.16 and its pinned e3nn 0.4.4 (`make test-mace`, .venv-mace).

Each test module starts with ``pytest.importorskip("mace")``, so in the main environment (no
mace-torch) they are skipped. e3nn is imported through fastcg, which handles 0.4.4's flag.
"""

import fastcg.irreps

fastcg.irreps.o3()
