"""RAE stage-1 networks through ``import_official`` against reference/rae_stage1: ``decoder_forward``,
``rae_encode_decode`` (DINOv2-reg), ``rae_siglip2``, ``rae_mae``, ``noise_augment`` and the decoder part of
``param_counts.json``. Configs, shapes and tolerances are read from each case's JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from speedrun_diffusion.lightning_modules.checkpoints import import_official
from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1 import (
    OFFICIAL_ENCODER_CLASSES,
    load_hf_encoder,
    rae_decoder_config,
)
from speedrun_diffusion.lightning_modules.networks.rae import RAE, noise_augment
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder
from tests.conftest import REFERENCE_DIR, load_case, reference_cases, with_prefix
from tests.reference.conftest import Executed

RAE_CASES = [p for case in ("rae_encode_decode", "rae_siglip2", "rae_mae") for p in reference_cases("rae_stage1", case)]
DECODER_CASES = reference_cases("rae_stage1", "decoder_forward")
NOISE_CASES = reference_cases("rae_stage1", "noise_augment")
COUNTS_PATH = REFERENCE_DIR / "rae_stage1" / "param_counts.json"
COUNTS = json.loads(COUNTS_PATH.read_text()) if COUNTS_PATH.exists() else {}



@pytest.fixture(autouse=True)
def _one_thread(_deterministic_torch):
    """Tiny tensors: one thread avoids oversubscription stalls on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_output(actual: torch.Tensor, spec: dict, data: dict, name: str) -> None:
    """|mine − ref| ≤ atol + rtol·|ref| with the case's per-output tolerance (else the safe bound)."""
    tol = spec["tolerance"].get("per_output", {}).get(name, spec["tolerance"])
    expected = data[f"output/{name}"]
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], msg=lambda m: f"{name}: {m}")


def official_decoder_config(decoder_config: dict) -> dict[str, Any]:
    """The official decoder config.json fields of a case: ``kept_from_official`` + ``overrides``
    (descriptive values such as "gelu (exact erf GELU)" reduced to their first word)."""
    fields = {**decoder_config.get("kept_from_official", {}), **decoder_config.get("overrides", {})}
    return {k: v.split()[0] if isinstance(v, str) else v for k, v in fields.items()}


def rae_config(spec: dict, data: dict) -> dict[str, Any]:
    """``rae.rae`` importer config from a case: RAE kwargs, HF encoder config, decoder fields, statistics."""
    cfg = spec["config"]
    kwargs = cfg["RAE_kwargs"]
    config = {
        "encoder_cls": kwargs["encoder_cls"],
        "encoder_config": {k: v for k, v in cfg["encoder_config"].items() if k != "class"},
        "encoder_input_size": kwargs["encoder_input_size"],
        "decoder_config": official_decoder_config(cfg["decoder_config"]),
        "decoder_patch_size": kwargs["decoder_patch_size"],
        "noise_tau": kwargs.get("noise_tau", 0.0),
        "eps": kwargs.get("eps", 1e-5),
        "encoder_image_mean": cfg["encoder_image_mean"],
        "encoder_image_std": cfg["encoder_image_std"],
    }
    if kwargs.get("normalization_stat_path"):
        config.update(latent_mean=data["input/latent_mean"], latent_var=data["input/latent_var"])
    return config


def load_rae(path: Path) -> tuple[dict, dict, RAE]:
    spec, data = load_case(path)
    rae = import_official("rae.rae", with_prefix(data, "param/"), rae_config(spec, data))
    assert isinstance(rae, RAE)
    return spec, data, rae


@pytest.mark.parametrize("path", DECODER_CASES, ids=lambda p: p.stem)
def test_decoder_forward(path: Path, executed: Executed) -> None:
    spec, data = load_case(path)
    cfg = spec["config"]
    official = official_decoder_config(cfg["decoder_config"])
    official.update({k.split()[0]: v for k, v in cfg["set_like_RAE.__init__"].items()})
    official.update(cfg["GeneralDecoder_kwargs"])
    dec = import_official("rae.decoder", with_prefix(data, "param/"), official)
    assert isinstance(dec, RAEDecoder)
    dec = executed(dec.eval())
    with torch.no_grad():
        logits, hidden = dec(data["input/tokens"], return_hidden_states=True)
        small = dec(data["input/tokens_small_grid"])
    outputs = {"logits": logits, "image": dec.unpatchify(logits),
               "logits_from_small_grid": small, "image_from_small_grid": dec.unpatchify(small)}
    outputs.update({f"hidden_states.{i}": h for i, h in enumerate(hidden)})
    expected = {k[len("output/"):] for k in data if k.startswith("output/")}
    assert expected == set(outputs), f"outputs differ: {sorted(expected ^ set(outputs))}"
    for name, value in outputs.items():
        assert_output(value, spec, data, name)


@pytest.mark.parametrize("path", RAE_CASES, ids=lambda p: p.stem)
def test_rae_encode_decode(path: Path, executed: Executed) -> None:
    spec, data, rae = load_rae(path)
    rae = executed(rae.eval())
    image = data["input/image"]
    with torch.no_grad():
        enc_in = rae.preprocess(image)
        z = rae.encode_unit_range(image)
        dec_tokens = rae.latent_to_tokens(rae.denormalize_latent(z))
        outputs = {
            "encoder_input": enc_in,
            "encoder_tokens": rae.encoder(enc_in),
            "latent": z,
            "decoder_input_tokens": dec_tokens,
            "decoder_logits": rae.decoder(dec_tokens),
            "reconstruction": rae.decode_unit_range(z),
            "decoded_random_latent": rae.decode_unit_range(data["input/random_latent"]),
        }
        if "input/image_native" in data:
            z_native = rae.encode_unit_range(data["input/image_native"])
            outputs.update(latent_native=z_native, reconstruction_native=rae.decode_unit_range(z_native))
        # the [-1, 1] tokenizer contract is the same computation
        torch.testing.assert_close(rae.decode(z), outputs["reconstruction"] * 2 - 1)
        assert_output(rae.encode(image * 2 - 1), spec, data, "latent")
    assert z.shape[1:] == rae.latent_shape
    for name, value in outputs.items():
        assert_output(value, spec, data, name)


@pytest.mark.parametrize("path", RAE_CASES, ids=lambda p: p.stem)
def test_encoder_from_local_hf_folder(path: Path, tmp_path: Path) -> None:
    """The same encoder weights saved as an HF hub folder (hub prefix, final-norm affine, config.json) load
    through ``checkpoints.rae_stage1.load_hf_encoder`` and give the reference tokens."""
    spec, data = load_case(path)
    family = OFFICIAL_ENCODER_CLASSES[spec["config"]["RAE_kwargs"]["encoder_cls"]]
    wrapper = {"dinov2": "encoder.encoder.", "siglip2": "encoder.model.", "mae": "encoder.model."}[family]
    hub_prefix, final_norm = {"dinov2": ("", "layernorm"), "siglip2": ("vision_model.", "post_layernorm"),
                              "mae": ("vit.", "layernorm")}[family]
    weights = {hub_prefix + k: v for k, v in with_prefix(data, "param/" + wrapper).items()}
    c = spec["config"]["encoder_config"]["hidden_size"]
    weights.update({f"{hub_prefix}{final_norm}.weight": torch.rand(c), f"{hub_prefix}{final_norm}.bias": torch.rand(c)})
    save_file(weights, str(tmp_path / "model.safetensors"))
    hf = {k: v for k, v in spec["config"]["encoder_config"].items() if k != "class"}
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": hf} if family == "siglip2" else hf))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": spec["config"]["encoder_image_mean"], "image_std": spec["config"]["encoder_image_std"]}))
    enc = load_hf_encoder(tmp_path, family)
    stats = {"image_mean": spec["config"]["encoder_image_mean"], "image_std": spec["config"]["encoder_image_std"]}
    kind = import_official(f"rae.encoder.{family}", with_prefix(data, "param/" + wrapper), {**hf, **stats})
    assert kind.cfg == enc.cfg
    rae = import_official("rae.rae", with_prefix(data, "param/"), rae_config(spec, data))
    x = data["input/image"]
    with torch.no_grad():
        torch.testing.assert_close(enc(rae.preprocess(x)), rae.encoder(rae.preprocess(x)), rtol=0, atol=0)
        torch.testing.assert_close(kind(rae.preprocess(x)), rae.encoder(rae.preprocess(x)), rtol=0, atol=0)
        assert_output(enc(rae.preprocess(x)), spec, data, "encoder_tokens")


@pytest.mark.parametrize("path", NOISE_CASES, ids=lambda p: p.stem)
def test_noise_augment(path: Path, executed: Executed) -> None:
    spec, data, rae = load_rae(path)
    rae = executed(rae)
    tau = spec["config"].get("noise_tau", spec["config"]["RAE_kwargs"]["noise_tau"])
    assert rae.noise_tau == tau
    noised = noise_augment(data["input/tokens"], tau, data["input/uniform_u"], data["input/gaussian_n"])
    assert_output(noised, spec, data, "noised_tokens")
    image = data["input/image"]
    rae.train()
    with torch.no_grad():
        clean = rae.encoder(rae.preprocess(image))
        u, n = data["input/uniform_u_encode"], data["input/gaussian_n_encode"]
        z = rae.encode_unit_range(image, noise_u=u, noise_n=n)
        recon = rae.decode_unit_range(z)
        rae.eval()
        z_eval = rae.encode_unit_range(image)
    outputs = {"encoder_tokens_clean": clean, "latent_noisy": z, "reconstruction_noisy": recon,
               "latent_clean_eval": z_eval}
    for name, value in outputs.items():
        assert_output(value, spec, data, name)


@pytest.mark.parametrize("name", sorted(COUNTS.get("decoders", {})))
def test_decoder_param_counts(name: str) -> None:
    ref = COUNTS["decoders"][name]
    # RAE for DINOv2-B: C = 768, 16×16 tokens, p_d = 16
    official = {**ref["config"], "hidden_size": 768, "patch_size": 16, "num_patches": 256}
    with torch.device("meta"):
        dec = RAEDecoder(rae_decoder_config(official))
    assert sum(p.numel() for p in dec.parameters()) == ref["params_total"]
    assert sum(p.numel() for p in dec.parameters() if p.requires_grad) == ref["params_trainable"]
    parts = {"decoder_embed": dec.embed, "decoder_layers": dec.blocks, "decoder_norm": dec.norm,
             "decoder_pred": dec.pred}
    for key, count in ref["params_breakdown"].items():
        part = key.split()[0]
        n = {"decoder_pos_embed": dec.pos_embed.numel(), "trainable_cls_token": dec.cls_token.numel()}.get(part)
        n = sum(p.numel() for p in parts[part].parameters()) if n is None else n
        assert n == count, key
    # multiply-adds of the linear layers for one 256×256 image (257 tokens incl. [CLS]), counted on meta
    macs = []
    def count(m: torch.nn.Linear, inputs: tuple, _out) -> None:
        macs.append(inputs[0].shape[:-1].numel() * m.in_features * m.out_features)

    hooks = [m.register_forward_hook(count) for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    with torch.device("meta"):
        dec(torch.zeros(1, 256, 768))
    for h in hooks:
        h.remove()
    assert sum(macs) == ref["MACs_linear_layers"]
