"""Official SR-DiT checkpoints: ``srdit.sit`` (``models/sit.py`` ``SiT`` with SPRINT, REG, REPA → ``SprintDiT``)
and ``srdit.invae`` (``models/invae.py`` ``AutoencoderKL`` VAE_F16D32 → ``INVAE``); reference/srdit/README."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.loading import load_official_checkpoint
from speedrun_diffusion.lightning_modules.checkpoints.registry import (
    OfficialCheckpointError,
    load_strict,
    register_official,
)
from speedrun_diffusion.lightning_modules.networks.dit import DIT_SIZES, DiTConfig
from speedrun_diffusion.lightning_modules.networks.invae import INVAE, INVAEConfig
from speedrun_diffusion.lightning_modules.networks.sprint import SprintConfig, SprintDiT


def srdit_config_from_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """Official SiT kwargs as train.py builds them from its ``args`` (``--model``, ``--resolution``, …)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {
        "model": a.get("model", "SiT-B/1"),
        "input_size": int(a.get("resolution", 256)) // 16,  # INVAE f16
        "in_channels": 32,
        "num_classes": int(a.get("num_classes", 1000)),
        "z_dims": [768],  # DINOv2 ViT-B/14 (--enc-type dinov2-vit-b)
        "qk_norm": bool(a.get("qk_norm", True)),
        "use_cfg": True,
        "fused_attn": True,
    }


def _sit_config_from_file(file: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SiT kwargs of an official training checkpoint (its ``args``), or None for a bare state dict."""
    args = file.get("args")
    return None if args is None else srdit_config_from_args(args)



# official SiT kwargs that are accepted and have no effect (README "Where code and paper differ")
_SIT_UNUSED = {"use_cfg", "fused_attn", "path_type", "encoder_depth", "cls_token_dim", "decoder_hidden_size"}
_SIT_DEFAULTS: dict[str, Any] = dict(
    input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0,
    class_dropout_prob=0.1, num_classes=1000, z_dims=(768,), projector_dim=2048,
)


def srdit_sit_config(config: Mapping[str, Any]) -> tuple[DiTConfig, SprintConfig]:
    """(DiTConfig, SprintConfig) of the official SR-DiT ``SiT(**config)``.

    ``config`` holds the official constructor kwargs; a ``model`` entry ("SiT-B/1", train.py's
    ``--model``) fills depth, width, heads and patch like the official ``SiT_models`` factory. The
    official network always has the REG token (width z_dims[0]), weightless RMSNorm blocks, 2-D RoPE,
    value residual and the fixed 2 / depth − 4 / 2 SPRINT split; ``qk_norm`` is required (the official
    constructor raises KeyError without it). ``encoder_depth`` is ignored: REPA reads the SPRINT encoder.
    """
    kw = dict(config)
    model = kw.pop("model", None)
    if model is not None:
        family, _, size_patch = str(model).partition("-")
        size, _, patch = size_patch.partition("/")
        if family != "SiT" or size not in DIT_SIZES or not patch.isdigit():
            raise ValueError(f"unknown official model {model!r}; expected e.g. 'SiT-B/1'")
        depth, hidden, heads = DIT_SIZES[size]
        kw = {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": int(patch), **kw}
    if "qk_norm" not in kw:
        raise ValueError("official SR-DiT SiT config needs 'qk_norm' (the official constructor requires it)")
    unknown = set(kw) - set(_SIT_DEFAULTS) - _SIT_UNUSED - {"qk_norm"}
    if unknown:
        raise ValueError(f"unknown official SiT kwargs: {sorted(unknown)}")
    full = {**_SIT_DEFAULTS, **kw}
    if full.get("decoder_hidden_size", full["hidden_size"]) != full["hidden_size"]:
        raise ValueError("decoder_hidden_size must equal hidden_size (official final-layer width)")
    z_dims = tuple(int(z) for z in full["z_dims"])
    if not z_dims:
        raise ValueError("official SR-DiT needs z_dims: z_dims[0] is the REG cls-token width")
    sprint = SprintConfig()
    cfg = DiTConfig(
        input_size=int(full["input_size"]),
        patch_size=int(full["patch_size"]),
        in_channels=int(full["in_channels"]),
        hidden_size=int(full["hidden_size"]),
        depth=int(full["depth"]),
        num_heads=int(full["num_heads"]),
        mlp_ratio=float(full["mlp_ratio"]),
        num_classes=int(full["num_classes"]),
        class_dropout_prob=float(full["class_dropout_prob"]),
        norm="rmsnorm",
        qk_norm=bool(full["qk_norm"]),
        rope=True,
        value_residual=True,
        cls_token_dim=z_dims[0],  # official: cls_token_dim is overridden by z_dims[0]
        z_dims=z_dims,
        projector_dim=int(full["projector_dim"]),
        repa_depth=sprint.num_encoder_blocks,  # where the projector actually reads (SPRINT encoder output)
    )
    return cfg, sprint


@register_official("srdit.sit", config_from_file=_sit_config_from_file)
def _import_srdit_sit(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    cfg, sprint = srdit_sit_config(config)
    if cfg.class_dropout_prob <= 0:
        raise OfficialCheckpointError("class_dropout_prob 0 (no null-label row) is not supported")
    return load_strict(SprintDiT(cfg, sprint), state_dict)


# ----------------------------------------------------------------------------------------------- SR-DiT INVAE

_INVAE_KEYS = {"embed_dim", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "in_channels",
               "out_ch", "dropout", "z_channels", "double_z", "resamp_with_conv", "use_variational"}


def srdit_invae_config(config: Mapping[str, Any]) -> INVAEConfig:
    """INVAEConfig of the official ``AutoencoderKL``: flat kwargs, or the reference layout
    ``{"autoencoder": {embed_dim, ch_mult, use_variational}, "encoder_decoder_kwargs": {...}}``."""
    kw = {**config.get("autoencoder", {}), **config.get("encoder_decoder_kwargs", {})}
    kw.update({k: v for k, v in config.items() if k not in ("autoencoder", "encoder_decoder_kwargs")})
    unknown = set(kw) - _INVAE_KEYS
    if unknown:
        raise ValueError(f"unknown official AutoencoderKL kwargs: {sorted(unknown)}")
    if not kw.pop("use_variational", True) or not kw.pop("double_z", True) or not kw.pop("resamp_with_conv", True):
        raise NotImplementedError("only the variational, double_z, conv-resampling AutoencoderKL (VAE_F16D32) is supported")
    z = kw.pop("z_channels", None)
    if z is not None and "embed_dim" in kw and int(z) != int(kw["embed_dim"]):
        raise NotImplementedError("z_channels must equal embed_dim (as AutoencoderKL builds it)")
    if z is not None:
        kw.setdefault("embed_dim", z)
    for key in ("ch_mult", "attn_resolutions"):
        if key in kw:
            kw[key] = tuple(int(v) for v in kw[key])
    return INVAEConfig(**kw)


@register_official("srdit.invae", config_from_file=lambda _file: {})  # VAE_F16D32 defaults
def _import_srdit_invae(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    return load_strict(INVAE(srdit_invae_config(config)), state_dict)


def load_invae_weights(tokenizer: nn.Module | None, path: str) -> None:
    """Load an official INVAE file into ``tokenizer`` with strict keys (reference/srdit/README "INVAE")."""
    if tokenizer is None:
        raise ValueError("tokenizer_weights given but no tokenizer: set model.init_args.tokenizer (an INVAE)")
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"tokenizer_weights: INVAE weights not found at {path!r} (a local e2e-invae file)")
    cfg = getattr(tokenizer, "cfg", None)
    config = {} if cfg is None else {k: getattr(cfg, k) for k in sorted(_INVAE_KEYS) if hasattr(cfg, k)}
    loaded = load_official_checkpoint(Path(path).expanduser(), "srdit.invae", config=config)
    tokenizer.load_state_dict(loaded.state_dict(), strict=True)
