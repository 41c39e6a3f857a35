"""Full-size SR-DiT-B/1 (256 and 512 px) and INVAE f16d32 built on the meta device from the official kwargs
in reference/srdit/param_counts.json: parameter counts as the official code counts them, state-dict keys."""
from __future__ import annotations

import json

import pytest
import torch

from speedrun_diffusion.lightning_modules.checkpoints import srdit_invae_config, srdit_sit_config
from speedrun_diffusion.lightning_modules.networks.dit import count_parameters, official_parameter_count
from speedrun_diffusion.lightning_modules.networks.invae import INVAE
from speedrun_diffusion.lightning_modules.networks.sprint import SprintDiT
from tests.conftest import REFERENCE_DIR

PATH = REFERENCE_DIR / "srdit" / "param_counts.json"
COUNTS = json.loads(PATH.read_text()) if PATH.exists() else {}
SIT_MODELS = [k for k, v in COUNTS.items() if isinstance(v, dict) and v.get("factory", "").startswith("SiT_models")]
VAE_MODELS = [k for k, v in COUNTS.items() if isinstance(v, dict) and "AutoencoderKL" in v.get("factory", "")]


@pytest.mark.parametrize("name", SIT_MODELS)
def test_srdit_parameter_counts(name: str) -> None:
    ref = COUNTS[name]
    # the factory name + the partial kwargs train.py passes must give the same model as the full kwargs
    model = ref["factory"].split("'")[1]
    for kwargs in (ref["full_kwargs"], {"model": model, **ref["kwargs"]}):
        cfg, sprint = srdit_sit_config(kwargs)
        with torch.device("meta"):
            net = SprintDiT(cfg, sprint)
        assert official_parameter_count(net) == ref["parameters_total"]
        assert count_parameters(net, trainable_only=True) == ref["parameters_trainable"]
        assert net.pos_embed.numel() == ref["parameters_frozen"]
        assert len(net.state_dict()) == ref["state_dict_keys"]
        assert sum(b.numel() for n, b in net.named_buffers() if n.startswith("feat_rope.")) == ref["buffers_total"]
    by_module = {n: sum(p.numel() for p in m.parameters()) for n, m in net.named_children()}
    by_module.update(mask_token=net.mask_token.numel(), pos_embed=net.pos_embed.numel())
    for module, count in ref["parameters_by_top_level_module"].items():
        assert by_module[module] == count, module
    projector = sum(p.numel() for p in net.projectors.parameters())
    assert official_parameter_count(net) - projector == ref["parameters_without_projectors"]


@pytest.mark.parametrize("name", VAE_MODELS)
def test_invae_parameter_counts(name: str) -> None:
    ref = COUNTS[name]
    with torch.device("meta"):
        vae = INVAE(srdit_invae_config({**ref["kwargs"], **ref["encoder_decoder_defaults"]}))
    assert count_parameters(vae) == ref["parameters_total"]
    for part, count in ref["parameters_by_part"].items():
        assert count_parameters(getattr(vae, part)) == count, part
    assert (vae.cfg.embed_dim, ref["encoder_decoder_defaults"]["resolution"] // vae.cfg.downsampling_factor) == (
        ref["latent_shape_at_256"][0], ref["latent_shape_at_256"][1])
