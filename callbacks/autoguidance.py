"""`AutoGuidance`: guide a recipe's sampling with a frozen, weaker version of its own network.

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"; RAE App. D,
SpeedDiff A.3.1) replaces the unconditional prediction of CFG by the *conditional* prediction of a worse
model — an early checkpoint or a smaller variant of the same recipe — so the guided denoiser is
D_w = D_guide + w·(D_main − D_guide) (w = 1: the main model alone), applied where t (or log-SNR) lies in
``interval``. The recipes' ``sample()`` do the mixing (``GuidedDenoiser(guide_fn=...)``); this callback
only builds the guide and hands it over with ``pl_module.set_autoguide(net, scale, interval)``.

Guide sources:

* a Lightning checkpoint of the *same recipe class* (e.g. a short, small run of the same config): the
  network is rebuilt from the checkpoint's ``hyper_parameters`` (``DiffusionRecipe.net_from_hparams``),
  and loaded with the checkpoint's EMA shadow (``callbacks.EMA``) when it has one and ``use_ema``,
  else with its raw ``net.*`` weights (buffers always from the raw state dict);
* an official checkpoint (``official_kind``, e.g. ``"rae.ditdh"`` or ``"srdit.sit"``) through
  ``load_official_checkpoint`` (its EMA weights when ``use_ema``; ``official_config`` = the official
  constructor kwargs when the file carries none).

Files are read with ``weights_only=True`` (``lightning_modules/weights.py``): a guide file can hold only tensors
and plain containers. The guide is frozen (no gradients, eval mode), kept outside the module tree (never in
the optimizer nor in ``pl_module.state_dict()``) and moved to the module's device and dtype when fit,
validation, test or prediction starts. A one-step probe sample with the guide active everywhere then checks
that it fits the main network (same inputs, same output shapes), so a wrong guide fails before a long
evaluation, not in its middle.

Sharding: the guide is *replicated*, not sharded — every rank reads the file and holds the whole guide
(guides are small: DiT^DH-S guides DiT^DH-XL, SpeedDiff's bad model has half the blocks). Its forward is
local, so it adds no collective to the (sharded, collective) main forward.

Checkpoints stay light: the callback state holds the guide's source (path, official kind and config),
``use_ema``, scale and interval; with ``store_weights=True`` also the guide's weights and what is needed to
rebuild it, so a checkpoint samples with the same guide after the guide file is gone.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.weights import (
    CheckpointMismatchError,
    check_written_by,
    load_exact,
    network_weights,
    read_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = ["AutoGuidance", "guide_from_lightning_checkpoint"]


def guide_from_lightning_checkpoint(recipe: type[DiffusionRecipe], path: str | Path, use_ema: bool = True,
                                    overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(guide network, its hyper-parameters) from a Lightning checkpoint written by ``recipe`` (RAE App. D: an
    early, small checkpoint of the same recipe); raises :class:`CheckpointMismatchError` for another recipe
    or for weights that do not fit the network its hyper-parameters describe."""
    checkpoint = read_checkpoint(path, "guide checkpoint")
    check_written_by(checkpoint, recipe.recipe_name(), f"guide checkpoint {path}", "autoguidance needs a (weaker) "
                     "network of the model's recipe — or an official file with official_kind")
    hparams = {**(checkpoint.get("hyper_parameters") or {}), **(overrides or {})}
    weights, used_ema = network_weights(checkpoint, "net.", use_ema, source=f"guide checkpoint {path}")
    if use_ema and not used_ema:
        log.warning("AutoGuidance: guide checkpoint %s has no EMA shadow; the guide uses its raw network weights",
                    path)
    net = recipe.net_from_hparams(hparams)
    load_exact(net, weights, f"guide checkpoint {path} (the network its hyper-parameters describe)")
    return net, hparams


class AutoGuidance(L.Callback):
    """Builds a frozen guide network and makes ``pl_module.sample()`` autoguide with it.

    Args:
        checkpoint: the guide file — a Lightning checkpoint of the same recipe, or an official checkpoint
            (``official_kind``). May be None only when a checkpoint's callback state provides it (resume).
        official_kind: an ``import_official`` kind (``lightning_modules.checkpoints``); None: Lightning checkpoint.
        official_config: the official constructor kwargs, for official files that carry no config.
        use_ema: load the EMA weights (Lightning: ``callbacks.EMA``'s shadow; official: the ``ema`` entry).
        scale: guidance weight w of D_guide + w·(D_main − D_guide); 1 = no guidance (RAE: 1.42 at 256², 1.5 at 512²).
        interval: closed [low, high] where guidance applies, in the recipe's own variable — flow time t for SiT,
            SR-DiT, RAE and SpeedDiff (t = 1 noise), log-SNR λ for SiD2; None: every step.
        hparams_overrides: entries replacing the guide checkpoint's ``hyper_parameters`` before the network is
            rebuilt (e.g. an argument renamed since the guide was trained).
        store_weights: also save the guide's weights (and how to rebuild it) in this run's checkpoints.
        check: run a one-step probe sample at start to verify the guide fits the main network.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        official_kind: str | None = None,
        official_config: dict[str, Any] | None = None,
        use_ema: bool = True,
        *,
        scale: float,
        interval: tuple[float, float] | None = None,
        hparams_overrides: dict[str, Any] | None = None,
        store_weights: bool = False,
        check: bool = True,
    ) -> None:
        if not math.isfinite(float(scale)):
            raise ValueError(f"AutoGuidance scale must be finite, got {scale}")
        if interval is not None:
            if len(interval) != 2 or float(interval[0]) > float(interval[1]):
                raise ValueError(f"AutoGuidance interval must be [low, high] with low <= high, got {interval}")
            interval = (float(interval[0]), float(interval[1]))
        if official_kind is not None:
            from speedrun_diffusion.lightning_modules.checkpoints import OFFICIAL_IMPORTERS

            if official_kind not in OFFICIAL_IMPORTERS:
                raise KeyError(f"AutoGuidance official_kind {official_kind!r} is unknown; known: "
                               f"{sorted(OFFICIAL_IMPORTERS)}")
        if official_kind is None and official_config is not None:
            raise ValueError("AutoGuidance official_config is given without official_kind")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.official_kind = official_kind
        self.official_config = dict(official_config) if official_config is not None else None
        self.use_ema = bool(use_ema)
        self.scale = float(scale)
        self.interval = interval
        self.hparams_overrides = dict(hparams_overrides or {})
        self.store_weights = store_weights
        self.check = check
        self.guide: nn.Module | None = None
        self._guide_hparams: dict[str, Any] | None = None  # the Lightning guide's hyper-parameters (store_weights)
        self._restored: Mapping[str, Any] | None = None  # a checkpoint's stored guide weights, used by _build
        self._checked: set[tuple[str, str]] = set()  # (device, dtype) placements already probed
        self._recipe: str | None = None  # the recipe the guide was built for

    # ---------------------------------------------------------------- source
    def _source(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "official_kind": self.official_kind,
                "official_config": self.official_config, "use_ema": self.use_ema}

    def describe(self) -> str:
        what = f"official {self.official_kind} file" if self.official_kind else "guide checkpoint"
        return f"{what} {self.checkpoint}"

    # ---------------------------------------------------------------- building
    def build(self, pl_module: L.LightningModule) -> nn.Module:
        """The frozen guide on the CPU (built once): from stored weights, an official file or a Lightning checkpoint."""
        if self.guide is not None:
            return self.guide
        if not isinstance(pl_module, DiffusionRecipe):
            raise TypeError(f"AutoGuidance needs a DiffusionRecipe (set_autoguide, sample); got {type(pl_module).__name__}")
        restored = self._restored
        if restored is not None and restored.get("weights") is not None:
            net = self._rebuild_stored(type(pl_module), restored)
        elif self.checkpoint is None:
            raise ValueError("AutoGuidance needs checkpoint= (a Lightning checkpoint of the same recipe, or an official "
                             "file with official_kind=)")
        elif not Path(self.checkpoint).expanduser().is_file():
            raise FileNotFoundError(f"AutoGuidance: {self.describe()} not found")
        elif self.official_kind is not None:
            from speedrun_diffusion.lightning_modules.checkpoints import load_official_checkpoint

            net = load_official_checkpoint(Path(self.checkpoint).expanduser(), self.official_kind,
                                           use_ema=self.use_ema, config=self.official_config)
        else:
            net, self._guide_hparams = guide_from_lightning_checkpoint(
                type(pl_module), Path(self.checkpoint).expanduser(), self.use_ema, self.hparams_overrides)
        self._restored = None
        self._recipe = pl_module.recipe_name()
        self.guide = net.requires_grad_(False).eval()
        return self.guide

    def _rebuild_stored(self, recipe: type[DiffusionRecipe], state: Mapping[str, Any]) -> nn.Module:
        """The guide saved with ``store_weights=True``: rebuilt from its hyper-parameters / official config."""
        weights = state["weights"]
        where = f"AutoGuidance weights stored in the checkpoint (guide {state.get('checkpoint')})"
        if state.get("official_kind"):
            from speedrun_diffusion.lightning_modules.checkpoints import import_official

            return import_official(state["official_kind"], weights, state.get("official_config") or {})
        if state.get("recipe") and state["recipe"] != recipe.recipe_name():
            raise CheckpointMismatchError(f"{where} belong to recipe {state['recipe']}, not {recipe.recipe_name()}")
        self._guide_hparams = dict(state.get("hparams") or {})
        net = recipe.net_from_hparams(self._guide_hparams)
        load_exact(net, weights, where)
        return net

    # ---------------------------------------------------------------- installing
    def install(self, pl_module: L.LightningModule) -> None:
        """Move the guide to the module's device / dtype, check it once there and call ``set_autoguide``."""
        net = self.build(pl_module).to(device=pl_module.device, dtype=pl_module.dtype)
        key = (str(pl_module.device), str(pl_module.dtype))
        if self.check and key not in self._checked:
            self._probe(pl_module, net)
            self._checked.add(key)
        pl_module.set_autoguide(net, self.scale, self.interval)

    @torch.no_grad()
    def _probe(self, pl_module: DiffusionRecipe, net: nn.Module) -> None:
        """One one-step sample of one image with the guide weighted everywhere (w = 2), so it is evaluated."""
        previous = pl_module.autoguide
        pl_module.set_autoguide(net, 2.0, None)
        generator = torch.Generator(device=pl_module.device).manual_seed(0)  # leaves the global RNG stream alone
        try:
            pl_module.sample(torch.zeros(1, dtype=torch.long, device=pl_module.device), num_steps=1,
                             generator=generator)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"AutoGuidance: the guide from {self.describe()} does not fit "
                             f"{type(pl_module).__name__}'s network: {error}") from error
        finally:
            if previous is None:
                pl_module.set_autoguide(None)
            else:
                pl_module.set_autoguide(*previous)

    # built when fit / validation / test / prediction starts: after a resumed checkpoint restored this
    # callback's state (Lightning restores callbacks after `setup`) and after the module reached its device
    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install(pl_module)

    on_fit_start = _start
    on_validation_start = _start
    on_test_start = _start
    on_predict_start = _start

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {**self._source(), "scale": self.scale,
                                 "interval": None if self.interval is None else list(self.interval)}
        if self.store_weights and self.guide is not None:
            state["weights"] = {k: v.detach().cpu().clone() for k, v in self.guide.state_dict().items()}
            state["hparams"] = self._guide_hparams
            state["recipe"] = self._recipe
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adopt the saved guide when this callback was configured without one (resume / validate with a bare
        ``AutoGuidance(scale=...)``); otherwise the configured source wins (a warning names both if they differ)
        and stored weights are used only if they come from the configured source."""
        if not state_dict:
            return
        saved = {k: state_dict.get(k) for k in ("checkpoint", "official_kind", "official_config", "use_ema")}
        if self.checkpoint is None and self.official_kind is None:
            self.checkpoint, self.official_kind = saved["checkpoint"], saved["official_kind"]
            self.official_config = saved["official_config"]
            self.use_ema = bool(saved["use_ema"]) if saved["use_ema"] is not None else self.use_ema
            self.scale = float(state_dict.get("scale", self.scale))
            interval = state_dict.get("interval")
            self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        elif saved != self._source():
            log.warning("AutoGuidance: the checkpoint was written with guide %s, this run is configured with %s; "
                        "using the configured one", saved, self._source())
            return
        if state_dict.get("weights") is not None and self.guide is None:
            self._restored = state_dict
