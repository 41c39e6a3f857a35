"""Official RAE stage-2 checkpoints (github.com/bytetriper/RAE, reference/rae_stage2/README):

* ``rae.ditdh`` — ``stage2/models/DDT.py`` ``DiTwDDTHead`` → ``networks.ditdh.DiTDH``;
* ``rae.lightningdit`` — ``stage2/models/lightningDiT.py`` ``LightningDiT`` → ``networks.dit.DiT``.

``config`` holds the official constructor kwargs (missing keys take the official defaults), or a config
block ``{"target": ..., "params": {...}}`` as in the official YAML files. The official checkpoints carry no
config, so ``load_official_checkpoint(path, kind, config=...)`` needs it (the ``ema`` entry is preferred).

The module also replays the official guidance helpers (``forward_with_cfg`` / ``forward_with_autoguidance``
of both networks) on top of our networks, for equivalence tests and for reproducing official samples; new
code should use ``diffusion.GuidedDenoiser`` (closed interval on t, guidance inside — the DiT^DH meaning).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.registry import load_strict, register_official
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDTHeadConfig
from speedrun_diffusion.lightning_modules.networks.dit import LIGHTNINGDIT_OPTIONS, DiT, DiTConfig
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH, DiTDHConfig

# official constructor defaults (src/stage2/models DDT.py DiTwDDTHead / lightningDiT.py LightningDiT); the
# LightningDiT default learn_sigma=False is the one reproducing reference/rae_stage2/param_counts.json
_DITDH_DEFAULTS: dict[str, Any] = dict(
    input_size=1, patch_size=1, in_channels=768, hidden_size=[1152, 2048], depth=[28, 2], num_heads=[16, 16],
    mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, use_qknorm=False, use_swiglu=True, use_rope=True,
    use_rmsnorm=True, wo_shift=False, use_pos_embed=True,
)
_LIGHTNINGDIT_DEFAULTS: dict[str, Any] = dict(
    input_size=16, patch_size=1, in_channels=768, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0,
    class_dropout_prob=0.1, num_classes=1000, learn_sigma=False, use_qknorm=False, use_swiglu=True, use_rope=True,
    use_rmsnorm=True, wo_shift=False, use_gembed=True,
)


def _official_kwargs(config: Mapping[str, Any], defaults: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Flat kwargs over the official defaults; unwraps a YAML ``{target, params}`` block; rejects unknown keys."""
    kw = dict(config.get("params", config)) if "target" in config or "params" in config else dict(config)
    unknown = set(kw) - set(defaults)
    if unknown:
        raise ValueError(f"unknown official {name} kwargs: {sorted(unknown)}")
    full = {**defaults, **kw}
    if full["wo_shift"]:
        raise NotImplementedError(f"{name}(wo_shift=True) crashes in the official code; no such checkpoint exists")
    if float(full["class_dropout_prob"]) <= 0:
        raise NotImplementedError("class_dropout_prob <= 0 (a label table without the null row) is not supported")
    return full


def _block_options(full: Mapping[str, Any]) -> dict[str, Any]:
    """DiTConfig switches of the official LightningDiT / DDT blocks (README "Shared building blocks")."""
    rms = bool(full["use_rmsnorm"])
    return {
        **LIGHTNINGDIT_OPTIONS,
        "norm": "rmsnorm" if rms else "layernorm",
        "norm_weight": rms,
        "mlp": "swiglu" if full["use_swiglu"] else "gelu",
        "qk_norm": bool(full["use_qknorm"]),
        # official q/k-norm: RMSNorm(head_dim, eps 1e-6), or LayerNorm(head_dim) with affine, eps 1e-5
        "qk_norm_type": "rmsnorm" if rms else "layernorm",
        "qk_norm_eps": 1e-6 if rms else 1e-5,
        "rope": bool(full["use_rope"]),
        "mlp_ratio": float(full["mlp_ratio"]),
        "num_classes": int(full["num_classes"]),
        "class_dropout_prob": float(full["class_dropout_prob"]),
    }


def rae_lightningdit_config(config: Mapping[str, Any]) -> DiTConfig:
    """DiTConfig of the official ``LightningDiT(**config)`` (``use_gembed`` is accepted and unused, as there)."""
    full = _official_kwargs(config, _LIGHTNINGDIT_DEFAULTS, "LightningDiT")
    return DiTConfig(
        input_size=int(full["input_size"]), patch_size=int(full["patch_size"]), in_channels=int(full["in_channels"]),
        hidden_size=int(full["hidden_size"]), depth=int(full["depth"]), num_heads=int(full["num_heads"]),
        learn_sigma=bool(full["learn_sigma"]), **_block_options(full),  # LightningDiT always has the APE
    )


def _pair(value: Any, name: str) -> tuple[int, int]:
    """(encoder, head) values of a DiT^DH list kwarg; an int means both (official ``num_heads``)."""
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    if len(values) != 2:
        raise ValueError(f"official DiTwDDTHead {name} must be [encoder, head], got {value!r}")
    return values[0], values[1]


def rae_ditdh_config(config: Mapping[str, Any]) -> DiTDHConfig:
    """DiTDHConfig of the official ``DiTwDDTHead(**config)`` (hidden_size / depth / num_heads = [encoder, head]).

    Only ``patch_size=1`` exists officially (larger patches crash there). The width check of RAE Sec. 4.1 is
    left off so that any official checkpoint loads as trained.
    """
    full = _official_kwargs(config, _DITDH_DEFAULTS, "DiTwDDTHead")
    if set(_pair(full["patch_size"], "patch_size")) != {1}:
        raise NotImplementedError("official DiTwDDTHead only works with patch_size=1 (larger patches crash there)")
    if isinstance(full["hidden_size"], int) or isinstance(full["depth"], int):
        raise ValueError("official DiTwDDTHead needs hidden_size and depth as [encoder, head] lists")
    (d_enc, d_head), (n_enc, n_head) = _pair(full["hidden_size"], "hidden_size"), _pair(full["depth"], "depth")
    h_enc, h_head = _pair(full["num_heads"], "num_heads")
    backbone = DiTConfig(
        input_size=int(full["input_size"]), patch_size=1, in_channels=int(full["in_channels"]), hidden_size=d_enc,
        depth=n_enc, num_heads=h_enc, **{**_block_options(full), "pos_embed": bool(full["use_pos_embed"])},
    )
    return DiTDHConfig(backbone=backbone, head=DDTHeadConfig(d_head, n_head, h_head), check_width=False)


def ditdh_official_renames(state_dict: Mapping[str, Tensor], num_encoder_blocks: int) -> dict[str, str]:
    """official → ours for DiTwDDTHead: head parts move under ``head.`` (blocks renumbered from 0)."""
    renames = {}
    for key in state_dict:
        first, _, rest = key.partition(".")
        if first in ("x_embedder", "s_projector", "final_layer"):
            renames[key] = f"head.{key}"
        elif first == "dec_feat_rope":
            renames[key] = f"head.feat_rope.{rest}"
        elif first == "blocks":
            index, _, tail = rest.partition(".")
            if index.isdigit() and int(index) >= num_encoder_blocks:
                renames[key] = f"head.blocks.{int(index) - num_encoder_blocks}.{tail}"
    return renames


@register_official("rae.ditdh")
def _import_rae_ditdh(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    cfg = rae_ditdh_config(config)
    net = DiTDH(cfg)
    return load_strict(net, state_dict, ditdh_official_renames(state_dict, cfg.backbone.depth))


@register_official("rae.lightningdit")
def _import_rae_lightningdit(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    return load_strict(DiT(rae_lightningdit_config(config)), state_dict)


__all__ = [
    "ditdh_official_renames",
    "rae_ditdh_config",
    "rae_lightningdit_config",
]
