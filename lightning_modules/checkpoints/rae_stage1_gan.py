"""Official RAE stage-1 GAN pieces (RAE official repository, src/disc/; reference/rae_stage1/README):

* ``rae.discriminator`` — ``DinoDiscriminator`` built by ``build_discriminator(cfg['arch'])``: the state dict
  holds the trainable heads only; the frozen DINO backbone comes from ``dino_ckpt_path`` (or an in-memory
  ``dino_state_dict``) as the official loader reads it.
* ``rae.lpips`` — the official ``LPIPS`` (taming VGG16 LPIPS): ``net.slice*`` VGG keys (re-indexed from 0 in
  each slice, or torchvision indices as in taming/lpips), ``lin{l}.model.1.weight`` heads, ``scaling_layer``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.registry import (
    OfficialCheckpointError,
    load_strict,
    register_official,
)
from speedrun_diffusion.lightning_modules.losses.lpips import (
    LPIPS,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    VGG16_CHANNELS,
    lpips_vgg16,
)
from speedrun_diffusion.lightning_modules.networks.discriminators import DINO_RECIPES, DinoDiscriminator

_ARCH_KEYS = {"dino_ckpt_path", "dino_state_dict", "ks", "norm_type", "using_spec_norm", "recipe", "key_depths"}


def rae_discriminator_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """``DinoDiscriminator`` kwargs from the official ``gan.disc`` config (``{"arch": {...}}`` or the arch dict).

    ``recipe`` is an official recipe name (``"S_8"``) or the recipe dict itself; a top-level ``recipe`` dict
    beside ``arch`` (the reference layout for run-time recipes) takes precedence over an unknown name.
    """
    arch = dict(config.get("arch", config))
    recipe = arch.get("recipe", "S_8")
    if isinstance(config.get("recipe"), Mapping):
        recipe = dict(config["recipe"])
    unknown = set(arch) - _ARCH_KEYS - {"augment"}
    if unknown:
        raise ValueError(f"unknown official discriminator arch keys: {sorted(unknown)}")
    if isinstance(recipe, str) and recipe not in DINO_RECIPES:
        raise ValueError(f"unknown DINO recipe {recipe!r}; known {sorted(DINO_RECIPES)} — pass the recipe dict")
    if arch.get("norm_type", "bn") != "bn":
        raise ValueError(f"only norm_type 'bn' (BatchNormLocal) is supported, got {arch['norm_type']!r}")
    backbone = arch.get("dino_state_dict", arch.get("dino_ckpt_path"))
    if backbone is None:
        raise ValueError("official discriminator config needs 'dino_ckpt_path' (or 'dino_state_dict')")
    return dict(
        recipe=recipe,
        kernel_size=int(arch.get("ks", 9)),
        key_depths=tuple(arch["key_depths"]) if "key_depths" in arch else None,
        backbone_checkpoint=backbone,
        spectral_norm=bool(arch.get("using_spec_norm", True)),
    )


@register_official("rae.discriminator")
def _import_rae_discriminator(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    return load_strict(DinoDiscriminator(**rae_discriminator_kwargs(config)), state_dict)


# ----------------------------------------------------------------------------------------------- LPIPS

# first torchvision ``vgg16().features`` index of each LPIPS slice
_SLICE_STARTS = {1: 0, 2: 4, 3: 9, 4: 16, 5: 23}
_SLICE_KEY = re.compile(r"^net\.slice(\d)\.(\d+)\.(weight|bias)$")


def official_lpips_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official LPIPS keys → our ``LPIPS`` (lpips-package VGG16) keys; checks the fixed input scaling.

    VGG keys re-indexed from 0 inside each slice (RAE official) are mapped back to torchvision indices;
    keys already at torchvision indices (taming / lpips) pass through.
    """
    sd = dict(state_dict)
    for name, expected in (("scaling_layer.shift", LPIPS_SHIFT), ("scaling_layer.scale", LPIPS_SCALE)):
        if name in sd:
            value = sd.pop(name).reshape(-1).float()
            if not torch.allclose(value, torch.tensor(expected), atol=1e-6):
                raise OfficialCheckpointError(f"{name} = {value.tolist()} differs from the LPIPS constant {expected}")
    slice2 = [int(m.group(2)) for k in sd if (m := _SLICE_KEY.match(k)) and m.group(1) == "2"]
    reindexed = bool(slice2) and min(slice2) < _SLICE_STARTS[2]
    out = {}
    for key, value in sd.items():
        m = _SLICE_KEY.match(key)
        lin = re.match(r"^lin(\d)\.model\.1\.weight$", key)
        if m:
            s, j, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            out[f"net.slice{s}.{j + _SLICE_STARTS[s] if reindexed else j}.{kind}"] = value
        elif lin:
            out[f"lins.{lin.group(1)}.weight"] = value
        else:
            out[key] = value
    return out


@register_official("rae.lpips")
def _import_rae_lpips(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    unknown = set(config) - {"use_dropout"}
    if unknown:
        raise ValueError(f"unknown official LPIPS kwargs: {sorted(unknown)}")
    model = LPIPS(feature_net=lpips_vgg16(pretrained=False), channels=VGG16_CHANNELS, pretrained=False)
    return load_strict(model, official_lpips_state_dict(state_dict))


__all__ = ["official_lpips_state_dict", "rae_discriminator_kwargs"]
