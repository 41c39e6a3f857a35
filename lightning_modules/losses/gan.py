"""Adversarial loss terms of the tokenizer recipes (DESIGN: losses/ "GAN losses (+ LeCam, adaptive weight)").

* RAE stage 1 (App. E "Losses"; reference/rae_stage1/README "Stage-1 training recipe"): hinge discriminator
  loss, the linear generator loss −mean D(x̂) (the official "vanilla" g-loss), the VQGAN adaptive weight λ
  on the decoder's last layer, and the 8-bit quantisation of the discriminator-step fakes.
* SpeedDiff (supp. A.2.2, Tab. 14): LeCam regularisation (Tseng et al. 2021) with EMA anchors of the real
  and fake logits, decay 0.999, weight 0.05.

Every reduction is over *all* logits (batch × patches × heads), as the official code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["mean", "sum"]


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor, reduction: Reduction = "mean") -> Tensor:
    """½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))]) (Lim & Ye 2017; VQGAN / RAE discriminator loss). Real first."""
    return 0.5 * (_reduce(F.relu(1.0 - logits_real), reduction) + _reduce(F.relu(1.0 + logits_fake), reduction))


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor, reduction: Reduction = "mean") -> Tensor:
    """½(E[softplus(−D(x))] + E[softplus(D(x̂))]): the logistic GAN loss (Goodfellow et al. 2014). Real first."""
    return 0.5 * (_reduce(F.softplus(-logits_real), reduction) + _reduce(F.softplus(logits_fake), reduction))


def vanilla_g_loss(logits_fake: Tensor, reduction: Reduction = "mean") -> Tensor:
    """−E[D(x̂)]: the generator loss the official RAE code calls "vanilla" — linear in the logits (hinge /
    WGAN style as in VQGAN), not the non-saturating softplus (reference/rae_stage1/README item 2)."""
    return -_reduce(logits_fake, reduction)


D_LOSSES: dict[str, Callable[..., Tensor]] = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
G_LOSSES: dict[str, Callable[..., Tensor]] = {"vanilla": vanilla_g_loss}


def select_gan_losses(disc_loss: str = "hinge", gen_loss: str = "vanilla") -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(discriminator loss, generator loss) by name, as ``train_stage1.select_gan_losses`` (RAE: hinge, vanilla)."""
    if disc_loss not in D_LOSSES:
        raise ValueError(f"unknown disc_loss {disc_loss!r}; known: {sorted(D_LOSSES)}")
    if gen_loss not in G_LOSSES:
        raise ValueError(f"unknown gen_loss {gen_loss!r}; known: {sorted(G_LOSSES)}")
    return D_LOSSES[disc_loss], G_LOSSES[gen_loss]


def disc_accuracy(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Fraction of logit pairs with D(x) > D(x̂) (the official discriminator-step accuracy)."""
    return (logits_real > logits_fake).float().mean()


def quantize_fake(recon: Tensor) -> Tensor:
    """Discriminator-step fakes: recon in [0, 1] → [−1, 1], clamped and rounded to 256 levels
    (round half to even), as ``train_stage1.py`` feeds the discriminator (RAE README item 5)."""
    x = torch.clamp(recon * 2 - 1, -1.0, 1.0)
    return torch.round((x + 1) * 127.5) / 127.5 - 1


# ----------------------------------------------------------------------------------------------- adaptive weight


class AdaptiveWeight(NamedTuple):
    """λ and the two gradient norms it is made of (logged by the recipes)."""

    weight: Tensor
    rec_grad_norm: Tensor
    gan_grad_norm: Tensor


def adaptive_weight(
    rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4, eps: float = 1e-6
) -> AdaptiveWeight:
    """λ = clamp(‖∂L_rec/∂W‖ / (‖∂L_G/∂W‖ + ε), 0, max_weight), detached (VQGAN eq. 7; RAE App. E eq. for λ).

    W is the decoder's last layer weight (RAE: ``decoder_pred.weight``), the norms are Frobenius norms and
    ``rec_loss`` includes LPIPS. Both gradients keep the graph (the total loss is back-propagated after).
    """
    if not last_layer.requires_grad:
        raise ValueError("adaptive_weight: last_layer does not require grad")
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    rec_norm, gan_norm = torch.linalg.vector_norm(rec_grad), torch.linalg.vector_norm(gan_grad)
    weight = torch.clamp(rec_norm / (gan_norm + eps), 0.0, max_weight).detach()
    return AdaptiveWeight(weight, rec_norm.detach(), gan_norm.detach())


# ----------------------------------------------------------------------------------------------- LeCam


def lecam_regularization(logits_real: Tensor, logits_fake: Tensor, anchor_real: Tensor | float,
                         anchor_fake: Tensor | float) -> Tensor:
    """R_LC = E[relu(D(x) − α_F)²] + E[relu(α_R − D(x̂))²] (Tseng et al. 2021, eq. 3 in the one-sided form
    of the authors' code): real logits are pulled down towards the fake anchor, fake logits up towards the
    real anchor, only where they overshoot it."""
    return F.relu(logits_real - anchor_fake).square().mean() + F.relu(anchor_real - logits_fake).square().mean()


class LeCamRegularizer(nn.Module):
    """LeCam regulariser with its EMA anchors α_R, α_F as buffers, so they checkpoint (SpeedDiff Tab. 14:
    decay 0.999, weight 0.05 applied by the caller).

    ``forward(logits_real, logits_fake)`` (discriminator step, train mode) first updates the anchors with the
    batch means of the detached logits, α ← decay·α + (1 − decay)·mean, then returns R_LC with the updated
    anchors — the order of the LeCam authors' code. With ``zero_debias`` the anchors are the bias-corrected
    averages α/(1 − decay^t) (their TF code), so early anchors are not pulled towards the zero start.
    In eval mode no update happens. Under data parallelism the batch means are averaged over the ranks first
    (equal per-rank batches: the global batch mean), so every rank holds the same anchors — those of a single
    process on the global batch — and a checkpoint's copy resumes every rank exactly.
    """

    ema_real: Tensor
    ema_fake: Tensor
    num_updates: Tensor

    def __init__(self, decay: float = 0.999, zero_debias: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.zero_debias = zero_debias
        self.register_buffer("ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_fake", torch.zeros((), dtype=torch.float32))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        """α_R, α_F ← decay·α + (1 − decay)·batch mean of the logits — only when both means are finite (on every
        rank: the means are averaged first): a NaN batch would stay in the anchors, and in every checkpoint, for good.
        Decided on the device (no host sync)."""
        means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(means)
            means /= torch.distributed.get_world_size()
        finite = torch.isfinite(means).all()
        self.ema_real.copy_(torch.where(finite, self.ema_real.lerp(means[0], 1.0 - self.decay), self.ema_real))
        self.ema_fake.copy_(torch.where(finite, self.ema_fake.lerp(means[1], 1.0 - self.decay), self.ema_fake))
        self.num_updates += finite.long()

    def anchors(self) -> tuple[Tensor, Tensor]:
        """(α_R, α_F), bias-corrected if ``zero_debias`` and at least one update happened."""
        if not self.zero_debias or int(self.num_updates) == 0:
            return self.ema_real, self.ema_fake
        correction = 1.0 - self.decay ** int(self.num_updates)
        return self.ema_real / correction, self.ema_fake / correction

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        if self.training:
            self.update(logits_real, logits_fake)
        anchor_real, anchor_fake = self.anchors()
        return lecam_regularization(logits_real, logits_fake, anchor_real.to(logits_real.dtype),
                                    anchor_fake.to(logits_fake.dtype))

    def extra_repr(self) -> str:
        return f"decay={self.decay}, zero_debias={self.zero_debias}"


@dataclass
class GANPhase:
    """Which terms of a tokenizer loss are switched on (RAE App. E: LPIPS from epoch 0, discriminator
    from epoch 6, adversarial generator loss from epoch 8; SpeedDiff A.2.2: everything from step 0).

    A recipe owns one as ``self.gan_phase`` and reads it in its training step; ``callbacks.GANWarmup``
    flips the flags at the configured epochs/steps. All on by default, so a recipe without the
    callback trains the full loss.
    """

    lpips: bool = True
    disc: bool = True
    adversarial: bool = True


__all__ = [
    "AdaptiveWeight",
    "GANPhase",
    "D_LOSSES",
    "G_LOSSES",
    "LeCamRegularizer",
    "adaptive_weight",
    "disc_accuracy",
    "hinge_d_loss",
    "lecam_regularization",
    "quantize_fake",
    "select_gan_losses",
    "vanilla_d_loss",
    "vanilla_g_loss",
]
