"""DDT head and DiT^DH (RAE Sec. 5): shapes, zero output at init, per-token conditioning, the Sec. 4.1 width
rule, presets (Tables 13 and 16), LightningDiT options of the DiT family, and full-size parameter counts on
the meta device against reference/rae_stage2/param_counts.json (the official counting)."""
from __future__ import annotations

import json

import pytest
import torch

from speedrun_diffusion.lightning_modules.checkpoints.rae_stage2 import rae_ditdh_config, rae_lightningdit_config
from speedrun_diffusion.lightning_modules.diffusion.rae_flow import RAETransport
from speedrun_diffusion.lightning_modules.losses.rae_transport import rae_transport_loss
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDT_HEAD_WIDTHS, DDTHead, DDTHeadConfig
from speedrun_diffusion.lightning_modules.networks.dit import (
    DIT_SIZES,
    DiT,
    count_parameters,
    lightningdit_preset,
    official_parameter_count,
)
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH, DiTDHConfig, ditdh_preset
from tests.conftest import REFERENCE_DIR

COUNTS_PATH = REFERENCE_DIR / "rae_stage2" / "param_counts.json"
COUNTS = json.loads(COUNTS_PATH.read_text()) if COUNTS_PATH.exists() else {}
DITDH_ENTRIES = COUNTS.get("entries", [])
LIGHTNING_ENTRIES = COUNTS.get("reference_not_in_configs", [])


def tiny(head_width: int = 48, head_depth: int = 2, check_width: bool = True) -> DiTDHConfig:
    """A 4 × 4 × 16 latent, 32-wide 2-block backbone, 48-wide head (head_dim 24 in both)."""
    kw = dict(input_size=4, in_channels=16, depth=2, hidden_size=32, num_heads=2, num_classes=5)
    backbone = lightningdit_preset("LightningDiT-S/1", check_width=False, **kw)
    return DiTDHConfig(backbone, DDTHeadConfig(head_width, head_depth, 2), check_width)


def _perturb(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny ops: thread hand-offs only cost time on a shared machine


def test_shapes_zero_init_and_backward():
    net = DiTDH(tiny())
    x, t, y = torch.randn(3, 16, 4, 4), torch.rand(3), torch.tensor([0, 4, 5])
    out = net(x, t, y)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero adaLN + zero output Linear (official init)
    _perturb(net)
    out = net(x, t, y)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.t_embedder.W.grad is None and "t_embedder.W" in net.state_dict()  # frozen Fourier W


def test_head_is_conditioned_per_token_on_the_backbone():
    cfg = tiny()
    head = DDTHead(cfg.head, cfg.backbone, cond_dim=cfg.backbone.hidden_size)
    _perturb(head)
    x, t_emb = torch.randn(2, 16, 4, 4), torch.randn(2, 32)
    z = torch.randn(2, 16, 32)
    base = head(x, z, t_emb)
    z2 = z.clone()
    z2[:, 5] += 1.0  # change the condition of one token only
    changed = (head(x, z2, t_emb) - base).abs().flatten(2).amax(1)  # (B, tokens)
    assert changed[:, 5].min() > 0
    # the head has no APE and sees the same x as the backbone; s_projector is a Linear when widths differ
    assert isinstance(head.s_projector, torch.nn.Linear)
    same = DDTHead(DDTHeadConfig(32, 1, 2), cfg.backbone, cond_dim=32)
    assert isinstance(same.s_projector, torch.nn.Identity)


def test_label_dropout_and_generator_order():
    net = DiTDH(tiny())
    _perturb(net)
    x, t, y = torch.randn(2, 16, 4, 4), torch.rand(2), torch.tensor([1, 2])
    net.eval()
    null = net(x, t, torch.full_like(y, 5))
    forced = net(x, t, y, force_drop=torch.tensor([True, True]))
    torch.testing.assert_close(forced, null)
    net.train()
    draws = torch.Generator().manual_seed(3)
    expected = torch.rand(2, generator=torch.Generator().manual_seed(3)) < 0.1
    torch.testing.assert_close(net(x, t, y, generator=draws), net(x, t, y, force_drop=expected))


def test_width_rule_of_sec_4_1():
    with pytest.raises(ValueError, match="token dimension"):
        tiny(head_width=8)  # 8 < 16 channels per token: a config error
    with pytest.raises(ValueError, match="token dimension"):
        ditdh_preset("DiTDH-XL", head="B", in_channels=1024)  # DINOv2-L tokens, 768-wide head
    with pytest.raises(ValueError, match="token dimension"):
        lightningdit_preset("LightningDiT-S/1")  # 384 < 768: the DiT-S failure of RAE Table 3
    # the backbone may be narrower than the tokens when the head is wide enough (DiT^DH-S)
    assert ditdh_preset("DiTDH-S").backbone.hidden_size == 384
    DiTDH(tiny(head_width=8, check_width=False))  # opt-out, as the importer does for any official checkpoint


def test_presets_tables_13_and_16():
    for size, (depth, hidden, heads) in DIT_SIZES.items():
        cfg = ditdh_preset(f"DiTDH-{size}")
        b = cfg.backbone
        assert (b.depth, b.hidden_size, b.num_heads, b.patch_size, b.in_channels, b.input_size) == (
            depth, hidden, heads, 1, 768, 16)
        assert (b.time_embed, b.norm, b.norm_weight, b.mlp, b.rope, b.pos_embed) == (
            "fourier", "rmsnorm", True, "swiglu", True, True)
        assert cfg.head == DDTHeadConfig(2048, 2, 16)
    assert [ditdh_preset("DiTDH-XL", head=h).head.hidden_size for h in "BHGT"] == [768, 1536, 2048, 2688]
    assert all(w % h == 0 and (w // h) % 4 == 0 for w, h in DDT_HEAD_WIDTHS.values())  # 2-D RoPE head dims
    assert ditdh_preset("DiTDH-XL", head_depth=4).head.depth == 4
    with pytest.raises(ValueError, match="unknown preset"):
        ditdh_preset("DiTDH-Huge")
    with pytest.raises(ValueError, match="unknown DDT head width"):
        ditdh_preset("DiTDH-XL", head="Q")
    with pytest.raises(ValueError, match="expected input"):
        DiTDH(tiny())(torch.randn(1, 16, 8, 8), torch.rand(1), torch.tensor([0]))


def test_lightningdit_options_learn_sigma_and_fourier():
    cfg = lightningdit_preset("LightningDiT-S/2", input_size=8, in_channels=8, depth=1, hidden_size=64,
                              num_heads=4, num_classes=3, learn_sigma=True)
    net = DiT(cfg)
    assert net.final_layer.linear.out_features == 4 * 16  # p² · 2C, the σ half is dropped in forward
    assert {"t_embedder.W", "feat_rope.freqs_cos", "pos_embed", "blocks.0.norm1.weight"} <= set(net.state_dict())
    assert net(torch.randn(2, 8, 8, 8), torch.rand(2), torch.tensor([0, 3])).shape == (2, 8, 8, 8)
    assert official_parameter_count(net) == count_parameters(net) + net.pos_embed.numel() + net.t_embedder.W.numel()


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    net = DiTDH(tiny(head_depth=1))
    transport = RAETransport(latent_shape=(16, 4, 4), shift=1.0)
    sampler = transport.time_sampler()
    x0, y = torch.randn(4, 16, 4, 4), torch.tensor([0, 1, 2, 3])
    noise, t = torch.randn(4, 16, 4, 4), sampler(4, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = rae_transport_loss(net, x0, y, sampler, noise=noise, t=t, force_drop=torch.zeros(4, dtype=torch.bool))
        opt.zero_grad()
        loss.loss.mean().backward()
        opt.step()
        losses.append(loss.loss.mean().item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("entry", DITDH_ENTRIES, ids=lambda e: f"{e['config'].split('/')[-1]}:{e['role']}")
def test_ditdh_full_size_parameter_counts(entry: dict) -> None:
    kwargs = entry["kwargs"]
    with torch.device("meta"):
        net = DiTDH(rae_ditdh_config(kwargs))
    assert official_parameter_count(net) == entry["total"]
    assert count_parameters(net, trainable_only=True) == entry["trainable"]
    assert net.pos_embed.numel() == entry["frozen_params"]["pos_embed"]
    assert net.t_embedder.W.numel() == entry["frozen_params"]["t_embedder.W"]
    assert sum(b.numel() for n, b in net.named_buffers() if "feat_rope" in n) == entry["buffers_numel"]
    parts = {
        "encoder_blocks": net.blocks, "ddt_head_blocks": net.head.blocks, "x_embedder": net.head.x_embedder,
        "s_embedder": net.s_embedder, "s_projector": net.head.s_projector, "t_embedder": net.t_embedder,
        "y_embedder": net.y_embedder, "final_layer": net.head.final_layer,
        "enc_feat_rope": net.enc_feat_rope, "dec_feat_rope": net.head.feat_rope,
    }
    for name, count in entry["breakdown"].items():
        module = parts[name]
        frozen = module.W.numel() if name == "t_embedder" else 0
        assert count_parameters(module) + frozen == count, name
    # the same network from our preset (size by width, head G, latent from the config)
    size = next(s for s, (d, w, h) in DIT_SIZES.items() if (w, d, h) == (kwargs["hidden_size"][0], kwargs["depth"][0],
                                                                       kwargs["num_heads"][0]))
    c, hh, ww = entry["misc_latent_size"]
    with torch.device("meta"):
        preset = DiTDH(ditdh_preset(f"DiTDH-{size}", input_size=kwargs["input_size"], in_channels=c))
    assert official_parameter_count(preset) == entry["total"]
    assert (hh, ww) == (kwargs["input_size"],) * 2 or "ImageNet512/DiTDH-XL_DINOv2-B.yaml" in entry["config"]


@pytest.mark.parametrize("entry", LIGHTNING_ENTRIES, ids=lambda e: e["name"].split(" ")[0])
def test_lightningdit_full_size_parameter_counts(entry: dict) -> None:
    with torch.device("meta"):
        net = DiT(rae_lightningdit_config(entry["kwargs"]))
        preset = DiT(lightningdit_preset("LightningDiT-XL/1"))
    assert official_parameter_count(net) == official_parameter_count(preset) == entry["total"]
    assert count_parameters(net, trainable_only=True) == entry["trainable"]
    assert sum(b.numel() for n, b in net.named_buffers() if "feat_rope" in n) == entry["buffers_numel"]
