"""`DiffusionRecipe`: the thin LightningModule base every recipe shares.

It holds what every recipe would otherwise repeat, each concern in its own module:

* the five typed argument groups — ``optimizer`` (``optimization.py``: AdamW and its kernel, warm-up, cosine /
  hold-linear), ``sharding`` (``sharding.py``: FSDP2), ``nonfinite`` (``nonfinite.py``: skip or raise on a NaN
  loss or gradient), ``sampling`` (``diffusion/sampling.py``: sampler object, steps, guidance) and ``compile``
  (``compilation.py``: torch.compile of the networks in ``configure_model``) — declared once per recipe with the
  paper's defaults and coerced by ``argument_groups.py``;
* one TensorBoard scalar per loss term; fixed validation noise so validation curves are comparable;
* resumable state in every checkpoint: the recipe's class, the skipped-step count and the RNG states
  (``rng_state.py``), and the checks that a checkpoint or a datamodule fits (``fit_checks.py``);
* the ``sample()`` surface callbacks use (DESIGN: callbacks talk to modules only through ``net`` and ``sample``),
  with autoguidance (``set_autoguide``) in place of CFG when a guide is set, under the trainer's precision.

The math stays in plain functions and ``nn.Module``s. A recipe sets ``self.net`` (the denoiser), implements
``compute_losses(batch, generator)`` (a dict whose ``"loss"`` is minimised) and ``sample(labels, ...)``.
Subclasses that override ``on_save_checkpoint`` / ``on_load_checkpoint`` / ``on_train_start`` / ``on_fit_start`` /
``on_before_optimizer_step`` call super. The two-optimizer GAN step is ``gan_recipe.GANRecipe``.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn

from speedrun_diffusion.datamodules.loaders import LabelRangeError
from speedrun_diffusion.lightning_modules.argument_groups import as_group, declared_default, module_architecture, plain
from speedrun_diffusion.lightning_modules.compilation import CompileConfig, compile_modules, compiled_parts
from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser, Sampler, SamplingConfig, State
from speedrun_diffusion.lightning_modules.eval_mode import eval_mode
from speedrun_diffusion.lightning_modules.fit_checks import check_checkpoint_matches, check_data_fits
from speedrun_diffusion.lightning_modules.nonfinite import (
    NonFiniteConfig,
    NonFiniteGuard,
    NonFiniteLossError,
    check_checkpoint_finite,
)
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig, adamw, clip_grads_to_norm_, scheduled
from speedrun_diffusion.lightning_modules.rng_state import capture_rng_states, decorrelate_rank_rng, restore_rng_states
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig, fully_shard_recipe
from speedrun_diffusion.lightning_modules.weights import CheckpointMismatchError

__all__ = ["AutoGuide", "CheckpointMismatchError", "DiffusionRecipe", "NonFiniteLossError"]

log = logging.getLogger(__name__)


class AutoGuide(NamedTuple):
    """A frozen guide network for autoguidance (Karras et al. 2024; RAE Sec. 5, SpeedDiff A.3.1):
    D = D_guide + scale·(D_main − D_guide) where t lies in ``interval`` (None: everywhere)."""

    net: nn.Module
    scale: float
    interval: tuple[float, float] | None = None


def check_sample_labels(labels: Tensor, num_classes: int, recipe: str) -> None:
    """Refuse labels ``sample()`` cannot embed — not integers, or outside [0, num_classes] (``num_classes`` is the
    null label) — naming them, before they reach an embedding table (an IndexError deep in the network on CPU, a
    device-side assert on CUDA)."""
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{recipe}.sample(): labels must be an integer tensor of class ids, got "
                        f"{type(labels).__name__ if not torch.is_tensor(labels) else labels.dtype}")
    flat = labels.detach().reshape(-1)
    bad = flat[(flat < 0) | (flat > num_classes)]
    if len(bad):
        raise LabelRangeError(f"{recipe}.sample(): label(s) {sorted(set(bad.tolist()))[:5]} outside [0, {num_classes}] "
                              f"(class ids 0..{num_classes - 1}; {num_classes} = unconditional)")


class DiffusionRecipe(L.LightningModule):
    """Base class of the recipes: argument groups, loss logging, checkpoint state, FSDP2, the ``sample`` surface."""

    net: nn.Module
    # init args that read weight files (e.g. SiD2 ``init_from``): left at their defaults by ``net_from_hparams``
    weight_loading_args: tuple[str, ...] = ()
    process = "flow"  # what the recipe's samplers integrate: "flow" (a Sampler with process "flow") or "vp" (SiD2)

    def __init__(
        self,
        optimizer: OptimizerConfig | Mapping[str, Any] | None = None,
        sharding: ShardingConfig | Mapping[str, Any] | None = None,
        nonfinite: NonFiniteConfig | Mapping[str, Any] | None = None,
        sampling: SamplingConfig | Mapping[str, Any] | None = None,
        compile: CompileConfig | Mapping[str, Any] | None = None,  # noqa: A002 - the group's name in YAML
    ) -> None:
        super().__init__()
        def group(value: Any, name: str, kind: type) -> Any:
            # a mapping overrides the subclass's declared defaults (its paper values) field by field
            return as_group(value, kind, declared_default(type(self), name, kind))

        self.optimizer_config = group(optimizer, "optimizer", OptimizerConfig)
        self.sharding_config = group(sharding, "sharding", ShardingConfig)
        self.nonfinite_guard = NonFiniteGuard(group(nonfinite, "nonfinite", NonFiniteConfig))
        self.sampling = group(sampling, "sampling", SamplingConfig)
        self.compile_config = group(compile, "compile", CompileConfig)
        self._pending_rng: Mapping[str, Any] | None = None
        self._drop_gradients = False  # set by a skipped step under data parallelism
        self.tokenizer: nn.Module | None = None  # frozen encode/decode pair of latent recipes (DESIGN contract)
        self.latent_scale = 1.0
        # kept outside the module tree: the guide is neither trained, sharded nor saved with the recipe
        object.__setattr__(self, "_autoguide", None)

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's, with each argument group stored whole (the recipe's defaults filled in) and as plain
        containers, so a checkpoint rebuilds the same recipe and loads with ``weights_only=True``; an ignored
        module argument that can be rebuilt from its architecture (a tokenizer) is stored as that architecture."""
        frame = frame or inspect.currentframe().f_back
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        groups = {"optimizer": self.optimizer_config, "sharding": self.sharding_config,
                  "nonfinite": self.nonfinite_guard.cfg, "sampling": self.sampling,
                  "compile": self.compile_config}
        rebuilt = {}
        for name in [ignore] if isinstance(ignore, str) else (ignore or []):
            value = frame.f_locals.get(name)
            if isinstance(value, nn.Module) and not isinstance(self._hparams.get(name), Mapping):
                try:
                    rebuilt[name] = module_architecture(value)
                except TypeError:  # a module without a config (an injected LPIPS, targets): not rebuilt
                    pass
        for store in (self._hparams, self._hparams_initial):
            store.update(rebuilt)
            for key, value in list(store.items()):
                store[key] = plain(groups[key] if key in groups else value)

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def nonfinite_steps(self) -> int:
        """Training steps skipped for a non-finite loss (checkpointed)."""
        return self.nonfinite_guard.skipped

    @nonfinite_steps.setter
    def nonfinite_steps(self, value: int) -> None:
        self.nonfinite_guard.skipped = int(value)

    # ---------------------------------------------------------------- frozen tokenizer / encoders
    def frozen_modules(self) -> list[nn.Module]:
        """Pretrained modules that are never trained and stay in eval mode (tokenizer, target encoders)."""
        return [self.tokenizer] if self.tokenizer is not None else []

    def freeze(self) -> None:
        """Stop gradients into ``frozen_modules`` and put them in eval mode."""
        for module in self.frozen_modules():
            module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> DiffusionRecipe:
        super().train(mode)
        for module in self.frozen_modules():  # Lightning's .train() must not switch them back
            module.eval()
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → diffusion space: tokenizer latents × ``latent_scale`` (identity on pixels)."""
        if self.tokenizer is None:
            return images
        return self.tokenizer.encode(images) * self.latent_scale

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Diffusion space → images in [-1, 1] (tokenizer.decode(z / latent_scale), clamped)."""
        if self.tokenizer is None:
            return x0.clamp(-1, 1)
        return self.tokenizer.decode(x0 / self.latent_scale).clamp(-1, 1)

    # ---------------------------------------------------------------- losses and logging
    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def log_losses(self, losses: dict[str, Tensor], stage: str, batch_size: int) -> None:
        """One TensorBoard scalar per loss term (DESIGN: logs every loss term)."""
        scalars = {f"{stage}/{name}": value.detach().float() for name, value in losses.items() if name != "loss"}
        self.log_dict(scalars, batch_size=batch_size, sync_dist=stage != "train", prog_bar=False)
        self.log(f"{stage}/loss", losses["loss"].detach().float(), batch_size=batch_size, prog_bar=True,
                 sync_dist=stage != "train")

    def losses_are_finite(self, losses: Mapping[str, Tensor]) -> bool:
        """The ``nonfinite`` policy on this step's loss terms (``nonfinite.py``): True to train on them."""
        return self.nonfinite_guard.check(self, losses)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        losses = self.compute_losses(batch)
        if not self.losses_are_finite(losses):
            if self._trainer is None or self.trainer.world_size == 1:
                return None  # Lightning skips backward; no gradient, so the optimizer changes nothing
            # Lightning forbids None under data parallelism: every rank runs backward (keeping the collectives
            # in step) and on_before_optimizer_step drops the gradients, so the optimizer changes nothing
            self._drop_gradients = True
            return losses["loss"] * 0.0
        self.log_losses(losses, "train", batch_size=len(batch["label"]))
        self.log_learning_rates()
        return losses["loss"]

    def log_learning_rates(self) -> None:
        """``train/lr`` (and ``train/lr_discriminator``) every step, from the optimizers themselves: works with any
        logger or none, unlike Lightning's LearningRateMonitor, which refuses a Trainer without a logger."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for name, opt in zip(("train/lr", "train/lr_discriminator"), optimizers):
            self.log(name, float(opt.param_groups[0]["lr"]), batch_size=1, prog_bar=False)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Automatic optimisation: drop the gradients of a step skipped for its loss, else check the global gradient
        norm (``nonfinite.py``; a NaN gradient of a finite loss would make every weight NaN) and drop them if it is
        not finite; then close the step for the consecutive-skip count. The GAN recipes check in their own step."""
        if not self.automatic_optimization:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        guard = self.nonfinite_guard
        if self._drop_gradients or (not guard.step_skipped and not self.gradients_are_finite(params)):
            for p in params:
                p.grad = None  # AdamW leaves parameters (and their moments) without a gradient untouched
            self._drop_gradients = False
        guard.end_step(self)

    def gradients_are_finite(self, params: Iterable[nn.Parameter]) -> bool:
        """The ``nonfinite`` policy on the global gradient norm of ``params`` (``nonfinite.py``): True to step."""
        # under a GradScaler (fp16) an inf gradient is routine: the scaler skips that step and lowers its scale
        if getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None:
            return True
        return self.nonfinite_guard.check_gradients(self, params)

    def _fixed_generator(self, batch_idx: int) -> torch.Generator:
        # the same noise and t for the same validation batch every epoch, so val curves are comparable
        return torch.Generator(device=self.device).manual_seed(10_007 * (batch_idx + 1) + self.global_rank)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch, generator=self._fixed_generator(batch_idx))
        self.log_losses(losses, "val", batch_size=len(batch["label"]))
        return losses["loss"]

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch, generator=self._fixed_generator(batch_idx))
        self.log_losses(losses, "test", batch_size=len(batch["label"]))
        return losses["loss"]

    # ---------------------------------------------------------------- data checks
    def expected_image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the images a pixel-space denoiser takes (from ``net.cfg``); None for latent recipes."""
        cfg = getattr(getattr(self, "net", None), "cfg", None)
        size = getattr(cfg, "input_size", None) or getattr(cfg, "resolution", None)
        channels = getattr(cfg, "in_channels", None)
        if self.tokenizer is not None or not isinstance(size, int) or not isinstance(channels, int):
            return None
        return (channels, size, size)

    def on_fit_start(self) -> None:
        check_data_fits(self, self._trainer.datamodule if self._trainer is not None else None)

    def on_validation_start(self) -> None:
        """``validate`` / ``test`` of a checkpoint log at the checkpoint's step, not at 0 (Lightning logs evaluation
        metrics at the fit loop's step count, which only ``fit`` restores)."""
        trainer = self._trainer
        if trainer is not None and trainer.state.fn in ("validate", "test") and self.trained_steps:
            trainer.fit_loop.epoch_loop._batches_that_stepped = self.trained_steps

    on_test_start = on_validation_start

    # ---------------------------------------------------------------- checkpoints
    @classmethod
    def recipe_name(cls) -> str:
        """``module.Class`` of this recipe, stored in every checkpoint."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a NaN weight, optimizer moment, EMA shadow or GAN buffer is never saved: last.ckpt keeps the last good state
        check_checkpoint_finite(checkpoint, self._trainer, type(self).__name__)
        checkpoint["recipe"] = self.recipe_name()
        checkpoint["nonfinite_steps"] = self.nonfinite_steps
        checkpoint["rng_states"] = capture_rng_states()
        if self._trainer is not None and self.trainer.world_size > 1:
            # a sharded checkpoint keeps rank 0's copy of the non-tensor entries: store every rank's streams
            states: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, checkpoint["rng_states"])
            checkpoint["rng_states_per_rank"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_matches(self, checkpoint, source)
        self.trained_steps = int(checkpoint.get("global_step", 0))
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))
        # applied when training starts: loaders and sanity checks between load and the first step draw nothing
        self._pending_rng = checkpoint.get("rng_states")
        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank and self._trainer is not None and len(per_rank) == self.trainer.world_size:
            self._pending_rng = per_rank[self.global_rank]

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        elif self._trainer is not None and self.trainer.world_size > 1:
            decorrelate_rank_rng(self.data_parallel_rank())

    def data_parallel_rank(self) -> int:
        """This process's index among the data-parallel replicas (tensor-parallel peers share it)."""
        mesh = self.device_mesh
        if mesh is not None and mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names:
            return mesh["data_parallel"].get_local_rank()
        return self.global_rank

    # ---------------------------------------------------------------- sampling surface
    @property
    def autoguide(self) -> AutoGuide | None:
        """The guide ``sample()`` uses instead of CFG, set by ``callbacks.AutoGuidance`` (None: CFG as configured)."""
        return self._autoguide

    def set_autoguide(self, net: nn.Module | None, scale: float = 1.0,
                      interval: tuple[float, float] | None = None) -> None:
        """Make ``sample()`` autoguide with the frozen ``net`` (same call signature as ``self.net``); None clears."""
        if net is None:
            object.__setattr__(self, "_autoguide", None)
            return
        net.requires_grad_(False).eval()
        guide = AutoGuide(net, float(scale), None if interval is None else (float(interval[0]), float(interval[1])))
        object.__setattr__(self, "_autoguide", guide)

    def sampling_options(self, **overrides: Any) -> SamplingConfig:
        """``self.sampling`` with the ``sample()`` arguments that are not None (sampler, num_steps, guidance_scale,
        guidance_interval: a tuple, "auto" for the paper's, "all" for every step), the interval resolved, and the
        sampler checked against this recipe's process."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("guidance_interval") == "all":
            given["guidance_interval"] = None
        options = as_group(given, SamplingConfig, self.sampling)
        if options.guidance_interval == "auto":
            options = as_group({"guidance_interval": self.paper_guidance_interval()}, SamplingConfig, options)
        options.sampler.check_process(self.process, type(self).__name__)
        return options

    def paper_guidance_interval(self) -> tuple[float, float] | None:
        """The guidance interval ``"auto"`` stands for (None: every step; SiD2: A.4's log-SNR interval)."""
        return None

    def flow_guidance(self, guidance_scale: float, guidance_interval: tuple[float, float] | None) -> GuidedDenoiser:
        """The guided velocity ``(x, t, y) -> v`` the flow samplers integrate (SiT, RAE stage 2, SpeedDiff):
        autoguidance with ``self.autoguide`` (v_guide + w·(v − v_guide), same labels, its t-interval) when set,
        else CFG with ``guidance_scale`` on ``guidance_interval`` against the null label ``num_classes``."""
        ag = self.autoguide
        if ag is not None:
            return GuidedDenoiser(lambda x, t, y: self.net(x, t, y), scale=ag.scale,
                                  guide_fn=lambda x, t, y: ag.net(x, t, y), interval=ag.interval)
        return GuidedDenoiser(lambda x, t, y: self.net(x, t, y), scale=guidance_scale, null_label=self.num_classes,
                              interval=guidance_interval)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> DiffusionRecipe:
        """This recipe (random weights) from stored hyper-parameters, for sampling: nested modules and argument
        groups given as ``{class_path, init_args}`` / mappings are instantiated as LightningCLI does, keys the
        constructor does not take (``_class_path``, ...) are dropped, and ``sampling_overrides`` switch off what
        only training needs (weight files named by arguments, LPIPS, discriminators, REPA targets)."""
        from lightning.pytorch.cli import instantiate_module

        accepted = inspect.signature(cls.__init__).parameters
        config = {k: v for k, v in hparams.items() if k in accepted}
        config.update(cls.sampling_overrides(config))
        return instantiate_module(cls, config)

    @classmethod
    def with_defaults(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """``hparams`` completed with the constructor's defaults: a network builder reads every argument by name
        from one mapping, so the recipe's signature is the only place the arguments are declared."""
        declared = inspect.signature(cls.__init__).parameters.values()
        return {**{p.name: p.default for p in declared if p.default is not p.empty}, **hparams}

    @classmethod
    def net_from_hparams(cls, hparams: Mapping[str, Any]) -> nn.Module:
        """The (randomly initialised) ``net`` this recipe builds from a checkpoint's ``hyper_parameters``: the
        autoguidance guide of ``callbacks.AutoGuidance`` (``from_hparams``; a recipe whose frozen modules are costly
        to build overrides it to build the denoiser alone)."""
        return cls.from_hparams(hparams).net

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | Literal["auto", "all"] | None = None,
        sampler: Sampler | None = None,
        noise: State | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        **extras: Any,
    ) -> Tensor:
        """Images in [-1, 1], NCHW, for int64 ``labels`` (``num_classes`` = unconditional), in eval mode.

        The one sampling vocabulary of every recipe: ``num_steps``, ``guidance_scale``, ``guidance_interval`` (a
        closed interval; "auto" the paper's, "all" every step) and ``sampler`` override the ``sampling`` group when
        given (None keeps it); ``noise`` replaces the initial noise (``initial_noise``), ``generator`` drives every
        draw, ``progress`` shows a bar. ``extras`` are the recipe's own options (the keyword arguments of its
        ``generate``); with ``self.autoguide`` set, autoguidance replaces CFG."""
        accepted = set(inspect.signature(self.generate).parameters) - {"labels", "noise", "options", "generator",
                                                                         "progress"}
        unknown = sorted(set(extras) - accepted)
        if unknown:
            raise TypeError(f"{type(self).__name__}.sample() got unexpected argument(s) {unknown}; it takes labels, "
                            "num_steps, guidance_scale, guidance_interval, sampler, noise, generator, progress"
                            + (f" and {sorted(accepted)}" if accepted else ""))
        options = self.sampling_options(num_steps=num_steps, guidance_scale=guidance_scale,
                                        guidance_interval=guidance_interval, sampler=sampler)
        check_sample_labels(labels, self.num_classes, type(self).__name__)
        labels = labels.to(self.device)
        if noise is None:
            noise = self.initial_noise(len(labels), generator)
        with eval_mode(self.net), self.precision_context():
            return self.generate(labels, noise, options, generator, progress, **extras)

    def precision_context(self) -> contextlib.AbstractContextManager:
        """The trainer's precision around a forward (bf16-mixed: autocast), so sampling from a callback computes as
        training does; outside a trainer, the caller's context (e.g. its own ``torch.autocast``)."""
        trainer = self._trainer
        if trainer is None:
            return contextlib.nullcontext()
        return trainer.precision_plugin.forward_context()

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> State:
        """The starting point of sampling: a standard normal of shape (batch, *``noise_shape()``)."""
        return torch.randn((batch, *self.noise_shape()), device=self.device, generator=generator)

    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one sample in diffusion space (the denoiser's input)."""
        raise NotImplementedError

    def generate(self, labels: Tensor, noise: State, options: SamplingConfig, generator: torch.Generator | None,
                 progress: bool) -> Tensor:
        """The recipe's sampling with resolved ``options``, from ``noise`` to images in [-1, 1] (``sample`` calls it
        with the network in eval mode)."""
        raise NotImplementedError

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.sample(batch["label"])

    # ---------------------------------------------------------------- serving (serving.py)
    uses_ema = False  # whether the network holds EMA weights (set by serving.load_pretrained)
    trained_steps = 0  # the training step of the weights (set by serving.load_pretrained)

    @classmethod
    def sampling_overrides(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Hyper-parameters that build this recipe for sampling only: the arguments that read weight files are
        dropped (the weights come from the checkpoint); recipes with training-only modules switch them off."""
        return {name: None for name in cls.weight_loading_args if name in hparams}

    def bundle_hparams(self) -> dict[str, Any]:
        """Hyper-parameters a bundle stores on top of the recipe's, so it rebuilds without files: the tokenizer's
        architecture when the tokenizer is an argument (its weights go into the bundle)."""
        takes_tokenizer = "tokenizer" in inspect.signature(type(self).__init__).parameters
        return {"tokenizer": module_architecture(self.tokenizer)} if takes_tokenizer and self.tokenizer else {}

    def prepare_for_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Make room for stored tensors a freshly built recipe does not have yet (RAE's latent statistics)."""

    # ---------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in frozen)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the trainable parameters with the ``optimizer`` group's schedule (``optimization.py``)."""
        optimizer = adamw(self.trainable_parameters(), self.optimizer_config)
        return {"optimizer": optimizer, "lr_scheduler": scheduled(optimizer, self.optimizer_config, self._trainer)}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """``trainer.gradient_clip_val``, else the ``optimizer.grad_clip`` of the argument group (by norm)."""
        if gradient_clip_val is None and self.optimizer_config.grad_clip is not None:
            gradient_clip_val, gradient_clip_algorithm = self.optimizer_config.grad_clip, "norm"
        self.clip_any_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_any_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                           gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's ``clip_gradients``, also for a fused AdamW (``optimizer.implementation``) under mixed
        precision. Lightning's AMP plugin refuses to clip for any optimizer that unscales inside its step, which
        matters only with a GradScaler (fp16): bf16-mixed has none, so the base plugin clips as usual; with one, the
        gradients are unscaled first and torch's GradScaler then steps the fused kernel on unscaled gradients."""
        from lightning.pytorch.plugins.precision import MixedPrecision, Precision
        from lightning.pytorch.utilities.enums import GradClipAlgorithmType

        plugin = self.trainer.precision_plugin
        inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        value = (self.trainer.gradient_clip_val or 0.0) if gradient_clip_val is None else gradient_clip_val
        algorithm = (gradient_clip_algorithm or self.trainer.gradient_clip_algorithm or "norm").lower()
        params = [p for group in inner.param_groups for p in group["params"]]
        # the non-finite check has just computed this global norm (unsharded gradients, no scaler): clip with it,
        # exactly as clip_grad_norm_ would, instead of a second pass over every gradient (none when below max_norm)
        norm = self.nonfinite_guard.take_gradient_norm(params) if self.device_mesh is None else None
        if value > 0 and algorithm == "norm" and norm is not None and getattr(plugin, "scaler", None) is None:
            clip_grads_to_norm_(params, value, norm)
            return
        if not (isinstance(plugin, MixedPrecision) and getattr(inner, "_step_supports_amp_scaling", False)):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if value <= 0:
            return
        if plugin.scaler is not None:
            plugin.scaler.unscale_(inner)
        Precision.clip_gradients(plugin, inner, value, GradClipAlgorithmType(algorithm))

    # ---------------------------------------------------------------- sharding
    def shard_units(self) -> list[nn.Module]:
        """Modules wrapped by their own ``fully_shard``: one FSDP unit per transformer block of ``net.blocks``
        (SPRINT's sparse blocks included) and of a block-structured ``net.head`` (the DDT head of DiT^DH)."""
        blocks = getattr(self.net, "blocks", None)
        units = list(blocks) if blocks is not None else []
        head = self.net._modules.get("head")  # a submodule, not DiT's head() method
        if head is not None and isinstance(getattr(head, "blocks", None), nn.ModuleList):
            units += list(head.blocks)
        return units

    def shard_roots(self) -> list[nn.Module]:
        """Modules ``fully_shard``-ed as a whole after their ``shard_units``: every trained parameter must lie in
        one of them (the denoiser here; SpeedDiff adds its VAE, adapters and discriminator)."""
        return [self.net]

    def reshard_root_after_forward(self, root: nn.Module) -> bool:
        """False keeps a root's own parameters gathered from its forward until its backward: needed for a root
        called through methods whose outputs FSDP cannot hook for the backward (SpeedDiff's VAE ``posterior``)."""
        return True

    def compiled_modules(self) -> list[nn.Module]:
        """What the ``compile`` group compiles whole when the recipe is not sharded: the denoiser and
        ``compiled_frozen_modules()``."""
        return [self.net, *self.compiled_frozen_modules()]

    def compiled_frozen_modules(self) -> list[nn.Module]:
        """With ``compile.frozen``, each frozen module, a tokenizer by its encoder and decoder (``compilation.py``);
        replicated under FSDP2, they are compiled whole there too."""
        frozen = self.frozen_modules() if self.compile_config.frozen else []
        return [part for module in frozen for part in compiled_parts(module)]

    def configure_model(self) -> None:
        """torch.compile (``compile`` group) and FSDP2 under ``ModelParallelStrategy`` (``sharding.py``): one
        device or DDP compiles ``compiled_modules()``; FSDP2 compiles each shard unit before its ``fully_shard``
        and the frozen modules whole. A trainable parameter outside ``shard_roots`` would never be averaged over
        ranks, so it is refused with an error naming it."""
        mesh = self.device_mesh
        if mesh is None:
            compile_modules(self.compiled_modules(), self.compile_config)
            return
        from torch.distributed.fsdp import FSDPModule

        roots = self.shard_roots()
        if isinstance(roots[0], FSDPModule):  # configure_model runs again for validate/test after fit
            return
        in_roots = {id(p) for root in roots for p in root.parameters()}
        trained = {id(p) for p in self.trainable_parameters()}
        stray = [n for n, p in self.named_parameters() if id(p) in trained and id(p) not in in_roots]
        if stray:
            names = {id(m): n for n, m in self.named_modules()}
            raise ValueError(f"{type(self).__name__}.configure_model shards only "
                             f"{[names.get(id(m), type(m).__name__) for m in roots]}, but {stray[:3]} are trained "
                             "too: add their module to shard_roots() (they would diverge across ranks)")
        units = self.shard_units()
        # before fully_shard: every unit that holds no other unit (SpeedDiff's VAE encoder holds its blocks)
        unit_ids = {id(u) for u in units}
        leaves = [u for u in units if not any(id(m) in unit_ids for m in u.modules() if m is not u)]
        compile_modules(leaves + self.compiled_frozen_modules(), self.compile_config)
        fully_shard_recipe(mesh, units, roots, self.sharding_config, self.reshard_root_after_forward)

    def setup(self, stage: str) -> None:
        """Manual-optimisation (GAN) recipes under DDP: each of their backward passes leaves some parameters
        without a gradient, which DDP accepts only with ``find_unused_parameters``: switch it on before DDP wraps
        the module (configs/scale/ddp_8gpu.yaml leaves it off for the single-optimizer recipes)."""
        super().setup(stage)
        strategy = self._trainer.strategy if self._trainer is not None else None
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if stage == "fit" and not self.automatic_optimization and isinstance(kwargs, dict) \
                and not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            log.info("%s: DDP find_unused_parameters switched on (two optimizers, disjoint backward passes)",
                     type(self).__name__)
