"""``import_official`` / ``load_official_checkpoint``: strict key matching with readable errors, wrapper
prefixes, official training-checkpoint files (``model``/``ema``/``args``) and the kind registry."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from speedrun_diffusion.lightning_modules.checkpoints import (
    OFFICIAL_IMPORTERS,
    OfficialCheckpointError,
    import_official,
    load_official_checkpoint,
    register_official,
    srdit_config_from_args,
    srdit_sit_config,
)
from speedrun_diffusion.lightning_modules.networks.sprint import SprintDiT
from tests.conftest import reference_cases
from tests.reference.srdit_common import load_srdit_case

CASES = reference_cases("srdit", "sit_forward_eval")[:1]
TINY = dict(input_size=4, patch_size=1, in_channels=2, hidden_size=32, depth=5, num_heads=2, num_classes=3,
            z_dims=[4], projector_dim=8, qk_norm=True, fused_attn=True, use_cfg=True, encoder_depth=4)


def _official_like() -> dict[str, torch.Tensor]:
    cfg, sprint = srdit_sit_config(TINY)
    return SprintDiT(cfg, sprint).state_dict()


def test_errors_list_missing_unexpected_and_shapes():
    sd = _official_like()
    sd.pop("mask_token")
    sd["blocks.0.attn.v1_lambda"] = torch.tensor(0.5)  # block 0 has no λ
    sd["fusion_proj.weight"] = torch.zeros(32, 32)
    with pytest.raises(OfficialCheckpointError) as err:
        import_official("srdit.sit", sd, TINY)
    msg = str(err.value)
    assert "missing keys (1): mask_token" in msg and "unexpected keys (1): blocks.0.attn.v1_lambda" in msg
    assert "fusion_proj.weight: official (32, 32) vs ours (32, 64)" in msg
    with pytest.raises(KeyError, match="unknown official kind"):
        import_official("srdit.nope", sd, TINY)
    with pytest.raises(ValueError, match="qk_norm"):
        srdit_sit_config({k: v for k, v in TINY.items() if k != "qk_norm"})
    with pytest.raises(ValueError, match="unknown official SiT kwargs"):
        srdit_sit_config({**TINY, "bogus": 1})


def test_ddp_prefix_and_registry():
    sd = {f"module.{k}": v for k, v in _official_like().items()}
    assert isinstance(import_official("srdit.sit", sd, TINY), SprintDiT)
    assert {"srdit.sit", "srdit.invae"} <= set(OFFICIAL_IMPORTERS)
    with pytest.raises(ValueError, match="already registered"):
        register_official("srdit.sit")(lambda sd, cfg: None)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_training_checkpoint_file(path: Path, tmp_path: Path):
    spec, data, ref = load_srdit_case(path)
    ema = ref.state_dict()
    model = {k: v + 1.0 if v.is_floating_point() else v for k, v in ema.items()}
    args = argparse.Namespace(model="SiT-B/1", resolution=256, qk_norm=True, proj_coeff=0.5)
    ckpt = tmp_path / "0010000.pt"
    torch.save({"model": model, "ema": ema, "opt": {}, "args": args, "steps": 10000}, ckpt)
    # the file's args describe the full model; the tiny test weights need their own config
    net = load_official_checkpoint(ckpt, "srdit.sit", config=spec["config"])
    torch.testing.assert_close(net.state_dict()["mask_token"], ema["mask_token"])
    raw = load_official_checkpoint(ckpt, "srdit.sit", use_ema=False, config=spec["config"])
    torch.testing.assert_close(raw.state_dict()["mask_token"], model["mask_token"])
    # without config the file's args give train.py's model: SiT-B/1 at 256 px (checked on the kwargs only)
    cfg, _ = srdit_sit_config(srdit_config_from_args(args))
    assert (cfg.depth, cfg.hidden_size, cfg.input_size, cfg.in_channels, cfg.cls_token_dim) == (12, 768, 16, 32, 768)
    st = tmp_path / "ema.safetensors"
    save_file({k: v.contiguous() for k, v in ema.items()}, str(st))
    net = load_official_checkpoint(st, "srdit.sit", config=spec["config"])
    torch.testing.assert_close(net.state_dict()["fusion_proj.weight"], ema["fusion_proj.weight"])
