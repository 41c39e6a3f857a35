"""`RAEStage2`: DiT^DH (or LightningDiT) flow matching on the normalised latents of a frozen RAE ("Diffusion
Transformers with Representation Autoencoders", Sec. 4-5, App. F, I).

Linear flow on the normalised latents, velocity target, logit-normal times shifted by α = sqrt(C·H·W / 4096)
(Sec. 4.2); sampling with the Euler ODE (50 steps) or Euler–Maruyama, CFG with an interval or autoguidance
(``self.autoguide``), decoding through the stage-1 decoder (a ``RAEStage1`` checkpoint or the official decoder +
statistics) to images in [−1, 1].
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.argument_groups import module_architecture
from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1 import build_rae
from speedrun_diffusion.lightning_modules.compilation import CompileConfig
from speedrun_diffusion.lightning_modules.diffusion import (
    EulerMaruyama,
    EulerODE,
    RAETransport,
    SamplingConfig,
    rae_shift,
)
from speedrun_diffusion.lightning_modules.losses.rae_transport import rae_transport_loss
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDTHeadConfig
from speedrun_diffusion.lightning_modules.networks.dit import DiT, lightningdit_preset
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH, DiTDHConfig, ditdh_preset
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.rae_stage1 import load_stage1_tokenizer
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig

log = logging.getLogger(__name__)

__all__ = ["RAEStage2", "rae_denoiser"]


def rae_denoiser(h: Mapping[str, Any]) -> nn.Module:
    """DiT^DH ("DiTDH-S|B|L|XL", head ``head`` of Table 16 × ``head_depth``, or an explicit ``head_hidden_size`` /
    ``head_num_heads``) or LightningDiT ("LightningDiT-XL/1") on (in_channels, input_size, input_size) latents
    (RAE Sec. 5, App. F), from the network arguments of ``RAEStage2`` in ``h`` (its hyper-parameters).

    ``depth`` / ``hidden_size`` / ``num_heads`` override the backbone preset. The width rule of RAE Sec. 4.1
    (DiT^DH head / LightningDiT width ≥ token dimension C·p²) raises a ValueError naming the key.
    """
    sizes = {k: h[k] for k in ("depth", "hidden_size", "num_heads") if h[k] is not None}
    common = dict(input_size=h["input_size"], in_channels=h["in_channels"], num_classes=h["num_classes"],
                  class_dropout_prob=h["class_dropout_prob"], qk_norm=h["qk_norm"], **sizes)
    if h["model"].startswith("LightningDiT"):
        return DiT(lightningdit_preset(h["model"], **common))
    head_width, head_heads = h["head_hidden_size"], h["head_num_heads"]
    custom_head = head_width is not None or head_heads is not None
    cfg = ditdh_preset(h["model"], head=h["head"], head_depth=h["head_depth"], check_width=not custom_head, **common)
    if custom_head:
        cfg = DiTDHConfig(cfg.backbone, DDTHeadConfig(head_width or cfg.head.hidden_size, h["head_depth"],
                                                      head_heads or cfg.head.num_heads))
    return DiTDH(cfg)



class RAEStage2(DiffusionRecipe):
    """RAE stage 2: DiT^DH (or LightningDiT) flow matching on normalised RAE latents (RAE Sec. 4-5, App. F).

    Network (``rae_denoiser``): ``model`` "DiTDH-XL" | ... | "LightningDiT-XL/1", DDT ``head`` /
    ``head_depth`` or ``head_hidden_size`` / ``head_num_heads``, ``depth`` / ``hidden_size`` / ``num_heads``
    overrides) on (``in_channels``, ``input_size``, ``input_size``) latents.

    Process: ``time_dist`` "logit_normal" (``time_mean``, ``time_std``) or "uniform" on [0, 0.999], shift
    α = sqrt(C·H·W / ``shift_base``) (``time_shift`` overrides it) in training and sampling. Sampling
    (``sampling``): ``EulerODE`` with 50 steps (App. F) or ``EulerMaruyama`` / ``Heun``; ``official_sampler``
    replays the official grids of the Euler samplers (ODE ending at shift(0.001), the SDE's unshifted last step).
    Guidance: CFG ``guidance_scale`` on the closed t-interval ``guidance_interval`` (1.0 = none, as the official
    non-AG configs), or autoguidance when ``self.autoguide`` is set (``callbacks.AutoGuidance``).
    ``unconditional`` trains and samples with the null label only (App. K).

    Tokenizer (frozen, kept out of checkpoints — it is rebuilt from these arguments): ``tokenizer`` (a module)
    or ``stage1_checkpoint`` (a ``RAEStage1`` checkpoint; ``stage1_weights`` "ema" / "model") or, with
    ``official_rae``, ``checkpoints.rae_stage1.build_rae(rae_encoder, rae_decoder, encoder_input_size,
    decoder_patch_size, pretrained_encoder, decoder_path)`` — the released decoder ``model.pt``;
    ``stats_path``: the latent ``{'mean', 'var'}`` file (official ``stat.pt`` or ``RAEStage1``'s
    ``stats_output``). Without any tokenizer the latents are used as they come and ``sample`` returns latents.
    Data: ``{"latent"}`` batches (``LatentDataModule``: raw latents, normalised here with the statistics) or
    ``{"image"}`` batches encoded on the fly (the official pipeline, with flips).

    Optimisation (``optimizer``): AdamW 2e-4, β (0.9, 0.95), wd 0; schedule "hold_linear": constant for
    ``hold_epochs`` (40), linear to ``min_lr`` (2e-5) at ``decay_end_epoch`` (800), constant after.
    """

    def __init__(
        self,
        model: str = "DiTDH-XL",
        head: str = "G",
        head_depth: int = 2,
        head_hidden_size: int | None = None,
        head_num_heads: int | None = None,
        input_size: int = 16,
        in_channels: int = 768,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        depth: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        qk_norm: bool = False,
        unconditional: bool = False,
        time_dist: Literal["logit_normal", "uniform"] = "logit_normal",
        time_mean: float = 0.0,
        time_std: float = 1.0,
        shift_base: int = 4096,
        time_shift: float | None = None,
        official_sampler: bool = False,
        tokenizer: nn.Module | None = None,
        stage1_checkpoint: str | None = None,
        stage1_weights: Literal["ema", "model"] = "ema",
        official_rae: bool = True,
        rae_encoder: str = "dinov2",
        rae_decoder: str = "XL",
        encoder_input_size: int = 224,
        decoder_patch_size: int = 16,
        pretrained_encoder: str | None = "timm",
        decoder_path: str | None = None,
        stats_path: str | None = None,
        sampling: SamplingConfig = SamplingConfig(sampler=EulerODE(), num_steps=50, guidance_scale=1.0,
                                                  guidance_interval=(0.0, 1.0)),
        optimizer: OptimizerConfig = OptimizerConfig(lr=2e-4, betas=(0.9, 0.95), schedule="hold_linear",
                                                     hold_epochs=40.0, decay_end_epoch=800.0, min_lr=2e-5),
        sharding: ShardingConfig = ShardingConfig(),
        nonfinite: NonFiniteConfig = NonFiniteConfig(),
        compile: CompileConfig = CompileConfig(),  # noqa: A002
    ) -> None:
        super().__init__(optimizer, sharding, nonfinite, sampling, compile=compile)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.net = rae_denoiser(self.hparams)
        self.latent_shape = (in_channels, input_size, input_size)
        if time_shift is None and in_channels * input_size**2 < shift_base:
            raise ValueError(f"shift_base={shift_base} exceeds the latent dimension {in_channels * input_size**2}: "
                             "the shift sqrt(C·H·W / shift_base) would be < 1 (the official code rejects it)")
        shift = float(time_shift) if time_shift is not None else rae_shift(self.latent_shape, shift_base)
        self.transport = RAETransport(self.latent_shape, time_dist, time_mean, time_std, 0.999, shift,
                                      official=official_sampler)
        self.time_sampler = self.transport.time_sampler()
        self.unconditional = unconditional
        if tokenizer is None and stage1_checkpoint is not None:
            tokenizer = load_stage1_tokenizer(stage1_checkpoint, stage1_weights, stats_path)
        elif tokenizer is None and official_rae:
            tokenizer = build_rae(rae_encoder, rae_decoder, encoder_input_size, decoder_patch_size, 0.0,
                                  pretrained_encoder, decoder_path, stats_path)
        elif tokenizer is not None and stats_path is not None:
            tokenizer.load_latent_stats(stats_path)
        if tokenizer is not None and tuple(getattr(tokenizer, "latent_shape", self.latent_shape)) != self.latent_shape:
            raise ValueError(f"the tokenizer makes latents of shape {tuple(tokenizer.latent_shape)} but the network "
                             f"takes {self.latent_shape} (in_channels, input_size, input_size)")
        self.tokenizer = tokenizer
        self.strict_loading = False  # the frozen tokenizer is not saved (rebuilt from the arguments above)
        self.freeze()

    @classmethod
    def net_from_hparams(cls, hparams: Mapping[str, Any]) -> nn.Module:
        """Only the denoiser (the autoguidance guide): no tokenizer, no weight files."""
        return rae_denoiser(cls.with_defaults(hparams))

    def bundle_hparams(self) -> dict[str, Any]:
        """A bundle carries the tokenizer (architecture here, weights in the file) instead of the files it was
        built from (stage-1 checkpoint, official decoder, statistics)."""
        if self.tokenizer is None:
            return {}
        return {"tokenizer": module_architecture(self.tokenizer), "stage1_checkpoint": None, "official_rae": False,
                "pretrained_encoder": None, "decoder_path": None, "stats_path": None}

    def prepare_for_weights(self, weights: Mapping[str, Tensor]) -> None:
        """The stored latent statistics become the tokenizer's before loading (a fresh RAE has none)."""
        if self.tokenizer is not None and "tokenizer.latent_mean" in weights:
            self.tokenizer.set_latent_stats(weights["tokenizer.latent_mean"], weights["tokenizer.latent_var"])

    @property
    def shift(self) -> float:
        return self.transport.time_shift

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The frozen tokenizer is left out (rebuilt from the arguments), except in a sharded (distributed)
        checkpoint, whose loader requires every key of the module."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and self.device_mesh is None:
            for key in [k for k in state if k.startswith("tokenizer.")]:
                del state[key]

    def on_fit_start(self) -> None:
        """Cached latents must have this network's shape and the writer's scale 1 (RAE latents are unscaled)."""
        super().on_fit_start()
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        manifest = getattr(datamodule, "manifest", None)
        if isinstance(manifest, dict):
            shape = tuple(manifest.get("latent_shape") or ())
            if shape != self.latent_shape:
                raise ValueError(f"the latent cache holds latents of shape {shape} but RAEStage2 takes "
                                 f"{self.latent_shape} (model.init_args.in_channels / input_size)")
            if self.tokenizer is not None and getattr(self.tokenizer, "latent_mean", None) is None:
                log.warning("RAEStage2 trains on cached latents without latent statistics (stats_path): the "
                            "latents are not normalised")

    # ---------------------------------------------------------------- training
    def diffusion_input(self, batch: dict[str, Tensor]) -> Tensor:
        """x0: normalised latents — cached raw ``batch["latent"]`` normalised with the tokenizer's statistics, or
        ``tokenizer.encode(batch["image"])`` (the statistics applied inside)."""
        if "latent" in batch:
            x0 = batch["latent"].float()
            if self.tokenizer is not None:
                x0 = self.tokenizer.normalize_latent(x0)
            source = "batch['latent']"
        elif self.tokenizer is None:
            raise ValueError("RAEStage2 without a tokenizer needs batches of cached latents ('latent')")
        else:
            x0 = self.encode(batch["image"])
            source = "tokenizer.encode(batch['image'])"
        if tuple(x0.shape[1:]) != self.latent_shape:
            raise ValueError(f"{source} has shape {tuple(x0.shape)}, the network expects (B, *{self.latent_shape})")
        return x0

    def labels(self, labels: Tensor) -> Tensor:
        """The labels the network sees: the null class everywhere when ``unconditional`` (RAE App. K)."""
        return torch.full_like(labels, self.num_classes) if self.unconditional else labels

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = self.diffusion_input(batch)
        out = rae_transport_loss(self.net, x0, self.labels(batch["label"]), self.time_sampler, generator=generator)
        return {"loss": out.loss.mean()}

    # ---------------------------------------------------------------- sampling
    def noise_shape(self) -> tuple[int, int, int]:
        return self.latent_shape

    def generate(self, labels: Tensor, noise: Tensor, options: SamplingConfig, generator: torch.Generator | None,
                 progress: bool, step_noise: Tensor | None = None, return_latents: bool = False) -> Tensor:
        """The flow sampler on the guided velocity, decoded by the stage-1 decoder to images in [−1, 1]
        (``return_latents``: the normalised latents). ``step_noise`` gives the Euler–Maruyama normals and, like
        ``official_sampler``, replays the official Euler grids.

        With ``self.autoguide`` set (``callbacks.AutoGuidance``; RAE App. D: DiT^DH-S at an early epoch) the
        guide replaces CFG: v = v_guide + w·(v − v_guide) on the guide's t-interval, same labels."""
        guided = self.flow_guidance(options.guidance_scale, options.guidance_interval)
        velocity = guided.with_labels(self.labels(labels))
        if self.transport.official or step_noise is not None:  # the official grids / the given normals
            if not isinstance(options.sampler, (EulerODE, EulerMaruyama)):
                raise ValueError("official_sampler / step_noise replay the official Euler samplers: choose EulerODE "
                                 f"or EulerMaruyama, not {type(options.sampler).__name__}")
            method = "ode" if isinstance(options.sampler, EulerODE) else "sde"
            x0 = self.transport.sample(velocity, noise, options.num_steps, method, generator=generator,
                                       step_noise=step_noise, progress=progress)
        else:
            x0 = options.sampler.sample(velocity, noise, options.num_steps, shift=self.shift, generator=generator,
                                        progress=progress)
        if return_latents or self.tokenizer is None:
            return x0
        return self.decode(x0)
