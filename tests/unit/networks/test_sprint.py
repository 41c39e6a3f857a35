"""SPRINT routing (networks/sprint.py) and the SR-DiT options of the DiT family: analytic properties."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.dit import DiT, DiTConfig, DiTOutput
from speedrun_diffusion.lightning_modules.networks.sprint import (
    SprintConfig,
    SprintDiT,
    build_dit,
    gather_tokens,
    random_keep_ids,
)

SRDIT = dict(norm="rmsnorm", qk_norm=True, rope=True, value_residual=True)


def tiny(**kw) -> DiTConfig:
    base = dict(input_size=4, patch_size=1, in_channels=3, hidden_size=32, depth=5, num_heads=2, num_classes=5,
                cls_token_dim=6, z_dims=(7,), projector_dim=16, repa_depth=2, **SRDIT)
    return DiTConfig(**{**base, **kw})


def _perturb(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _inputs(b: int = 3, cfg: DiTConfig = tiny()):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    return x, torch.rand(b, generator=g), torch.arange(b) % cfg.num_classes, torch.randn(b, cfg.cls_token_dim, generator=g)


def _net(cfg: DiTConfig | None = None, sprint: SprintConfig | None = None) -> SprintDiT:
    net = SprintDiT(cfg or tiny(), sprint or SprintConfig())
    _perturb(net)
    return net


def test_output_structure_and_zero_init():
    cfg = tiny()
    net = SprintDiT(cfg)
    x, t, y, cls = _inputs()
    out = net.eval()(x, t, y, cls_token=cls)
    assert isinstance(out, DiTOutput)
    assert out.velocity.shape == x.shape and out.cls_velocity.shape == cls.shape
    assert out.zs[0].shape == (3, cfg.num_tokens + 1, 7)
    # adaLN-Zero final layer: both heads start at exactly zero
    assert torch.count_nonzero(out.velocity) == 0 and torch.count_nonzero(out.cls_velocity) == 0
    assert torch.count_nonzero(net.mask_token) == 0


def test_kept_token_order_is_irrelevant():
    net = _net().train()
    x, t, y, cls = _inputs()
    ids = torch.stack([torch.randperm(17, generator=torch.Generator().manual_seed(i))[:4] for i in range(3)])
    kw = dict(cls_token=cls, force_drop=torch.zeros(3, dtype=torch.bool), path_drop=False)
    a = net(x, t, y, ids_keep=ids, **kw)
    b = net(x, t, y, ids_keep=ids.flip(1), **kw)
    torch.testing.assert_close(a.velocity, b.velocity, atol=1e-5, rtol=1e-5)


def test_keeping_every_token_equals_eval():
    """Routing all T tokens with the patches in any order = the dense eval-mode middle.

    The cls token goes first: with more ids than grid positions the official RoPE rule leaves the first
    listed token unrotated (never reached at SR-DiT's 25 % keep ratio, where K < G²).
    """
    net = _net()
    x, t, y, cls = _inputs()
    ref = net.eval()(x, t, y, cls_token=cls)
    perms = [torch.randperm(16, generator=torch.Generator().manual_seed(i)) + 1 for i in range(3)]
    ids = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), p]) for p in perms])
    out = net.train()(x, t, y, cls_token=cls, force_drop=torch.zeros(3, dtype=torch.bool), ids_keep=ids, path_drop=False)
    for a, b in ((out.velocity, ref.velocity), (out.cls_velocity, ref.cls_velocity)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_path_drop_train_equals_uncond_eval_and_keeps_graph():
    net = _net()
    x, t, y, cls = _inputs()
    ref = net.eval()(x, t, y, cls_token=cls, uncond=True)
    net.train()
    out = net(x, t, y, cls_token=cls, force_drop=torch.zeros(3, dtype=torch.bool), path_drop=True)
    torch.testing.assert_close(out.velocity, ref.velocity)
    out.velocity.square().mean().backward()
    middle = net.blocks[2]
    # the sparse path stays in the graph (DDP needs every parameter) but receives no gradient
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in middle.parameters())
    assert net.mask_token.grad.abs().sum() > 0
    assert not torch.allclose(net.eval()(x, t, y, cls_token=cls).velocity, ref.velocity)


@pytest.mark.parametrize("drop", [False, True])
def test_a_tensor_path_drop_decision_equals_the_python_one_without_a_graph_break(drop: bool):
    """The decision SRDiT draws is a 0-dim bool tensor: the same values and gradients as the Python bool (bit for
    bit), and no graph break for torch.compile (``bool(tensor)`` used to split SR-DiT's training graph)."""
    x, t, y, cls = _inputs()
    ids = torch.stack([torch.randperm(17, generator=torch.Generator().manual_seed(i))[:4] for i in range(3)])
    import copy

    base, results = _net().train(), []
    for decision in (drop, torch.tensor(drop)):
        net = copy.deepcopy(base)
        out = net(x, t, y, cls_token=cls, force_drop=torch.zeros(3, dtype=torch.bool), ids_keep=ids,
                  path_drop=decision)
        (out.velocity.square().mean() + out.cls_velocity.square().mean()).backward()
        results.append((out.velocity, [p.grad for p in net.parameters()]))
    (a, grads_a), (b, grads_b) = results
    assert torch.equal(a, b)
    assert all((g is None and h is None) or torch.equal(g, h) for g, h in zip(grads_a, grads_b))
    explained = torch._dynamo.explain(base)(x, t, y, cls_token=cls, force_drop=torch.zeros(3, dtype=torch.bool),
                                          ids_keep=ids, path_drop=torch.tensor(drop))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_training_draws_are_generator_driven():
    net = _net().train()
    x, t, y, cls = _inputs()
    a = net(x, t, y, cls_token=cls, generator=torch.Generator().manual_seed(5))
    b = net(x, t, y, cls_token=cls, generator=torch.Generator().manual_seed(5))
    c = net(x, t, y, cls_token=cls, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a.velocity, b.velocity)
    assert not torch.allclose(a.velocity, c.velocity)


def test_gather_and_keep_ids():
    x = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    ids = torch.tensor([[4, 0], [1, 3]])
    assert torch.equal(gather_tokens(x, ids), torch.stack([x[0, [4, 0]], x[1, [1, 3]]]))
    v = torch.randn(2, 4, 5, 3)  # (B, heads, T, Dh)
    assert torch.equal(gather_tokens(v, ids, dim=2)[1, 2], v[1, 2, [1, 3]])
    keep = random_keep_ids(3, 17, 4, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (3, 4) and all(len(set(r.tolist())) == 4 for r in keep)
    assert SprintConfig().num_keep(257) == 64 and SprintConfig().num_keep(17) == 4 and SprintConfig().num_keep(2) == 1


@pytest.mark.parametrize("switch", ["sprint", "norm", "rope", "qk_norm", "value_residual"])
def test_table1_ablation_switches(switch: str):
    """Each SR-DiT Table 1 improvement can be switched off; the rest still trains."""
    cfg = tiny(**({"norm": "layernorm"} if switch == "norm" else {switch: False} if switch != "sprint" else {}))
    net = build_dit(cfg, None if switch == "sprint" else SprintConfig())
    assert isinstance(net, SprintDiT) != (switch == "sprint")
    _perturb(net)
    net.train()
    x, t, y, cls = _inputs()
    out = net(x, t, y, cls_token=cls)
    (out.velocity.square().mean() + out.cls_velocity.square().mean() + out.zs[0].square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_without_reg_token_and_errors():
    cfg = tiny(cls_token_dim=0, z_dims=())
    net = _net(cfg).train()
    x = torch.randn(2, 3, 4, 4)
    out = net(x, torch.rand(2), torch.tensor([0, 1]))
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    with pytest.raises(ValueError, match="no sparse block"):
        SprintDiT(tiny(depth=4))
    with pytest.raises(ValueError, match="cls_token"):
        _net()(x, torch.rand(2), torch.tensor([0, 1]))


def test_velocity_view_for_samplers():
    net = _net().eval()
    x, t, y, cls = _inputs()
    v, v_cls = net.velocity((x, cls), t, y)
    out = net(x, t, y, cls_token=cls)
    torch.testing.assert_close(v, out.velocity)
    torch.testing.assert_close(v_cls, out.cls_velocity)
    dense = DiT(DiTConfig(input_size=4, patch_size=2, in_channels=3, hidden_size=16, depth=1, num_heads=2))
    assert dense.velocity(torch.randn(1, 3, 4, 4), torch.rand(1), torch.tensor([0])).shape == (1, 3, 4, 4)
