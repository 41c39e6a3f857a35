"""INVAE (networks/invae.py): shapes, posterior arithmetic, injectable noise, blocks."""
from __future__ import annotations

import torch

from speedrun_diffusion.lightning_modules.blocks.conv_autoencoder import (
    ConvResnetBlock,
    Downsample,
    SpatialSelfAttention,
    Upsample,
)
from speedrun_diffusion.lightning_modules.networks.invae import INVAE, DiagonalGaussian, INVAEConfig

TINY = INVAEConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8)


def test_shapes_and_roundtrip_interfaces():
    vae = INVAE(TINY).eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    post, z, recon = vae(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 4, 4) and recon.shape == x.shape and TINY.downsampling_factor == 2
    torch.testing.assert_close(vae.encode(x, sample=False), post.mean)
    eps = torch.randn_like(z)
    torch.testing.assert_close(vae.encode(x, noise=eps), post.mean + post.std * eps)
    torch.testing.assert_close(vae.from_diffusion(vae.to_diffusion(z)), z)
    assert vae.scaling_factor == 0.3099
    # the attention level gets one attention block per ResNet block, others none
    assert len(vae.encoder.down[1].attn) == 1 and len(vae.encoder.down[0].attn) == 0
    assert len(vae.decoder.up[1].block) == 2 and hasattr(vae.decoder.up[1], "upsample")


def test_posterior_clamp_and_kl():
    moments = torch.cat([torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 50.0)], dim=1)
    post = DiagonalGaussian(moments)
    assert post.logvar.max() == 20.0  # clamped to [-30, 20]
    std_normal = DiagonalGaussian(torch.zeros(3, 4, 2, 2))
    torch.testing.assert_close(std_normal.kl(), torch.zeros(3))
    assert (DiagonalGaussian(torch.randn(3, 4, 2, 2)).kl() >= 0).all()


def test_blocks():
    x = torch.randn(2, 32, 6, 6)
    assert ConvResnetBlock(32, 64)(x).shape == (2, 64, 6, 6)
    assert ConvResnetBlock(32).nin_shortcut is None
    assert Downsample(32)(x).shape == (2, 32, 3, 3) and Upsample(32)(x).shape == (2, 32, 12, 12)
    attn = SpatialSelfAttention(32)
    b, c = 2, 32
    h = attn.norm(x)
    q, k, v = (m(h).reshape(b, c, -1) for m in (attn.q, attn.k, attn.v))
    w = torch.softmax(q.transpose(1, 2) @ k / c**0.5, dim=-1)  # LDM AttnBlock, written out
    expected = x + attn.proj_out((v @ w.transpose(1, 2)).reshape(b, c, 6, 6))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
