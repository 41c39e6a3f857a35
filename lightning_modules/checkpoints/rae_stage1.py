"""Official RAE stage-1 checkpoints (bytetriper/RAE, transformers 4.56 key names; reference/rae_stage1/README).

Kinds:

* ``rae.decoder`` — ``src/stage1/decoders/decoder.py`` ``GeneralDecoder`` (the released ``model.pt`` decoders)
  → ``RAEDecoder``. Config: the official decoder ``config.json`` fields (``decoder_hidden_size``, …) with
  RAE's overrides ``hidden_size`` = encoder width C and ``patch_size`` = p_d, plus ``num_patches``.
* ``rae.encoder.dinov2`` / ``rae.encoder.siglip2`` / ``rae.encoder.mae`` — the HF vision model inside
  ``Dinov2withNorm`` / ``SigLIP2wNorm`` / ``MAEwNorm`` → ``RepresentationEncoder``. Config: the HF
  ``config.json`` (SigLIP: its ``vision_config``), optional ``image_mean`` / ``image_std``.
* ``rae.rae`` — the whole ``src/stage1/rae.py`` ``RAE`` state dict (``encoder.<wrapper attr>.*``,
  ``decoder.*``) → ``RAE``. Config: ``RAE_kwargs``-like, see ``rae_from_official``.

Pretrained encoders for real use load without ``transformers``: ``load_hf_encoder(folder, family)`` reads a
local HF model folder (hub key names), ``load_timm_encoder(family)`` takes timm's copy of the same weights
(``timm.create_model(..., pretrained=True)``). ``build_rae`` assembles the RAE of the official configs from
names (pretrained encoder, released decoder, latent statistics). Nothing is downloaded in tests.

Official weights the wrappers never use are dropped on import and listed in ``IGNORED_*``: the final
encoder LayerNorm affine (cancelled, RAE App. E.1), DINOv2's ``mask_token``, SigLIP's MAP ``head``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.loading import load_official_checkpoint
from speedrun_diffusion.lightning_modules.checkpoints.registry import (
    OfficialCheckpointError,
    load_strict,
    register_official,
)
from speedrun_diffusion.lightning_modules.networks.rae import RAE
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder, RAEDecoderConfig, rae_decoder_preset
from speedrun_diffusion.lightning_modules.networks.rae_encoder import (
    ENCODER_PRESETS,
    RepresentationEncoder,
    RepresentationEncoderConfig,
    representation_encoder_preset,
)
from speedrun_diffusion.lightning_modules.weights import read_state_dict

# ---- HF ViT layer key names -------------------------------------------------------------------------
# ours → official suffix inside one layer; q/k/v are fused into our attn.qkv
_HF_LAYER_NAMES: dict[str, dict[str, str]] = {
    "vit_mae": {  # ViT-MAE encoder and the RAE decoder (GeneralDecoder)
        "q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
        "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
        "norm1": "layernorm_before", "norm2": "layernorm_after",
    },
    "dinov2": {
        "q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
        "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        "norm1": "norm1", "norm2": "norm2", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
    },
    "siglip2": {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
        "attn.proj": "self_attn.out_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        "norm1": "layer_norm1", "norm2": "layer_norm2",
    },
}
_HF_LAYER_NAMES["mae"] = _HF_LAYER_NAMES["vit_mae"]

# official keys the wrappers never use (regex on the HF vision-model key)
IGNORED_ENCODER_KEYS: dict[str, str] = {
    "dinov2": r"^(layernorm\.(weight|bias)|embeddings\.mask_token)$",
    "siglip2": r"^(post_layernorm\.(weight|bias)|head\..*|embeddings\.position_ids)$",  # old hubs saved ids
    "mae": r"^layernorm\.(weight|bias)$",
}
# attribute under which each official wrapper keeps its HF model, and the HF hub prefix of the vision model
_WRAPPER_ATTR = {"dinov2": "encoder", "siglip2": "model", "mae": "model"}
_HUB_PREFIX = {"dinov2": "", "siglip2": "vision_model.", "mae": "vit."}
OFFICIAL_ENCODER_CLASSES = {"Dinov2withNorm": "dinov2", "SigLIP2wNorm": "siglip2", "MAEwNorm": "mae"}
_GELU = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh"}


def _gelu(act: str, where: str) -> str:
    if act not in _GELU:
        raise ValueError(f"{where}: hidden_act={act!r} is not supported; expected one of {sorted(_GELU)}")
    return _GELU[act]


def convert_hf_layers(
    state_dict: Mapping[str, Tensor], src: str, dst: str, names: Mapping[str, str]
) -> dict[str, Tensor]:
    """Rename the HF layers ``{src}{i}.*`` to our ``{dst}{i}.*`` (``ViTLayer``), fusing q/k/v into ``attn.qkv``.

    Keys outside ``src`` pass through unchanged; unmatched layer keys keep their official names so that
    ``load_strict`` reports them.
    """
    out: dict[str, Tensor] = {}
    pattern = re.compile(rf"^{re.escape(src)}(\d+)\.(.+)\.(weight|bias|lambda1)$")
    inverse = {v: k for k, v in names.items()}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m is None:
            out[key] = value
            continue
        idx, module, param = m.groups()
        full = f"{module}.{param}"
        if full in inverse:  # e.g. layer_scale1.lambda1 → ls1.gamma
            out[f"{dst}{idx}.{inverse[full]}"] = value
        elif module in inverse and inverse[module] in ("q", "k", "v"):
            qkv.setdefault((idx, param), {})[inverse[module]] = value
        elif module in inverse:
            out[f"{dst}{idx}.{inverse[module]}.{param}"] = value
        else:
            out[key] = value
    for (idx, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise OfficialCheckpointError(f"layer {src}{idx}: {param} of q/k/v incomplete (have {sorted(parts)})")
        out[f"{dst}{idx}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# ---- decoder -------------------------------------------------------------------------------------------
def rae_decoder_config(config: Mapping[str, Any]) -> RAEDecoderConfig:
    """``RAEDecoderConfig`` from the official decoder ``config.json`` + RAE's overrides + ``num_patches``.

    ``hidden_size`` is the latent width C and ``patch_size`` p_d (both set by ``RAE.__init__``);
    ``num_patches`` (``GeneralDecoder`` kwarg) defaults to (image_size / patch_size)². Missing
    ``decoder_*`` fields take the official ViT-XL values; dropout must be 0 (as in every released config).
    """
    c = dict(config)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if float(c.get(key, 0.0)) != 0.0:
            raise ValueError(f"official decoder config {key}={c[key]}: only dropout 0 is implemented")
    patch = c.get("patch_size", 16)
    if not isinstance(patch, int):
        raise ValueError(f"official decoder config patch_size={patch!r}: set it to p_d (RAE's decoder_patch_size)")
    if "num_patches" in c:
        num_patches = int(c["num_patches"])
    elif "image_size" in c:
        num_patches = (int(c["image_size"]) // patch) ** 2
    else:
        raise ValueError("official decoder config needs 'num_patches' or 'image_size'")
    xl = RAEDecoderConfig()
    return RAEDecoderConfig(
        latent_dim=int(c.get("hidden_size", xl.latent_dim)),
        hidden_size=int(c.get("decoder_hidden_size", xl.hidden_size)),
        depth=int(c.get("decoder_num_hidden_layers", xl.depth)),
        num_heads=int(c.get("decoder_num_attention_heads", xl.num_heads)),
        mlp_dim=int(c.get("decoder_intermediate_size", xl.mlp_dim)),
        patch_size=patch,
        num_patches=num_patches,
        out_channels=int(c.get("num_channels", 3)),
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
        gelu_approximate=_gelu(c.get("hidden_act", "gelu"), "official decoder config"),
        qkv_bias=bool(c.get("qkv_bias", True)),
    )


_DECODER_RENAMES = {
    "decoder_embed.weight": "embed.weight", "decoder_embed.bias": "embed.bias",
    "trainable_cls_token": "cls_token", "decoder_pos_embed": "pos_embed",
    "decoder_norm.weight": "norm.weight", "decoder_norm.bias": "norm.bias",
    "decoder_pred.weight": "pred.weight", "decoder_pred.bias": "pred.bias",
}


def convert_decoder_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ``GeneralDecoder`` keys → ``RAEDecoder`` keys."""
    sd = convert_hf_layers(state_dict, "decoder_layers.", "blocks.", _HF_LAYER_NAMES["vit_mae"])
    return {_DECODER_RENAMES.get(k, k): v for k, v in sd.items()}


@register_official("rae.decoder")
def rae_decoder_from_official(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> RAEDecoder:
    """``RAEDecoder`` with the weights of an official ``GeneralDecoder`` (a released decoder ``model.pt``, or
    the ``decoder.*`` part of a whole-RAE stage-1 training checkpoint)."""
    if any(k.startswith("decoder.decoder_") for k in state_dict):
        state_dict = {k[len("decoder."):]: v for k, v in state_dict.items() if k.startswith("decoder.")}
    decoder = RAEDecoder(rae_decoder_config(config))
    return load_strict(decoder, convert_decoder_state_dict(state_dict))


# ---- encoders ------------------------------------------------------------------------------------------
def encoder_config_from_hf(
    family: str, hf: Mapping[str, Any], image_mean=None, image_std=None
) -> RepresentationEncoderConfig:
    """``RepresentationEncoderConfig`` from an HF ``config.json`` (missing fields take the HF class defaults)."""
    if family not in ENCODER_PRESETS:
        raise ValueError(f"unknown RAE encoder family {family!r}; known: {sorted(ENCODER_PRESETS)}")
    c = dict(hf.get("vision_config", hf)) if family == "siglip2" else dict(hf)
    where = f"HF {family} config"
    hidden = int(c.get("hidden_size", 768))
    patch = int(c.get("patch_size", 16))
    image = int(c.get("image_size", 224))
    if c.get("use_swiglu_ffn", False):
        raise ValueError(f"{where}: use_swiglu_ffn=True is not supported (DINOv2-B uses the GELU MLP)")
    if float(c.get("drop_path_rate", 0.0)) != 0.0:
        raise ValueError(f"{where}: drop_path_rate must be 0 for a frozen encoder")
    if family == "dinov2":
        mlp = int(hidden * float(c.get("mlp_ratio", 4)))
        eps = float(c.get("layer_norm_eps", 1e-6))
        extra = dict(
            num_register_tokens=int(c.get("num_register_tokens", 4)), layerscale=float(c.get("layerscale_value", 1.0))
        )
        act = c.get("hidden_act", "gelu")
    else:
        mlp = int(c.get("intermediate_size", 3072))
        eps = float(c.get("layer_norm_eps", 1e-6 if family == "siglip2" else 1e-12))
        extra = dict(num_register_tokens=0, layerscale=None)
        act = c.get("hidden_act", "gelu_pytorch_tanh" if family == "siglip2" else "gelu")
    preset = ENCODER_PRESETS[family]
    return RepresentationEncoderConfig(
        family=family,
        hidden_size=hidden,
        depth=int(c.get("num_hidden_layers", 12)),
        num_heads=int(c.get("num_attention_heads", 12)),
        mlp_dim=mlp,
        patch_size=patch,
        pos_grid=image // patch,
        in_channels=int(c.get("num_channels", 3)),
        layer_norm_eps=eps,
        final_norm_eps=eps,
        gelu_approximate=_gelu(act, where),
        qkv_bias=bool(c.get("qkv_bias", True)),
        image_mean=tuple(float(v) for v in (image_mean if image_mean is not None else preset.image_mean)),
        image_std=tuple(float(v) for v in (image_std if image_std is not None else preset.image_std)),
        **extra,
    )


def convert_encoder_state_dict(family: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF vision-model keys (transformers 4.x, = hub checkpoint names) → ``RepresentationEncoder`` keys."""
    ignored = re.compile(IGNORED_ENCODER_KEYS[family])
    sd = {k: v for k, v in state_dict.items() if not ignored.match(k)}
    layers = "encoder.layers." if family == "siglip2" else "encoder.layer."
    sd = convert_hf_layers(sd, layers, "blocks.", _HF_LAYER_NAMES[family])
    if family == "siglip2":
        renames = {"embeddings.patch_embedding.weight": "patch_embed.proj.weight",
                   "embeddings.patch_embedding.bias": "patch_embed.proj.bias"}
        if "embeddings.position_embedding.weight" in sd:  # nn.Embedding (G², C) → (1, G², C)
            sd["pos_embed"] = sd.pop("embeddings.position_embedding.weight").unsqueeze(0)
    else:
        renames = {"embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                   "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                   "embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_tokens",
                   "embeddings.position_embeddings": "pos_embed"}
    return {renames.get(k, k): v for k, v in sd.items()}


def _encoder_from_official(
    family: str, state_dict: Mapping[str, Tensor], config: Mapping[str, Any]
) -> RepresentationEncoder:
    cfg = dict(config)
    mean, std = cfg.pop("image_mean", None), cfg.pop("image_std", None)
    encoder = RepresentationEncoder(encoder_config_from_hf(family, cfg, mean, std))
    return load_strict(encoder, convert_encoder_state_dict(family, state_dict)).eval()


@register_official("rae.encoder.dinov2")
def rae_dinov2_from_official(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> RepresentationEncoder:
    """``Dinov2withNorm``'s ``Dinov2WithRegistersModel`` (facebook/dinov2-with-registers-base keys)."""
    return _encoder_from_official("dinov2", state_dict, config)


@register_official("rae.encoder.siglip2")
def rae_siglip2_from_official(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> RepresentationEncoder:
    """``SigLIP2wNorm``'s ``SiglipModel.vision_model`` (google/siglip2-base-patch16-256, no ``vision_model.``)."""
    return _encoder_from_official("siglip2", state_dict, config)


@register_official("rae.encoder.mae")
def rae_mae_from_official(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> RepresentationEncoder:
    """``MAEwNorm``'s ``ViTMAEForPreTraining.vit`` (facebook/vit-mae-base, no ``vit.``)."""
    return _encoder_from_official("mae", state_dict, config)


def load_hf_encoder(path: str | Path, family: str) -> RepresentationEncoder:
    """A frozen encoder from a local HF model folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), e.g. a downloaded facebook/dinov2-with-registers-base. Hub prefixes
    (``vision_model.``, ``vit.``) and the parts RAE does not use (text tower, MAE decoder) are dropped;
    ``preprocessor_config.json`` supplies image_mean / image_std if present."""
    if family not in _HUB_PREFIX:
        raise ValueError(f"unknown RAE encoder family {family!r}; known: {sorted(_HUB_PREFIX)}")
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"RAE {family} encoder: no config.json in {folder}")
    weights = [folder / "model.safetensors", folder / "pytorch_model.bin"]
    found = next((w for w in weights if w.is_file()), None)
    if found is None:
        names = ", ".join(w.name for w in weights)
        raise FileNotFoundError(f"RAE {family} encoder: no weights file ({names}) in {folder}")
    sd = read_state_dict(found, f"RAE {family} encoder weights", unwrap=())
    prefix = _HUB_PREFIX[family]
    if prefix and any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    hf = json.loads(config_file.read_text())
    processor = folder / "preprocessor_config.json"
    stats = json.loads(processor.read_text()) if processor.is_file() else {}
    cfg = {**hf, "image_mean": stats.get("image_mean"), "image_std": stats.get("image_std")}
    return _encoder_from_official(family, sd, cfg)


# timm models carrying the same pretrained weights (timm downloads them with pretrained=True)
TIMM_ENCODERS = {
    "dinov2": "vit_base_patch14_reg4_dinov2.lvd142m",
    "siglip2": "vit_base_patch16_siglip_256.v2_webli",
    "mae": "vit_base_patch16_224.mae",
}


def encoder_config_from_timm(
    family: str, model: nn.Module, image_mean=None, image_std=None
) -> RepresentationEncoderConfig:
    """``RepresentationEncoderConfig`` of a timm ``VisionTransformer`` of the given family; norms, GELU and
    position interpolation follow the HF models RAE uses (e.g. tanh GELU and eps 1e-6 for SigLIP, eps 1e-12
    for MAE), whatever timm's own choices."""
    preset = ENCODER_PRESETS[family]
    blk = model.blocks[0]
    grid = model.patch_embed.grid_size
    if grid[0] != grid[1]:
        raise ValueError(f"timm {family} model has a non-square position grid {grid}")
    has_ls = hasattr(blk.ls1, "gamma")
    return replace(
        preset,
        hidden_size=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_dim=blk.mlp.fc1.out_features,
        patch_size=model.patch_embed.patch_size[0],
        pos_grid=grid[0],
        in_channels=model.patch_embed.proj.in_channels,
        num_register_tokens=getattr(model, "num_reg_tokens", 0),
        qkv_bias=blk.attn.qkv.bias is not None,
        layerscale=1.0 if has_ls else None,
        image_mean=tuple(image_mean) if image_mean is not None else preset.image_mean,
        image_std=tuple(image_std) if image_std is not None else preset.image_std,
    )


def convert_timm_encoder_state_dict(family: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm ``VisionTransformer`` keys → ``RepresentationEncoder`` (blocks share timm's names).

    timm's DINOv2-reg folds the [CLS] position into ``cls_token`` and keeps no [CLS] row; we keep a zero
    row so the sum is unchanged. The final norm's affine and SigLIP's ``attn_pool`` are dropped (unused).
    """
    sd = {k: v for k, v in state_dict.items()
          if not re.match(r"^(norm\.(weight|bias)|fc_norm\..*|head\..*|attn_pool\..*)$", k)}
    if "reg_token" in sd:
        sd["reg_tokens"] = sd.pop("reg_token")
    if family == "dinov2" and "pos_embed" in sd:
        pos = sd["pos_embed"]
        sd["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    return sd


def load_timm_encoder(
    family: str, model_name: str | None = None, pretrained: bool = True, **timm_kwargs
) -> RepresentationEncoder:
    """The frozen encoder with the weights of a timm model (``timm.create_model(..., pretrained=True)``, which
    uses timm's download/cache; ``pretrained_cfg_overlay=dict(file=...)`` points it at a local file).
    ``model_name`` defaults to ``TIMM_ENCODERS[family]``."""
    import timm

    if family not in TIMM_ENCODERS:
        raise ValueError(f"unknown RAE encoder family {family!r}; known: {sorted(TIMM_ENCODERS)}")
    timm_kwargs.setdefault("num_classes", 0)
    model = timm.create_model(model_name or TIMM_ENCODERS[family], pretrained=pretrained, **timm_kwargs)
    encoder = RepresentationEncoder(encoder_config_from_timm(family, model))
    return load_strict(encoder, convert_timm_encoder_state_dict(family, model.state_dict())).eval()


# ---- whole RAE -----------------------------------------------------------------------------------------
def _family(config: Mapping[str, Any]) -> str:
    name = config.get("encoder_cls", "Dinov2withNorm")
    if name in OFFICIAL_ENCODER_CLASSES:
        return OFFICIAL_ENCODER_CLASSES[name]
    if name in OFFICIAL_ENCODER_CLASSES.values():
        return name
    raise ValueError(f"encoder_cls={name!r}; expected one of {sorted(OFFICIAL_ENCODER_CLASSES)}")


@register_official("rae.rae")
def rae_from_official(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> RAE:
    """Our ``RAE`` from an official ``RAE.state_dict()`` (``encoder.<attr>.*`` HF keys + ``decoder.*``).

    ``config`` keys (official ``RAE`` kwargs where they exist): ``encoder_cls`` (``Dinov2withNorm`` |
    ``SigLIP2wNorm`` | ``MAEwNorm``), ``encoder_config`` (HF config dict), ``encoder_input_size``,
    ``decoder_config`` (official decoder config fields), ``decoder_patch_size`` (p_d, default 16),
    ``noise_tau`` (0), ``eps`` (1e-5), optional ``encoder_image_mean`` / ``encoder_image_std``, and the
    latent statistics as ``latent_mean`` / ``latent_var`` tensors or ``normalization_stat_path``.
    """
    family = _family(config)
    if "encoder_config" not in config or "encoder_input_size" not in config:
        raise ValueError("rae.rae config needs 'encoder_config' (HF config dict) and 'encoder_input_size'")
    enc_cfg = encoder_config_from_hf(
        family, config["encoder_config"], config.get("encoder_image_mean"), config.get("encoder_image_std")
    )
    input_size = int(config["encoder_input_size"])
    if input_size % enc_cfg.patch_size:
        raise ValueError(f"encoder_input_size={input_size} is not a multiple of the encoder patch {enc_cfg.patch_size}")
    grid = input_size // enc_cfg.patch_size
    dec_kwargs = {
        **dict(config.get("decoder_config", {})),
        "hidden_size": enc_cfg.hidden_size,  # RAE overwrites the decoder's input width with C
        "patch_size": int(config.get("decoder_patch_size", 16)),
        "num_patches": grid * grid,
    }
    rae = RAE(
        RepresentationEncoder(enc_cfg),
        RAEDecoder(rae_decoder_config(dec_kwargs)),
        encoder_input_size=input_size,
        noise_tau=float(config.get("noise_tau", 0.0)),
        eps=float(config.get("eps", 1e-5)),
    )
    if config.get("latent_mean") is not None:
        rae.set_latent_stats(config["latent_mean"], config["latent_var"])
    elif config.get("normalization_stat_path"):
        rae.load_latent_stats(config["normalization_stat_path"])
    wrapper = f"encoder.{_WRAPPER_ATTR[family]}."
    enc_sd = {k[len(wrapper):]: v for k, v in state_dict.items() if k.startswith(wrapper)}
    dec_sd = {k[len("decoder."):]: v for k, v in state_dict.items() if k.startswith("decoder.")}
    other = {k: v for k, v in state_dict.items() if not (k.startswith(wrapper) or k.startswith("decoder."))}
    sd = {f"encoder.{k}": v for k, v in convert_encoder_state_dict(family, enc_sd).items()}
    sd.update({f"decoder.{k}": v for k, v in convert_decoder_state_dict(dec_sd).items()})
    sd.update(other)
    if rae.latent_mean is not None:  # our buffers; the official RAE keeps the statistics outside its state dict
        sd.update(latent_mean=rae.latent_mean, latent_var=rae.latent_var)
    return load_strict(rae, sd)


# ---- the RAE of the official configs, from names ----------------------------------------------------------
def build_rae(
    encoder: str = "dinov2",
    decoder: str = "XL",
    encoder_input_size: int = 224,
    decoder_patch_size: int = 16,
    noise_tau: float = 0.0,
    pretrained_encoder: str | None = None,
    decoder_path: str | Path | None = None,
    stats_path: str | Path | None = None,
    sigma_dist: str = "uniform",
    encoder_overrides: Mapping[str, Any] | None = None,
    decoder_overrides: Mapping[str, Any] | None = None,
) -> RAE:
    """An RAE from names, as the official configs build it (RAE Sec. 3; defaults: DINOv2-B + ViT-XL, 224 → 256 px).

    ``pretrained_encoder``: None (random weights, offline), ``"timm"`` (timm's pretrained copy) or a local HF
    model folder. ``decoder_path``: an official decoder ``model.pt`` (imported strictly as ``rae.decoder``).
    ``stats_path``: the official latent ``{'mean', 'var'}`` file (stage 2). Missing files raise naming the path.
    ``encoder_overrides`` / ``decoder_overrides`` replace fields of the preset configs (a custom RAE with random
    weights, e.g. the tiny CPU configs' small DINOv2-architecture encoder and decoder).
    """
    if (encoder_overrides or decoder_overrides) and (pretrained_encoder is not None or decoder_path is not None):
        raise ValueError("encoder_overrides / decoder_overrides build a custom RAE with random weights: leave "
                         "pretrained_encoder and decoder_path unset")
    if pretrained_encoder is None:
        enc = RepresentationEncoder(representation_encoder_preset(encoder, **dict(encoder_overrides or {})))
    elif pretrained_encoder == "timm":
        enc = load_timm_encoder(encoder)
    else:
        enc = load_hf_encoder(pretrained_encoder, encoder)
    grid = enc.grid_size(encoder_input_size)
    cfg = rae_decoder_preset(decoder, latent_dim=enc.cfg.hidden_size, patch_size=decoder_patch_size,
                             num_patches=grid * grid, **dict(decoder_overrides or {}))
    if decoder_path is None:
        dec = RAEDecoder(cfg)
    else:
        if not Path(decoder_path).is_file():
            raise FileNotFoundError(f"RAE decoder checkpoint not found: {decoder_path}")
        official = {"hidden_size": cfg.latent_dim, "patch_size": cfg.patch_size, "num_patches": cfg.num_patches,
                    "decoder_hidden_size": cfg.hidden_size, "decoder_num_hidden_layers": cfg.depth,
                    "decoder_num_attention_heads": cfg.num_heads, "decoder_intermediate_size": cfg.mlp_dim}
        dec = load_official_checkpoint(decoder_path, "rae.decoder", config=official)
    rae = RAE(enc, dec, encoder_input_size, noise_tau=noise_tau, sigma_dist=sigma_dist)
    if stats_path is not None:
        rae.load_latent_stats(stats_path)
    return rae
