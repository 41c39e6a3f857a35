"""Tweedie pixel reconstruction (SpeedDiff A.2.4): eq. 9 identity, loss terms, and where the gradient goes."""
from __future__ import annotations

import torch

from speedrun_diffusion.lightning_modules.losses.flow_matching import velocity_mse
from speedrun_diffusion.lightning_modules.losses.tpr import tpr_loss, tweedie_latent
from speedrun_diffusion.lightning_modules.networks.dit import DiT, refined_dit_preset
from speedrun_diffusion.lightning_modules.networks.vit_vae import ViTVAE, vit_vae_preset


def test_tweedie_recovers_z0_with_exact_velocity():
    z0, eps, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.rand(3)
    z_t = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(tweedie_latent(z_t, t, eps - z0), z0)


def test_terms_and_weights():
    x0 = torch.randn(2, 3, 4, 4)
    z_t, v, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2)
    decoder = lambda z: 2 * z  # noqa: E731
    lpips = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    out = tpr_loss(decoder, z_t, t, v, x0, lpips=lpips, mse_weight=1.0, lpips_weight=0.5)
    x_hat = 2 * (z_t - t.view(-1, 1, 1, 1) * v)
    torch.testing.assert_close(out["tpr_mse"], (x_hat - x0).square().mean())
    torch.testing.assert_close(out["tpr_lpips"], (x_hat - x0).abs().mean())
    torch.testing.assert_close(out["tpr"], out["tpr_mse"] + 0.5 * out["tpr_lpips"])
    assert set(tpr_loss(decoder, z_t, t, v, x0)) == {"tpr", "tpr_mse"}  # no LPIPS callable


def _tiny_pipeline():
    torch.manual_seed(0)
    vae = ViTVAE(vit_vae_preset("B", 256, image_size=16, patch_size=4, hidden_size=16, num_heads=2, encoder_depth=1,
                                decoder_depth=1, latent_channels=4, swiglu_multiple_of=8))
    net = DiT(refined_dit_preset("Refined-DiT-B", input_size=4, in_channels=4, hidden_size=16, depth=1, num_heads=2,
                                 num_classes=3, swiglu_multiple_of=8))
    with torch.no_grad():  # leave the zero-initialised output layer, so the velocity depends on every weight
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    z0 = vae.encode(x0)
    t, eps = torch.rand(2), torch.randn_like(z0)
    z_t = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps
    v = net(z_t, t, torch.tensor([0, 2]), force_drop=torch.zeros(2, dtype=torch.bool))
    return vae, net, x0, z0, z_t, t, eps, v


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_gradient_reaches_encoder_decoder_and_denoiser():
    vae, net, x0, _, z_t, t, _, v = _tiny_pipeline()
    lpips = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    tpr_loss(vae.decode, z_t, t, v, x0, lpips=lpips)["tpr"].backward()
    assert _has_grad(vae.encoder) and _has_grad(vae.decoder) and _has_grad(net)


def test_disabled_branch_gives_no_gradient():
    vae, net, x0, z0, z_t, t, eps, v = _tiny_pipeline()
    calls = []
    decoder = lambda z: calls.append(1) or vae.decode(z)  # noqa: E731
    assert tpr_loss(decoder, z_t, t, v, x0, mse_weight=0.0, lpips_weight=0.0) == {}
    assert not calls
    # the diffusion loss alone trains encoder and denoiser but never touches the decoder
    velocity_mse(v, eps - z0).mean().backward()
    assert _has_grad(vae.encoder) and _has_grad(net)
    assert all(p.grad is None for p in vae.decoder.parameters())
