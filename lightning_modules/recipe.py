"""`DiffusionRecipe`: the thin LightningModule base shared by every recipe.

It removes exactly the code every recipe would otherwise repeat: the optimizer and its LR schedule
from config (AdamW, linear warm-up, then constant or cosine, as the papers train), logging of every
loss term, FSDP2 sharding of the denoiser's blocks in ``configure_model``, and the ``sample()``
surface that callbacks call (DESIGN: callbacks talk to modules only through ``net`` and
``sample``). The math stays in plain functions; a recipe implements ``compute_losses`` and
``sample``.

Fault tolerance (README "Fault tolerance"):

* Non-finite losses: every training step checks each loss term. ``nonfinite="skip"`` leaves the
  weights and optimizer state untouched — ``training_step`` returns None on one device (Lightning
  then runs no backward); under data parallelism, where Lightning forbids None, every rank runs the
  backward of a zeroed loss and ``on_before_optimizer_step`` drops the gradients — logs a warning
  naming the term(s) and counts the step in ``nonfinite_steps`` (logged as ``train/nonfinite_steps``
  and checkpointed); the step still counts (data, LR schedule). ``nonfinite="raise"`` stops with
  :class:`NonFiniteLossError` naming the term(s) and the step. The decision is reduced over ranks
  (any rank non-finite → every rank skips), so ranks never disagree on a step.
* Checkpoints carry the recipe's class (``checkpoint["recipe"]``), the skip counter and the RNG
  states (torch CPU / CUDA, numpy, random; under data parallelism every rank's, since a sharded
  checkpoint keeps one copy of non-tensor entries), restored when training starts so a resumed run
  draws the same noise as an uninterrupted one. A fresh multi-rank run gives every data-parallel rank
  its own torch stream (:func:`decorrelate_rank_rng`). Loading a checkpoint of another recipe, or of a network
  with other keys or shapes, raises :class:`CheckpointMismatchError` naming the file.
"""
from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.weights import CheckpointMismatchError, recipe_of, state_dict_diff

LRSchedule = Literal["constant", "cosine"]
NonFinitePolicy = Literal["skip", "raise"]

log = logging.getLogger(__name__)


class AutoGuide(NamedTuple):
    """A frozen guide network for autoguidance (Karras et al. 2024; RAE Sec. 5, SpeedDiff A.3.1):
    D = D_guide + scale·(D_main − D_guide) where t lies in ``interval`` (None: everywhere)."""

    net: nn.Module
    scale: float
    interval: tuple[float, float] | None = None


class NonFiniteLossError(FloatingPointError):
    """A training loss term is NaN or infinite and the recipe's policy is ``nonfinite="raise"``."""


def capture_rng_states() -> dict[str, Any]:
    """torch CPU (and CUDA), numpy and ``random`` generator states as tensors and plain Python values
    (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (entries that are missing are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def decorrelate_rank_rng(rank: int) -> None:
    """Give data-parallel rank ``rank`` > 0 its own torch stream (CPU and CUDA), derived from the seed.

    ``seed_everything`` (and Lightning's re-seeding at process-group set-up) gives every rank the same
    seed: without this each rank would draw the same noise and t for its shard of the global batch,
    shrinking the effective noise batch by the number of ranks. Rank 0 keeps its stream, so a
    single-process run is unchanged."""
    if rank > 0:
        torch.manual_seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)


def warmup_schedule_factor(
    step: int, warmup_steps: int, total_steps: int | None, schedule: LRSchedule, min_lr_ratio: float
) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then constant or a cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class DiffusionRecipe(L.LightningModule):
    """Base class: optimizer + schedule, loss logging, FSDP2 ``configure_model``, ``sample`` surface.

    Subclasses set ``self.net`` (the denoiser) and implement ``compute_losses(batch, generator)``
    returning a dict whose ``"loss"`` entry is the total to minimise. ``nonfinite`` is the policy for
    a NaN / infinite loss term ("skip" or "raise", see the module docstring); a subclass with its own
    ``training_step`` calls ``self.losses_are_finite(losses)`` and skips its update when it is False.
    Subclasses that override ``on_save_checkpoint`` / ``on_load_checkpoint`` / ``on_train_start`` /
    ``on_fit_start`` / ``on_before_optimizer_step`` call super.
    """

    net: nn.Module
    # init args that read weight files (e.g. SiD2 ``init_from``): left at their defaults by ``net_from_hparams``
    weight_loading_args: tuple[str, ...] = ()

    def __init__(
        self,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        min_lr: float = 0.0,
        fsdp_param_dtype: Literal["float32", "bfloat16"] | None = None,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        super().__init__()
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.nonfinite_steps = 0  # training steps skipped for a non-finite loss (checkpointed)
        self._pending_rng: Mapping[str, Any] | None = None
        self._drop_gradients = False  # set by a skipped step under data parallelism
        self.lr = lr
        self.betas = tuple(betas)
        self.weight_decay = weight_decay
        self.adam_eps = adam_eps
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.min_lr = min_lr
        self.fsdp_param_dtype = fsdp_param_dtype
        self.tokenizer: nn.Module | None = None  # frozen encode/decode pair of latent recipes (DESIGN contract)
        self.latent_scale = 1.0
        # kept outside the module tree: the guide is neither trained, sharded nor saved with the recipe
        object.__setattr__(self, "_autoguide", None)

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

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
        return losses["loss"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if getattr(self, "_drop_gradients", False):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # AdamW leaves parameters (and their moments) without a gradient untouched
            self._drop_gradients = False

    def losses_are_finite(self, losses: Mapping[str, Tensor]) -> bool:
        """True if every loss term is finite on every rank; otherwise apply the ``nonfinite`` policy:
        raise :class:`NonFiniteLossError`, or warn, count the step in ``nonfinite_steps`` and return False."""
        names = [k for k, v in losses.items() if torch.is_tensor(v) and v.is_floating_point()]
        finite = torch.stack([torch.isfinite(losses[k].detach()).all() for k in names]) if names else None
        local_bad = finite is not None and not bool(finite.all())  # one host sync for all terms
        bad = local_bad
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(local_bad, all=False)
        if self._trainer is not None:
            self.log("train/nonfinite_steps", float(self.nonfinite_steps + int(bad)), prog_bar=False, batch_size=1)
        if not bad:
            return True
        flags = finite.tolist() if finite is not None else []
        terms = ", ".join(f"{k}={losses[k].detach().float().mean().item()}" for k, ok in zip(names, flags) if not ok)
        where = f"global step {self.global_step}" if self._trainer is not None else "this step"
        if self._trainer is not None:
            where += f" (epoch {self.current_epoch}, batch index {self.trainer.fit_loop.epoch_loop.batch_idx})"
        what = f"non-finite loss term(s) {terms}" if terms else "a non-finite loss term on another rank"
        if self.nonfinite == "raise":
            raise NonFiniteLossError(
                f"{type(self).__name__}: {what} at {where}. Lower the learning rate, enable gradient clipping "
                "(trainer.gradient_clip_val) or set model.init_args.nonfinite: skip to skip such steps")
        self.nonfinite_steps += 1
        log.warning("%s: %s at %s; step skipped (%d skipped so far)", type(self).__name__, what, where,
                    self.nonfinite_steps)
        return False

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

    def setup(self, stage: str) -> None:
        """Manual-optimisation (GAN) recipes under DDP: each of their backward passes leaves some parameters
        without a gradient (the discriminator in the generator step, everything else in the discriminator
        step), which DDP accepts only with ``find_unused_parameters``: switch it on before DDP wraps the module
        (configs/scale/ddp_8gpu.yaml leaves it off for the single-optimizer recipes, where it only costs time)."""
        super().setup(stage)
        strategy = self._trainer.strategy if self._trainer is not None else None
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if stage == "fit" and not self.automatic_optimization and isinstance(kwargs, dict) \
                and not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            log.info("%s: DDP find_unused_parameters switched on (two optimizers, disjoint backward passes)",
                     type(self).__name__)

    # ---------------------------------------------------------------- checkpoints
    @classmethod
    def recipe_name(cls) -> str:
        """``module.Class`` of this recipe, stored in every checkpoint."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
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

    def flow_guidance(self, cfg_scale: float, cfg_interval: tuple[float, float] | None) -> Any:
        """The guided velocity ``(x, t, y) -> v`` the flow samplers integrate (SiT, RAE stage 2, SpeedDiff):
        autoguidance with ``self.autoguide`` (v_guide + w·(v − v_guide), same labels, its t-interval) when set,
        else CFG with ``cfg_scale`` on ``cfg_interval`` against the null label ``num_classes``."""
        from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser

        ag = self.autoguide
        if ag is not None:
            return GuidedDenoiser(lambda x, t, y: self.net(x, t, y), scale=ag.scale,
                                  guide_fn=lambda x, t, y: ag.net(x, t, y), interval=ag.interval)
        return GuidedDenoiser(lambda x, t, y: self.net(x, t, y), scale=cfg_scale, null_label=self.num_classes,
                              interval=cfg_interval)

    @classmethod
    def net_from_hparams(cls, hparams: Mapping[str, Any]) -> nn.Module:
        """The (randomly initialised) ``net`` this recipe builds from a checkpoint's ``hyper_parameters``: the
        autoguidance guide of ``callbacks.AutoGuidance``. Keys the constructor does not take (``_class_path``, ...)
        and ``weight_loading_args`` are dropped; a recipe whose constructor builds costly frozen modules overrides it."""
        import inspect

        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in hparams.items() if k in accepted and k not in cls.weight_loading_args}
        return cls(**kwargs).net

    @torch.no_grad()
    def sample(self, labels: Tensor, **kwargs: Any) -> Tensor:
        """Images in [-1, 1], NCHW, for int64 ``labels`` (``num_classes`` = unconditional)."""
        raise NotImplementedError

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.sample(batch["label"])

    # ---------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in frozen)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, eps=self.adam_eps
        )
        total = None
        if self.lr_schedule == "cosine" and self._trainer is not None:
            total = int(self.trainer.estimated_stepping_batches)
        ratio = self.min_lr / self.lr if self.lr > 0 else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_schedule_factor(step, self.warmup_steps, total, self.lr_schedule, ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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

    def configure_model(self) -> None:
        """FSDP2: ``fully_shard`` each block, then each root (the denoiser), on the data-parallel mesh
        (ModelParallelStrategy).

        ``frozen_modules`` (tokenizers, DINOv2 / representation targets) stay replicated: they hold no
        gradients or optimizer state, so sharding would save only their weights while adding an all-gather
        to every forward (README "Scaling out"). A trainable parameter outside ``shard_roots`` would not be
        sharded, hence never averaged over ranks: it is refused with an error.
        """
        mesh = self.device_mesh
        if mesh is None:
            return
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        roots = self.shard_roots()
        if isinstance(roots[0], FSDPModule):  # configure_model runs again for validate/test after fit
            return
        in_roots = {id(p) for root in roots for p in root.parameters()}
        trained = {id(p) for p in self.trainable_parameters()}
        stray = [n for n, p in self.named_parameters() if id(p) in trained and id(p) not in in_roots]
        if stray:
            raise ValueError(f"{type(self).__name__}.configure_model shards only {self.shard_roots_names()}, but "
                             f"{stray[:3]} are trained too: add their module to shard_roots() (they would diverge "
                             "across ranks)")
        dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        param_dtype = getattr(torch, self.fsdp_param_dtype) if self.fsdp_param_dtype else None
        # compute in bf16 if asked, but always reduce gradients in fp32
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for unit in self.shard_units():
            fully_shard(unit, mesh=dp_mesh, mp_policy=policy)
        for root in roots:
            fully_shard(root, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=self.reshard_root_after_forward(root))

    def reshard_root_after_forward(self, root: nn.Module) -> bool:
        """False keeps a root's own parameters gathered from its forward until its backward: needed for a root
        called through methods whose outputs FSDP cannot hook for the backward (SpeedDiff's VAE ``posterior``)."""
        return True

    def shard_roots_names(self) -> list[str]:
        names = {id(m): n for n, m in self.named_modules()}
        return [names.get(id(m), type(m).__name__) for m in self.shard_roots()]

    # ---------------------------------------------------------------- manual optimisation (GAN recipes)
    def manual_optimizer_step(self, optimizer: Any, loss: Tensor | None, count: bool = True,
                              grad_clip: float | None = None) -> None:
        """Backward, clip (norm ``grad_clip``) and step one optimizer under manual optimisation.

        ``loss=None`` steps without gradients (a skipped update: Adam leaves parameters without a gradient
        untouched). ``count=False`` keeps the step out of ``trainer.global_step`` (a discriminator's update)."""
        optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            self.manual_backward(loss)
            if grad_clip is not None:
                self.clip_gradients(optimizer, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm")
        if count:
            optimizer.step()
        else:
            from lightning.pytorch.core.optimizer import do_nothing_closure

            self.trainer.strategy.optimizer_step(optimizer.optimizer, do_nothing_closure)


def check_checkpoint_matches(recipe: DiffusionRecipe, checkpoint: Mapping[str, Any], source: Any = None) -> None:
    """Raise :class:`CheckpointMismatchError` (naming ``source``) if ``checkpoint`` was written by another
    recipe class or holds network tensors whose names or shapes differ from ``recipe``'s."""
    where = f"checkpoint {source}" if source is not None else "checkpoint"
    saved = recipe_of(checkpoint)
    if saved is not None and saved != recipe.recipe_name():
        raise CheckpointMismatchError(
            f"{where} was written by recipe {saved}, not {recipe.recipe_name()}: pass a checkpoint of this "
            "recipe to --ckpt_path (or change model.class_path to the recipe that wrote it)")
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping) or not state:
        return
    ours = {k: v for k, v in recipe.state_dict().items() if torch.is_tensor(v)}
    if any(type(v).__name__ == "DTensor" for v in ours.values()):
        return  # sharded: the strategy's loader checks the distributed state
    if not getattr(recipe, "strict_loading", True):  # a recipe may leave e.g. frozen encoders out of checkpoints
        ours, state = ({k: v for k, v in d.items() if k in state and k in ours} for d in (ours, state))
    diff = state_dict_diff(ours, state)
    if diff:
        raise CheckpointMismatchError(
            f"{where} does not fit {type(recipe).__name__} as configured: {diff}. Resume with the configuration "
            "that wrote it (its hyper_parameters are stored in the checkpoint)")


def check_data_fits(recipe: DiffusionRecipe, datamodule: Any) -> None:
    """Raise ValueError naming the config keys when the datamodule's classes or image shape do not fit the
    recipe's network (before a label beyond the embedding table or a wrong-size image reaches torch)."""
    if datamodule is None:
        return
    data_classes = getattr(datamodule, "num_classes", None)
    try:
        model_classes = recipe.num_classes
    except AttributeError:
        model_classes = None
    if isinstance(data_classes, int) and isinstance(model_classes, int) and data_classes > model_classes:
        raise ValueError(
            f"data.init_args.num_classes={data_classes} but {type(recipe).__name__} was built for num_classes="
            f"{model_classes} (label {model_classes} is its null class): make model.init_args.num_classes match")
    expected = recipe.expected_image_shape()
    shape = getattr(datamodule, "image_shape", None)
    if expected is not None and shape is not None and not hasattr(datamodule, "latent_shape"):
        if tuple(shape) != tuple(expected):
            raise ValueError(
                f"the datamodule yields images of shape {tuple(shape)} (data.init_args.resolution) but "
                f"{type(recipe).__name__}'s network takes {tuple(expected)} (model input size / in_channels): "
                "make them match")
