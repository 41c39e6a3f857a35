"""`SRDiT` LightningModule: losses on a batch, a few optimisation steps, sampling with each guidance mode."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.networks.invae import INVAE, INVAEConfig
from speedrun_diffusion.lightning_modules.srdit import SRDiT


class PatchTokens(nn.Module):
    """Stand-in for DINOv2: [mean token; patch tokens] of a fixed random conv, unit-normalised (frozen)."""

    def __init__(self, dim: int = 8, patch: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.proj(images).flatten(2).transpose(1, 2)
        return nn.functional.normalize(torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1), dim=-1)


def _module(**kw) -> SRDiT:
    vae = INVAE(INVAEConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8))
    args = dict(model="SiT-S/1", input_size=4, in_channels=4, num_classes=3, depth=5, hidden_size=32, num_heads=2,
                z_dim=8, projector_dim=16, shift_base=16, sampling=dict(num_steps=3), tokenizer=vae,
                target_encoder=PatchTokens(), optimizer=dict(lr=1e-3))
    return SRDiT(**{**args, **kw})


def _batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, "label": torch.tensor([0, 1, 2, 1])}


def test_losses_and_training_steps():
    module = _module()
    batch = _batch()
    losses = module.compute_losses(batch, generator=torch.Generator().manual_seed(1))
    assert set(losses) == {"loss", "velocity", "repa", "cls", "cfm", "cfm_cls"}
    assert all(torch.isfinite(v) for v in losses.values())
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=1e-3)
    frozen = [p.clone() for p in module.tokenizer.parameters()]
    fusion = module.net.fusion_proj.weight.clone()
    for step in range(3):
        opt.zero_grad()
        module.compute_losses(batch, generator=torch.Generator().manual_seed(2))["loss"].backward()
        opt.step()
    assert not torch.equal(fusion, module.net.fusion_proj.weight)  # the denoiser trains …
    assert all(torch.equal(a, b) for a, b in zip(frozen, module.tokenizer.parameters()))  # … the tokenizer not
    assert not module.tokenizer.training and not module.target_encoder.training


@pytest.mark.parametrize("mode, scale", [("cfg", 1.0), ("cfg", 2.0), ("path_drop", 2.0)])
def test_sample_images(mode: str, scale: float):
    module = _module(guidance_mode=mode, sampling=dict(num_steps=3, guidance_scale=scale))
    images = module.sample(torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1.0 and module.net.training


def test_ablation_without_sprint():
    module = _module(sprint=False, rope=False, rmsnorm=False, repa_depth=2)
    assert module.compute_losses(_batch())["loss"].isfinite()
    with pytest.raises(ValueError, match="path-drop"):
        module.sample(torch.tensor([0]), guidance_mode="path_drop", guidance_scale=2.0)


def test_tokenizer_weights_load_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    source = _module().tokenizer
    path = tmp_path / "invae.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different random init, replaced by the file's weights
    module = _module(tokenizer_weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), module.tokenizer.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        _module(tokenizer_weights=str(tmp_path / "missing.pt"))
