"""SR-DiT loss terms (REPA, REG cls, contrastive flow) and the combined SRDiTLoss: analytic checks."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.losses.contrastive_flow import contrastive_flow_loss, contrastive_targets
from speedrun_diffusion.lightning_modules.losses.reg import cls_velocity_loss
from speedrun_diffusion.lightning_modules.losses.repa import negative_cosine, repa_loss
from speedrun_diffusion.lightning_modules.losses.srdit_loss import SRDiTLoss
from speedrun_diffusion.lightning_modules.networks.dit import DiTConfig
from speedrun_diffusion.lightning_modules.networks.sprint import SprintDiT


def test_repa_cosine_limits():
    z = torch.randn(2, 5, 8)
    torch.testing.assert_close(repa_loss([3.0 * z], [z]), torch.tensor(-1.0))  # scale-invariant
    torch.testing.assert_close(repa_loss(-z, z), torch.tensor(1.0))
    a, b = torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)
    a[..., 0], b[..., 1] = 1.0, 1.0
    assert negative_cosine(a, b).item() == 0.0
    # two encoders: the mean of the per-encoder losses
    torch.testing.assert_close(repa_loss([z, -z], [z, z]), torch.tensor(0.0))
    with pytest.raises(ValueError):
        repa_loss([z], [z, z])


def test_contrastive_flow_roll_and_permutation():
    pred, target = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    rolled = torch.stack([target[3], target[0], target[1], target[2]])  # sample i vs sample i - 1
    assert torch.equal(contrastive_targets(target), rolled)
    torch.testing.assert_close(contrastive_flow_loss(pred, target), -(pred - rolled).pow(2).mean())
    perm = torch.tensor([2, 3, 0, 1])
    torch.testing.assert_close(contrastive_flow_loss(pred, target, perm), -(pred - target[perm]).pow(2).mean())


def test_cls_velocity_loss():
    pred, target = torch.randn(3, 6), torch.randn(3, 6)
    torch.testing.assert_close(cls_velocity_loss(pred, target), (pred - target).pow(2).mean())


def _tiny_net() -> SprintDiT:
    cfg = DiTConfig(input_size=4, patch_size=1, in_channels=2, hidden_size=16, depth=5, num_heads=2, num_classes=3,
                    norm="rmsnorm", qk_norm=True, rope=True, value_residual=True, cls_token_dim=4, z_dims=(4,),
                    projector_dim=8, repa_depth=2)
    net = SprintDiT(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.train()


def test_srdit_loss_combination_and_randomness():
    net = _tiny_net()
    g = torch.Generator().manual_seed(3)
    x0, y = torch.randn(4, 2, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
    zs = torch.randn(4, 17, 4, generator=g)
    loss_fn = SRDiTLoss(shift_base=8)
    assert loss_fn.time_shift(x0) == pytest.approx(2.0)  # √(2·4·4 / 8)
    a = loss_fn(net, x0, y, [zs], zs[:, 0], generator=torch.Generator().manual_seed(7))
    b = loss_fn(net, x0, y, [zs], zs[:, 0], generator=torch.Generator().manual_seed(7))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    expected = a["velocity"] + 0.5 * a["repa"] + 0.03 * a["cls"] + 0.05 * a["cfm"]
    torch.testing.assert_close(a["loss"], expected)
    assert set(a) == {"loss", "velocity", "repa", "cls", "cfm", "cfm_cls"}
    a["loss"].backward()
    assert net.cls_projectors2.weight.grad.abs().sum() > 0 and net.projectors[0][0].weight.grad.abs().sum() > 0


def test_srdit_loss_pinned_draws():
    net = _tiny_net()
    x0, y = torch.randn(2, 2, 4, 4), torch.tensor([1, 2])
    zs = torch.randn(2, 17, 4)
    t, noise, noise_cls = torch.tensor([0.0, 1.0]), torch.randn(2, 2, 4, 4), torch.randn(2, 4)
    pinned = dict(t=t, noise=noise, noise_cls=noise_cls, force_drop=torch.tensor([False, True]),
                  ids_keep=torch.tensor([[0, 5, 3, 9], [16, 2, 1, 4]]), path_drop=False)
    out = SRDiTLoss()(net, x0, y, zs, zs[:, 0], **pinned)
    v_hat, zs_hat, cls_hat = net(torch.stack([x0[0], noise[1]]), t, y, cls_token=torch.stack([zs[0, 0], noise_cls[1]]),
                                 force_drop=pinned["force_drop"], ids_keep=pinned["ids_keep"], path_drop=False)
    torch.testing.assert_close(out["velocity"], (v_hat - (noise - x0)).pow(2).mean())
    torch.testing.assert_close(out["repa"], repa_loss(zs_hat, zs))
