"""Micro-benchmarks of the QGSA selector alone (SmolVLM-256M dimensions, random init, inference mode).

Run: python3 -m pytest benchmarks --benchmark-only
"""

import pytest
import torch

from qgsa_bench.qgsa.module import QGSAModule


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("n_patches", [576, 1296])  # 384 px and 576 px at patch 16
def test_selector_select_and_project(benchmark, batch, n_patches):
    torch.manual_seed(0)
    module = QGSAModule(768, 576).eval()
    q, V = torch.randn(batch, 576), torch.randn(batch, n_patches, 768)

    @torch.no_grad()
    def run():
        selection = module.select(q, V)
        return module.project(V, selection)

    tokens = benchmark(run)
    assert tokens.shape[0] == batch
