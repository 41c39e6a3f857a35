"""GAN loss terms: hinge / logistic / linear losses on hand-computed logits, LeCam regulariser and its EMA
state, the VQGAN adaptive weight against gradient norms computed by hand, 8-bit fake quantisation."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.losses.gan import (
    LeCamRegularizer,
    adaptive_weight,
    disc_accuracy,
    hinge_d_loss,
    lecam_regularization,
    quantize_fake,
    select_gan_losses,
    vanilla_d_loss,
    vanilla_g_loss,
)

REAL = torch.tensor([[2.0, 0.5, -1.0]])
FAKE = torch.tensor([[-2.0, 0.0, 1.5]])


def test_hinge_d_loss_analytic() -> None:
    # relu(1 − real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    assert hinge_d_loss(REAL, FAKE, reduction="sum").item() == pytest.approx(0.5 * (2.5 + 3.5))
    # a confident discriminator (|logits| ≥ 1, right signs) has zero hinge loss
    assert hinge_d_loss(torch.full((2, 4), 3.0), torch.full((2, 4), -1.0)).item() == 0.0


def test_logistic_and_linear_losses() -> None:
    zeros = torch.zeros(2, 5)
    assert vanilla_d_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert vanilla_g_loss(FAKE).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    assert vanilla_g_loss(FAKE, reduction="sum").item() == pytest.approx(0.5)
    # linear generator loss: its gradient is −1/N for every logit (not the softplus form)
    f = FAKE.clone().requires_grad_(True)
    vanilla_g_loss(f).backward()
    torch.testing.assert_close(f.grad, torch.full_like(f, -1 / 3))
    d, g = select_gan_losses("hinge", "vanilla")
    assert d is hinge_d_loss and g is vanilla_g_loss
    with pytest.raises(ValueError, match="disc_loss"):
        select_gan_losses("wgan", "vanilla")
    with pytest.raises(ValueError, match="reduction"):
        hinge_d_loss(REAL, FAKE, reduction="max")  # type: ignore[arg-type]


def test_disc_accuracy_and_quantisation() -> None:
    assert disc_accuracy(REAL, FAKE).item() == pytest.approx(2 / 3)
    recon = torch.tensor([-0.3, 0.0, 0.5, 1.0, 1.7, 0.5 / 255 + 1e-4])
    q = quantize_fake(recon)
    # clamped to [−1, 1] and on the 256-level grid k/127.5 − 1
    assert q.min() >= -1 and q.max() <= 1
    torch.testing.assert_close(q[:2], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(q[3:5], torch.tensor([1.0, 1.0]))
    levels = (q + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels[5].round().item() == 1  # 0.5/255 + ε rounds up to the first level


def test_lecam_regularization_formula() -> None:
    real, fake = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([-3.0, 0.0, 1.0])
    anchor_real, anchor_fake = 0.4, -0.5
    # E[relu(D(x) − α_F)²] + E[relu(α_R − D(x̂))²]
    expected = ((1.0**2 + 2.5**2 + 0.0) / 3) + ((3.4**2 + 0.4**2 + 0.0) / 3)
    assert lecam_regularization(real, fake, anchor_real, anchor_fake).item() == pytest.approx(expected)
    assert lecam_regularization(real, fake, torch.tensor(anchor_real), torch.tensor(anchor_fake)).item() == pytest.approx(expected)


def test_lecam_ema_update_and_state() -> None:
    reg = LeCamRegularizer(decay=0.9, zero_debias=False)
    r1, f1 = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    r2, f2 = torch.tensor([4.0]), torch.tensor([2.0])
    reg(r1, f1)
    assert reg.ema_real.item() == pytest.approx(0.1 * 2.0)
    assert reg.ema_fake.item() == pytest.approx(0.1 * -1.0)
    out = reg(r2, f2)
    ema_r, ema_f = 0.9 * 0.2 + 0.1 * 4.0, 0.9 * -0.1 + 0.1 * 2.0
    assert reg.ema_real.item() == pytest.approx(ema_r)
    assert reg.ema_fake.item() == pytest.approx(ema_f)
    assert int(reg.num_updates) == 2
    # the regulariser uses the anchors after this step's update
    assert out.item() == pytest.approx(lecam_regularization(r2, f2, ema_r, ema_f).item())
    # eval: no update
    reg.eval()
    reg(r1, f1)
    assert reg.ema_real.item() == pytest.approx(ema_r)
    # checkpointed as buffers
    state = reg.state_dict()
    assert set(state) == {"ema_real", "ema_fake", "num_updates"}
    fresh = LeCamRegularizer(decay=0.9, zero_debias=False)
    fresh.load_state_dict(state)
    assert fresh.ema_fake.item() == pytest.approx(ema_f)
    # gradients reach the logits, not the anchors
    r = r2.clone().requires_grad_(True)
    f = f2.clone().requires_grad_(True)
    fresh(r, f).backward()
    assert r.grad is not None and f.grad is not None


def test_lecam_zero_debias() -> None:
    reg = LeCamRegularizer(decay=0.999)
    reg(torch.tensor([1.5]), torch.tensor([-0.5]))
    real_anchor, fake_anchor = reg.anchors()
    # after one update the bias-corrected anchors equal the first batch means exactly
    assert real_anchor.item() == pytest.approx(1.5)
    assert fake_anchor.item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="decay"):
        LeCamRegularizer(decay=1.0)


def test_adaptive_weight_matches_hand_gradients() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    x, target, c = torch.randn(3), torch.randn(4), torch.randn(4)
    y = w @ x
    rec = 0.5 * (y - target).square().sum()  # ∂/∂W = (y − t) xᵀ
    gan = -(c * y).sum()  # ∂/∂W = −c xᵀ
    out = adaptive_weight(rec, gan, w)
    rec_norm = (y - target).norm() * x.norm()
    gan_norm = c.norm() * x.norm()
    assert out.rec_grad_norm.item() == pytest.approx(rec_norm.item(), rel=1e-5)
    assert out.gan_grad_norm.item() == pytest.approx(gan_norm.item(), rel=1e-5)
    assert out.weight.item() == pytest.approx((rec_norm / (gan_norm + 1e-6)).item(), rel=1e-5)
    assert not out.weight.requires_grad
    # the graph is kept for the total loss
    (rec + out.weight * gan).backward()
    torch.testing.assert_close(w.grad, torch.outer(y - target - out.weight * c, x).detach())


def test_adaptive_weight_clamped() -> None:
    w = torch.nn.Parameter(torch.ones(2, 2))
    rec = (w * 3.0).sum()
    gan = (w * 1e-12).sum()
    assert adaptive_weight(rec, gan, w, max_weight=1e4).weight.item() == pytest.approx(1e4)
    assert adaptive_weight(rec, gan, w, max_weight=10.0).weight.item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="require grad"):
        adaptive_weight(rec, gan, torch.ones(2, 2))
