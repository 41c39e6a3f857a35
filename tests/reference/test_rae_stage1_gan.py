"""RAE stage-1 adversarial / perceptual pieces against reference/rae_stage1: ``discriminator``, ``diffaug``,
``gan_losses``, ``lpips``, ``adaptive_weight``, ``lr_schedule`` and the discriminator part of
``param_counts.json``. Configs, draws, shapes and tolerances are read from each case's JSON; the LPIPS VGG16
weights are regenerated from the README's numpy recipe and checked against the stored checksums."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from speedrun_diffusion.lightning_modules.blocks import patchify
from speedrun_diffusion.lightning_modules.checkpoints import OFFICIAL_IMPORTERS, import_official
from speedrun_diffusion.lightning_modules.losses.diffaug import DiffAug
from speedrun_diffusion.lightning_modules.losses.gan import (
    adaptive_weight,
    disc_accuracy,
    hinge_d_loss,
    quantize_fake,
    select_gan_losses,
    vanilla_d_loss,
    vanilla_g_loss,
)
from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS
from speedrun_diffusion.lightning_modules.networks.discriminators import DINO_RECIPES, DinoDiscriminator
from speedrun_diffusion.lightning_modules.optimization import warmup_schedule_factor
from tests.conftest import REFERENCE_DIR, load_case, reference_cases, with_prefix
from tests.reference.conftest import Executed

AREA = "rae_stage1"
COUNTS_PATH = REFERENCE_DIR / AREA / "param_counts.json"
COUNTS = json.loads(COUNTS_PATH.read_text()) if COUNTS_PATH.exists() else {}
# torchvision vgg16().features conv layers: (feature index, in, out); LPIPS slices start at 0, 4, 9, 16, 23
VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
               (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
SLICE_STARTS = (0, 4, 9, 16, 23)


def ids(p: Path) -> str:
    return p.stem


def tolerance(spec: dict, name: str) -> dict:
    return spec["tolerance"].get("per_output", {}).get(name, spec["tolerance"])


def assert_output(actual: torch.Tensor, spec: dict, data: dict, name: str) -> None:
    """|mine − ref| ≤ atol + rtol·|ref| with the case's per-output tolerance (else the safe bound)."""
    tol = tolerance(spec, name)
    expected = data[f"output/{name}"]
    actual = actual.detach().reshape(expected.shape) if actual.numel() == expected.numel() else actual
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected, atol=tol["atol"], rtol=tol["rtol"],
                               msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------- builders


@functools.lru_cache(maxsize=2)
def official_vgg(seed: int) -> tuple[tuple[str, torch.Tensor], ...]:
    """README recipe: per conv of vgg16().features in order W ~ N·sqrt(2/(in·9)), then b ~ N·0.01 (float64 →
    float32), under the official LPIPS keys (re-indexed from 0 inside each slice)."""
    rng = np.random.default_rng(seed)
    out = []
    for index, cin, cout in VGG16_CONVS:
        w = rng.standard_normal((cout, cin, 3, 3)) * math.sqrt(2 / (cin * 9))
        b = rng.standard_normal(cout) * 0.01
        s = max(i for i, start in enumerate(SLICE_STARTS) if index >= start)
        prefix = f"net.slice{s + 1}.{index - SLICE_STARTS[s]}"
        out += [(f"{prefix}.weight", torch.from_numpy(w).float()), (f"{prefix}.bias", torch.from_numpy(b).float())]
    return tuple(out)


def check_vgg_checksums(vgg: dict[str, torch.Tensor], checksums: dict[str, Any]) -> None:
    assert set(vgg) == set(checksums), "regenerated VGG keys differ from the case's vgg_checksums"
    for key, ref in checksums.items():
        t = vgg[key].double()
        assert list(t.shape) == ref["shape"], key
        assert abs(t.sum().item() - ref["sum"]) <= 1e-6 * max(1.0, ref["abs_sum"]), key
        assert abs(t.abs().sum().item() - ref["abs_sum"]) <= 1e-6 * ref["abs_sum"], key


def build_lpips(data: dict, param_prefix: str, vgg_seed: int, checksums: dict | None) -> LPIPS:
    vgg = dict(official_vgg(vgg_seed))
    if checksums is not None:
        check_vgg_checksums(vgg, checksums)
    model = import_official("rae.lpips", {**vgg, **with_prefix(data, param_prefix)}, {})
    assert isinstance(model, LPIPS)
    return model


def build_discriminator(disc_config: dict, data: dict, param_prefix: str, tmp_path: Path) -> DinoDiscriminator:
    """``rae.discriminator`` from the case: the official arch with ``dino_ckpt_path`` pointing at the stored
    ``ckpt/dino/*`` tensors saved with ``torch.save`` (as the official loader reads them)."""
    ckpt = tmp_path / "dino.pth"
    torch.save(with_prefix(data, "ckpt/dino/"), ckpt)
    arch = {**disc_config["arch"], "dino_ckpt_path": str(ckpt)}
    disc = import_official("rae.discriminator", with_prefix(data, param_prefix),
                           {"arch": arch, "recipe": disc_config["recipe"]})
    assert isinstance(disc, DinoDiscriminator)
    return disc


def uv_state(disc: DinoDiscriminator) -> dict[str, torch.Tensor]:
    return {k: v for k, v in disc.state_dict().items() if k.endswith(("weight_u", "weight_v"))}


# ----------------------------------------------------------------------------------------------- cases


@pytest.mark.parametrize("path", reference_cases(AREA, "discriminator"), ids=ids)
def test_discriminator(path: Path, tmp_path: Path) -> None:
    spec, data = load_case(path)
    disc = build_discriminator(spec["config"], data, "param/", tmp_path).eval()
    x, x_real = data["input/x"], data["input/x_real"]
    with torch.no_grad():
        for i, act in enumerate(disc.backbone(x)):
            assert_output(act, spec, data, f"backbone_activation.{i}")
        assert_output(disc(x), spec, data, "logits_eval")
        disc.train()  # official D(fake, real): two forwards, each after one power iteration
        assert_output(disc(x), spec, data, "logits_fake_train")
        assert_output(disc(x_real), spec, data, "logits_real_train")
    state = uv_state(disc)
    names = [k for k in data if k.startswith("output/state_after_train_forward/")]
    assert len(names) == len(state)
    for name in names:
        assert_output(state[name.split("/", 2)[2]], spec, data, name[len("output/"):])


@pytest.mark.skipif(not COUNTS.get("discriminator"), reason="no discriminator entry in param_counts.json")
def test_discriminator_param_counts() -> None:
    ref = COUNTS["discriminator"]
    with torch.device("meta"):
        disc = DinoDiscriminator("S_8", kernel_size=9)
    assert DINO_RECIPES["S_8"]["key_depths"] == (2, 5, 8, 11)
    assert sum(p.numel() for p in disc.parameters() if p.requires_grad) == ref["trainable_heads_params"]
    assert sum(p.numel() for p in disc.heads[0].parameters()) == ref["trainable_heads_params_per_head"]
    assert sum(v.numel() for v in uv_state(disc).values()) == ref["spectral_norm_u_v_buffer_elements_total"]
    assert sum(p.numel() for p in disc.backbone.parameters()) == ref["frozen_backbone_params"]
    assert not any(k.startswith("_backbone") or "blocks." in k for k in disc.state_dict())


@pytest.mark.parametrize("path", reference_cases(AREA, "diffaug"), ids=ids)
def test_diffaug(path: Path) -> None:
    spec, data = load_case(path)
    x = data["input/x"]
    for name, variant in spec["verification"]["variants"].items():
        aug = DiffAug(prob=variant["prob"], cutout=variant["cutout"])
        flags, rand = data[f"input/rand_flags_{name}"], data[f"input/rand01_{name}"]
        # the official draw order replays from the same seed: flags (3,), then r (7, B, 1, 1)
        torch.manual_seed(variant["torch_manual_seed"])
        drawn_flags, drawn_rand = aug.draw(x.shape[0])
        torch.testing.assert_close(drawn_flags, flags, atol=0, rtol=0)
        torch.testing.assert_close(drawn_rand, rand, atol=0, rtol=0)
        assert [bool(f <= variant["prob"]) for f in flags] == variant["flags_trans_color_cut"]
        out = aug(x, flags, rand)
        assert out.dtype == torch.float32
        assert_output(out, spec, data, f"aug_{name}")
        # the official code computes in float32 whatever the input dtype
        torch.testing.assert_close(aug(x.double(), flags, rand), out, atol=0, rtol=0)


@pytest.mark.parametrize("path", reference_cases(AREA, "gan_losses"), ids=ids)
def test_gan_losses(path: Path) -> None:
    spec, data = load_case(path)
    real, fake = data["input/logits_real"], data["input/logits_fake"]
    official = spec["config"]["official"]
    d_loss, g_loss = select_gan_losses(official["disc_loss"], official["gen_loss"])
    outputs = {
        "hinge_d_loss": hinge_d_loss(real, fake),
        "vanilla_d_loss": vanilla_d_loss(real, fake),
        "vanilla_g_loss": vanilla_g_loss(fake),
        "hinge_d_loss_sum": hinge_d_loss(real, fake, reduction="sum"),
        "vanilla_g_loss_sum": vanilla_g_loss(fake, reduction="sum"),
        "official_d_loss": d_loss(real, fake),
        "official_g_loss": g_loss(fake),
        "disc_accuracy": disc_accuracy(real, fake),
        "fake_discretized": quantize_fake(data["input/recon"]),
    }
    for name, value in outputs.items():
        assert_output(value, spec, data, name)


@pytest.mark.parametrize("path", reference_cases(AREA, "lpips"), ids=ids)
def test_lpips(path: Path, executed: Executed) -> None:
    spec, data = load_case(path)
    model = build_lpips(data, "param/", spec["config"]["vgg_seed"], spec["verification"].get("vgg_checksums"))
    model = executed(model)
    x, y = data["input/x"], data["input/y"]
    with torch.no_grad():
        layers = model.layer_distances(x, y)
        features = model.features(x)
        assert_output(model(x, y), spec, data, "lpips_mean")
        assert_output(model(x, y, reduction="none"), spec, data, "lpips_none")
    for i, (term, feat) in enumerate(zip(layers, features)):
        assert_output(term, spec, data, f"layer{i}_contribution")
        ref = data[f"output/feature{i}_input"]
        assert_output(feat[:, : ref.shape[1]], spec, data, f"feature{i}_input")


@pytest.mark.parametrize("path", reference_cases(AREA, "lr_schedule"), ids=ids)
def test_lr_schedule(path: Path) -> None:
    """The official stage-1 LambdaLR is ``warmup_schedule_factor`` with warm-up and cosine end in steps."""
    spec, data = load_case(path)
    cfg = spec["config"]
    sched, spe = cfg["training_cfg"]["scheduler"], cfg["steps_per_epoch"]
    assert sched["type"] == "cosine" and sched["warmup_from_zero"], "only the official cosine-from-zero schedule"
    warmup, end = int(sched["warmup_epochs"] * spe), int(sched["decay_end_epoch"] * spe)
    ratio = sched["final_lr"] / sched["base_lr"]
    lrs = [sched["base_lr"] * warmup_schedule_factor(s, warmup, end, "cosine", ratio) for s in range(cfg["n_steps"])]
    # the real optimizer path: LambdaLR stepped once per optimizer step
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=sched["base_lr"])
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_schedule_factor(s, warmup, end, "cosine", ratio))
    seen = []
    for _ in range(cfg["n_steps"]):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr_sched.step()
    assert seen == pytest.approx(lrs, rel=1e-12)
    assert_output(torch.tensor(lrs, dtype=torch.float64), spec, data, "lr_per_step")


# ----------------------------------------------------------------------------------------------- adaptive weight

AW_CASES = reference_cases(AREA, "adaptive_weight")


def generator_losses(recon: torch.Tensor, images: torch.Tensor, lpips: LPIPS, disc: DinoDiscriminator,
                     data: dict, perceptual_weight: float) -> dict[str, torch.Tensor]:
    """train_stage1 generator-step terms from a reconstruction in [0, 1] (D in eval mode)."""
    l1 = (recon - images).abs().mean()
    lp = lpips(images * 2 - 1, recon * 2 - 1)
    fake_aug = DiffAug(1.0, 0.0)(recon * 2 - 1, data["input/aug_gen_rand_flags"], data["input/aug_gen_rand01"])
    logits = disc(fake_aug)
    return {"rec_loss_l1": l1, "lpips_loss": lp, "recon_total": l1 + perceptual_weight * lp,
            "fake_aug_generator_step": fake_aug, "logits_fake_generator_step": logits,
            "gan_loss": vanilla_g_loss(logits)}


def aw_setup(path: Path, tmp_path: Path, with_lpips: bool = True) -> tuple[dict, dict, LPIPS | None, DinoDiscriminator]:
    spec, data = load_case(path)
    cfg = spec["config"]
    assert cfg["loss"]["disc_loss"] == "hinge" and cfg["loss"]["gen_loss"] == "vanilla"
    lpips = None
    if with_lpips:
        lpips = build_lpips(data, "param/lpips/", cfg["lpips"]["vgg_seed"], spec["verification"].get("vgg_checksums"))
    disc = build_discriminator(cfg["discriminator"], data, "param/disc/", tmp_path)
    return spec, data, lpips, disc


def check_generator_step_from_recon(spec: dict, data: dict, lpips: LPIPS, disc: DinoDiscriminator) -> None:
    """Every generator-step term downstream of the stored reconstruction, and the decoder_pred bias gradient
    (∂L/∂b = Σ_tokens ∂L/∂logits, logits ↦ recon by unpatchify and × image std), without the RAE itself."""
    loss_cfg, images = spec["config"]["loss"], data["input/images"]
    recon = data["output/recon"].clone().requires_grad_(True)
    terms = generator_losses(recon, images, lpips, disc.eval(), data, loss_cfg["perceptual_weight"])
    for name, value in terms.items():
        assert_output(value, spec, data, name)
    rec_norm, gan_norm = data["output/grad_norm_recon_total"], data["output/grad_norm_gan"]
    lam = torch.clamp(rec_norm / (gan_norm + 1e-6), 0.0, loss_cfg["max_d_weight"])
    assert_output(lam, spec, data, "adaptive_weight")
    total = terms["recon_total"] + loss_cfg["disc_weight"] * lam * terms["gan_loss"]
    assert_output(total, spec, data, "total_loss")
    (grad,) = torch.autograd.grad(total.squeeze(), recon)
    std = torch.tensor(spec["config"]["rae"]["encoder_image_std"]).view(1, -1, 1, 1)
    patch = spec["config"]["rae"]["RAE_kwargs"]["decoder_patch_size"]
    assert_output(patchify(grad * std, patch).sum(dim=(0, 1)), spec, data, "grad_decoder_pred_bias")


@pytest.mark.parametrize("path", AW_CASES, ids=ids)
def test_adaptive_weight_discriminator_step(path: Path, tmp_path: Path) -> None:
    """D step on the stored quantised fakes: augmentation, two train-mode forwards, hinge loss, accuracy, u/v."""
    spec, data, _, disc = aw_setup(path, tmp_path, with_lpips=False)
    images, fake = data["input/images"], data["output/fake_discretized"]
    aug = DiffAug(spec["config"]["augment"]["prob"], spec["config"]["augment"]["cutout"])
    fake_in = aug(fake, data["input/aug_disc_fake_rand_flags"], data["input/aug_disc_fake_rand01"])
    real_in = aug(images * 2 - 1, data["input/aug_disc_real_rand_flags"], data["input/aug_disc_real_rand01"])
    assert_output(fake_in, spec, data, "fake_input_disc_step")
    assert_output(real_in, spec, data, "real_input_disc_step")
    disc.train()
    logits_fake, logits_real = disc(fake_in), disc(real_in)
    assert_output(logits_fake, spec, data, "logits_fake_disc_step")
    assert_output(logits_real, spec, data, "logits_real_disc_step")
    assert_output(hinge_d_loss(logits_real, logits_fake), spec, data, "d_loss")
    assert_output(disc_accuracy(logits_real, logits_fake), spec, data, "disc_accuracy")
    state = uv_state(disc)
    for name in (k for k in data if k.startswith("output/disc_state_after_step/")):
        assert_output(state[name.split("/", 2)[2]], spec, data, name[len("output/"):])


def rae_importer_config(spec: dict, data: dict) -> dict[str, Any]:
    from tests.reference.test_rae_stage1_networks import rae_config

    return rae_config({"config": spec["config"]["rae"]}, data)


@pytest.mark.parametrize("path", AW_CASES, ids=ids)
def test_adaptive_weight_generator_step(path: Path, tmp_path: Path, executed: Executed) -> None:
    """One generator step through the RAE (stored noise draws): every loss term, λ from the decoder_pred
    gradients, the total loss and the decoder gradients; then the eval-mode reconstruction and its 8-bit
    quantisation. Without the RAE importer: the same terms from the stored reconstruction."""
    spec, data, lpips, disc = aw_setup(path, tmp_path)
    lpips = executed(lpips)  # the discriminator stays eager, as RAEStage1 compiles
    if "rae.rae" not in OFFICIAL_IMPORTERS:
        check_generator_step_from_recon(spec, data, lpips, disc)
        return
    loss_cfg, images = spec["config"]["loss"], data["input/images"]
    rae = executed(import_official("rae.rae", with_prefix(data, "param/rae/"), rae_importer_config(spec, data)).train())
    latent = rae.encode_unit_range(images, data["input/noise_uniform_u"], data["input/noise_gaussian_n"])
    recon = rae.decode_unit_range(latent)
    assert_output(recon, spec, data, "recon")
    terms = generator_losses(recon, images, lpips, disc.eval(), data, loss_cfg["perceptual_weight"])
    for name, value in terms.items():
        assert_output(value, spec, data, name)
    last = rae.decoder.last_layer
    lam = adaptive_weight(terms["recon_total"], terms["gan_loss"], last, loss_cfg["max_d_weight"])
    # λ is exactly the ratio of the two Frobenius norms it reports
    assert lam.weight == torch.clamp(lam.rec_grad_norm / (lam.gan_grad_norm + 1e-6), 0, loss_cfg["max_d_weight"])
    assert_output(lam.rec_grad_norm, spec, data, "grad_norm_recon_total")
    assert_output(lam.gan_grad_norm, spec, data, "grad_norm_gan")
    assert_output(lam.weight, spec, data, "adaptive_weight")
    total = terms["recon_total"] + loss_cfg["disc_weight"] * lam.weight * terms["gan_loss"]
    assert_output(total, spec, data, "total_loss")
    rae.zero_grad()
    total.backward()
    assert_output(last.grad, spec, data, "grad_decoder_pred_weight")
    assert_output(rae.decoder.pred.bias.grad, spec, data, "grad_decoder_pred_bias")
    assert_output(rae.decoder.embed.weight.grad, spec, data, "grad_decoder_embed_weight")
    # discriminator-step fakes: eval-mode reconstruction (no noise), clamped and quantised to 8 bits
    rae.eval()
    with torch.no_grad():
        recon_eval = rae.decode_unit_range(rae.encode_unit_range(images))
    assert_output(recon_eval, spec, data, "recon_disc_eval")
    diff = (quantize_fake(recon_eval) - data["output/fake_discretized"]).abs()
    flipped = diff > 1e-6
    # float32 noise may flip values at a .5 rounding boundary by exactly one level (JSON tolerance note)
    assert torch.allclose(diff[flipped], torch.full_like(diff[flipped], 1 / 127.5), atol=1e-6)
    assert flipped.float().mean() < 1e-3
