"""The QGSA module and selectors: exact k, gradients through the straight-through mask, q-dependence."""

import pytest
import torch

from qgsa_bench.qgsa.config import QGSAConfig
from qgsa_bench.qgsa.gumbel import gumbel_selection
from qgsa_bench.qgsa.module import QGSAModule
from qgsa_bench.selectors.selection import norm_selection, random_selection, topk_selection


def _inputs(B=4, N=64, d_v=32, d_q=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d_q, generator=g), torch.randn(B, N, d_v, generator=g)


def test_inference_selects_exactly_k_within_bounds():
    torch.manual_seed(0)
    module = QGSAModule(32, 48).eval()
    q, V = _inputs(B=16)
    q = q * torch.linspace(0.1, 30, 16)[:, None]  # spread f_comp's outputs
    sel = module.select(q, V)
    assert ((sel.k >= 4) & (sel.k <= 32)).all()
    assert torch.equal(sel.valid.sum(1), sel.k)
    for b in range(16):
        chosen = sel.indices[b][sel.valid[b]]
        assert chosen.numel() == sel.k[b] == chosen.unique().numel()
        assert torch.equal(chosen, chosen.sort().values)  # raster order
        expected = sel.scores[b].topk(int(sel.k[b])).indices.sort().values
        assert torch.equal(chosen, expected)


def test_budget_formula_eq2():
    module = QGSAModule(32, 48, QGSAConfig(k_min=4, k_max=32))
    q, _ = _inputs()
    k, k_cont, c = module.budget(q)
    assert torch.equal(k, torch.floor(4 + 28 * c).long())
    torch.testing.assert_close(k_cont, 4 + 28 * c)


def test_fixed_k_overrides_budget():
    module = QGSAModule(32, 48).eval()
    q, V = _inputs()
    assert module.select(q, V, k=7).k.tolist() == [7, 7, 7, 7]


def test_gumbel_selection_hard_mask_is_exactly_k_ones():
    scores = torch.randn(3, 50, requires_grad=True)
    k = torch.tensor([4, 9, 17])
    for space in ("softmax", "logits"):
        sel = gumbel_selection(scores, k, k.float(), tau=0.5, soft_mask_space=space,
                               generator=torch.Generator().manual_seed(1))
        assert torch.equal(sel.valid.sum(1), k)
        ones = torch.ones_like(sel.weights)
        torch.testing.assert_close(sel.weights[sel.valid], ones[sel.valid])  # forward value is the hard mask
        assert (sel.weights[~sel.valid] == 0).all()


def test_gradients_reach_scorer_fcomp_and_wvis_through_straight_through_mask():
    torch.manual_seed(0)
    module = QGSAModule(32, 48).train()
    q, V = _inputs()
    sel = module.select(q, V, tau=0.5, generator=torch.Generator().manual_seed(0))
    tokens = module.project(V, sel)
    (tokens * sel.valid[..., None]).pow(2).sum().backward()
    for name in ("scorer", "f_comp", "W_vis"):
        grads = [p.grad for p in getattr(module, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_gradients_never_reach_frozen_base(tiny, images):
    base_before = {k: v.clone() for k, v in tiny.loaded.model.state_dict().items()}
    module = tiny.module.train()
    try:
        prepared = tiny.run("qgsa").prepare(images, ["what color?", "is there a circle?"], 64)
        lp = tiny.adapter.answer_logprob(prepared.inputs, ["red", "yes"])
        (-lp.sum()).backward()
    finally:
        module.eval()
    assert all(not p.requires_grad and p.grad is None for p in tiny.loaded.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.scorer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.W_vis.parameters())
    module.zero_grad(set_to_none=True)
    for key, value in tiny.loaded.model.state_dict().items():
        assert torch.equal(value, base_before[key]), key


def test_same_image_different_questions_select_different_patches(tiny, images):
    # Through the pipeline: the scores of the same patches depend on the question ...
    with torch.no_grad():
        a = tiny.run("qgsa").prepare(images[:1], ["what color is the circle?"], 64, k=8).selection
        b = tiny.run("qgsa").prepare(images[:1], ["how many squares are there?"], 64, k=8).selection
    assert not torch.equal(a.scores, b.scores)
    # ... and with question vectors of unit scale (a random-init LM's embeddings are ~0.02) the
    # selected sets differ for the same V.
    torch.manual_seed(0)
    module = QGSAModule(32, 48).eval()
    q, V = _inputs(B=2)
    V = V[:1].expand(2, -1, -1)
    sel = module.select(q, V, k=8)
    assert not torch.equal(sel.indices[0], sel.indices[1])


def test_baselines():
    _, V = _inputs(B=2, N=30)
    sel = norm_selection(V, 5)
    expected = V.norm(dim=-1).topk(5).indices.sort(dim=1).values
    assert torch.equal(sel.indices, expected)
    r = random_selection(2, 30, torch.tensor([3, 6]), "cpu", torch.Generator().manual_seed(0))
    assert r.valid.sum(1).tolist() == [3, 6]
    assert r.indices[1].unique().numel() == 6
    with pytest.raises(ValueError):
        topk_selection(torch.randn(1, 10), 11)


def _expected_counts(d_v, d_q, d_h=256):
    scorer = (d_q + 1) * d_h + (d_v + 1) * d_h + (3 * d_h + 1) * d_h + (d_h + 1) * d_h + (d_h + 1)
    f_comp = (d_q + 1) * 256 + 257
    return {"scorer": scorer, "f_comp": f_comp, "W_vis": (d_v + 1) * d_q, "W_p": (d_v + 1) * 512,
            "total": scorer + f_comp + (d_v + 1) * d_q + (d_v + 1) * 512}


def test_trainable_parameter_counts_follow_eq1_and_presets():
    counts = QGSAModule(768, 576).parameter_counts()  # SmolVLM-256M
    assert counts == _expected_counts(768, 576) and counts["total"] == 1_592_130
    counts = QGSAModule(768, 960).parameter_counts()  # SmolVLM-500M
    assert counts == _expected_counts(768, 960) and counts["total"] == 2_084_034


def test_attribution_targets_are_the_dense_answer_gradient(tiny, images):
    """L_attr's target: p*_i = relu(g_i) / sum relu(g), g_i = d log P(a | connector(V * m), q) / d m_i at m = 1."""
    from qgsa_bench.qgsa import losses

    a = tiny.adapter
    with torch.no_grad():
        V = a.patch_features(a.pixel_values(images[:1], 64))
    q, ans = ["what color is the circle?"], ["red"]
    p = losses.attribution_targets(a, V, q, ans)
    assert p.shape == (1, 64) and (p >= 0).all() and abs(float(p.sum()) - 1.0) < 1e-5

    def logp(m):
        with torch.no_grad():
            return float(a.answer_logprob(a.build_inputs(a.connect(V * m[..., None]), q), ans).double())

    m = torch.ones(1, 64, dtype=V.dtype)
    i = int(p.argmax())
    eps = 1e-2
    up, down = m.clone(), m.clone()
    up[0, i] += eps
    down[0, i] -= eps
    g_i = (logp(up) - logp(down)) / (2 * eps)  # central difference of the most helpful patch's gate
    m.requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(a.answer_logprob(a.build_inputs(a.connect(V * m[..., None]), q), ans).sum(), m)
    assert g_i > 0 and abs(g_i - float(g[0, i])) < 0.05 * abs(float(g[0, i])) + 1e-4
    assert torch.allclose(p, g.clamp(min=0) / g.clamp(min=0).sum())
    scores = torch.zeros(1, 64, requires_grad=True)
    loss = losses.attribution(scores, p)
    assert abs(float(loss.detach()) - torch.log(torch.tensor(64.0)).item()) < 1e-5  # uniform scores: CE = log N
    loss.backward()
    assert torch.allclose(scores.grad, (torch.full((1, 64), 1 / 64) - p))  # d CE / d s = softmax(s) - p*


def test_sufficient_budget_is_the_first_grid_k_that_keeps_the_answer(tiny, images):
    """k* = the smallest k of the grid whose top-k patches by p*, alone through the connector, keep
    log P(a) within the tolerance of dense; the last grid value when none does."""
    from qgsa_bench import QGSAError
    from qgsa_bench.config import TrainConfig
    from qgsa_bench.qgsa import losses

    assert losses.budget_grid(4, 32) == [4, 8, 16, 32] and losses.budget_grid(4, 20) == [4, 8, 16, 20]
    assert losses.budget_grid(5, 5) == [5]
    a = tiny.adapter
    with torch.no_grad():
        V = a.patch_features(a.pixel_values(images[:2], 64))
    q, ans = ["what color is the circle?", "how many squares are there?"], ["red", "2"]
    p = losses.attribution_targets(a, V, q, ans)
    groups = tiny.adapter.unit_patches(64, V.device)
    grid = [4, 16, 64]
    with torch.no_grad():
        dense = a.answer_logprob(a.build_inputs(a.connect(V), q), ans)
        logp = []
        for k in grid:  # top-k patches by p*, through the connector with the others zeroed
            keep = torch.zeros(2, 64)
            for b in range(2):
                keep[b, p[b].argsort(descending=True)[:k]] = 1.0
            valid = torch.stack([torch.tensor([bool(keep[b, g].any()) for g in groups]) for b in range(2)])
            logp.append(a.answer_logprob(a.build_inputs(a.connect(V * keep[..., None]), q, valid), ans))
    gap = dense[:, None] - torch.stack(logp, dim=1)  # (2, 3); at k = N nothing is dropped
    assert torch.allclose(gap[:, -1], torch.zeros(2), atol=1e-5)
    for tol in (1e-6, float(gap[:, 0].max()) + 1e-3, float(gap[:, 1].min()) + 1e-3):
        expected = [float(next((k for k, g in zip(grid, gap[b]) if g <= tol), grid[-1])) for b in range(2)]
        assert losses.sufficient_budget(a, groups, V, q, ans, p, grid, tol).tolist() == expected
    assert losses.sufficient_budget(a, groups, V, q, ans, p, grid, 1e3).tolist() == [4.0, 4.0]
    with pytest.raises(QGSAError, match="excludes --attr-budget"):
        TrainConfig(projection="connector", suff_budget=1.0, attr_budget=0.8)
    with pytest.raises(QGSAError, match="add --projection connector"):
        TrainConfig(suff_budget=1.0)


def test_attribution_budget_counts_the_patches_that_hold_the_mass():
    from qgsa_bench.qgsa import losses

    p = torch.tensor([[0.1, 0.5, 0.0, 0.2, 0.2], [0.96, 0.01, 0.01, 0.01, 0.01]])
    assert losses.attribution_budget(p, 0.5, 1, 5).tolist() == [1.0, 1.0]
    assert losses.attribution_budget(p, 0.75, 1, 5).tolist() == [3.0, 1.0]  # 0.5 + 0.2 < 0.75 <= 0.9
    assert losses.attribution_budget(p, 0.99, 2, 4).tolist() == [4.0, 4.0]  # clamped to [k_min, k_max]
    k_cont = torch.tensor([3.0, 5.0], requires_grad=True)
    loss = losses.budget_regression(k_cont, torch.tensor([3.0, 1.0]), 1, 5)
    assert abs(float(loss.detach()) - 0.5) < 1e-6  # ((0/4)^2 + (4/4)^2) / 2


def test_budget_grad_false_leaves_f_comp_to_its_target():
    """select(budget_grad=False): Eq. 4's rescaling by k_cont sends no gradient into f_comp (it learns from
    --attr-budget / --suff-budget alone); the scorer still gets its gradient, and the forward is unchanged."""
    torch.manual_seed(0)
    module = QGSAModule(16, 12, QGSAConfig(soft_mask_space="logits")).train()
    q, V = torch.randn(3, 12), torch.randn(3, 20, 16)
    grads = {}
    for flag in (True, False):
        module.zero_grad(set_to_none=True)
        sel = module.select(q, V, tau=1.0, generator=torch.Generator().manual_seed(1), budget_grad=flag)
        sel.mask_sum.sum().backward()
        grads[flag] = (module.f_comp.net[0].weight.grad, module.scorer.mlp[-1].weight.grad, sel.mask_sum.detach())
    assert grads[True][0].abs().sum() > 0 and grads[False][0] is None
    assert grads[False][1].abs().sum() > 0 and torch.equal(grads[True][2], grads[False][2])
