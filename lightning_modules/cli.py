"""The ``speedrun-diffusion`` console script: LightningCLI over every recipe, datamodule and callback.

    speedrun-diffusion fit --config configs/sit/tiny_cpu.yaml
    speedrun-diffusion fit --config configs/sit/tiny_cpu.yaml --ckpt_path last   # resume
    speedrun-diffusion validate --config configs/sit/tiny_cpu.yaml --ckpt_path last
    speedrun-diffusion fit --config configs/sit/tiny_cpu.yaml --print_config
    speedrun-diffusion fit --config sit/tiny_cpu          # a config shipped in the wheel, found by name
    speedrun-diffusion sample --ckpt_path runs/sit_tiny_cpu/checkpoints/last.ckpt --output_dir samples/sit

``parser_mode="omegaconf"`` lets configs interpolate (``num_classes: ${data.init_args.num_classes}``);
``model`` and ``data`` take any LightningModule / LightningDataModule by ``class_path``, so the
recipes and user modules are all reachable from YAML. Unknown or mistyped keys are rejected by the
parser with the key's name.

Resuming (``--ckpt_path``) loads with ``weights_only=True`` unless ``--weights_only false`` is given:
a checkpoint can then hold only tensors and plain containers, never code (docs/fault-tolerance.md).
``--ckpt_path last`` means this run's own ``last.ckpt`` — the one in the ``dirpath`` of the config's
checkpoint callback, which follows ``trainer.default_root_dir`` — and is an error when there is none.
An explicit file and ``last`` are then treated alike: read safely (with the configured ``weights_only``),
refused if another recipe than the configured ``model.class_path`` wrote it, and refused if the configured
``model.init_args`` contradict the hyper-parameters stored in it, naming the keys (LightningCLI would
otherwise replace the ``--model`` overrides with the checkpoint's silently).

With a CPU trainer the process keeps the host memory a step frees for the next one (``host_memory.py``).
"""
from __future__ import annotations

import importlib
import importlib.resources
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from speedrun_diffusion.lightning_modules.host_memory import keep_freed_host_memory
from speedrun_diffusion.lightning_modules.process_group import leave_process_group
from speedrun_diffusion.lightning_modules.weights import (
    CheckpointMismatchError,
    check_written_by,
    qualified_class_name,
    safe_torch_load,
)


class SpeedrunCLI(LightningCLI):
    """LightningCLI whose checkpoint loading defaults to ``weights_only=True`` (safe loading), whose ``--ckpt_path
    last`` is the run's own ``last.ckpt``, which refuses a checkpoint the config contradicts (module docstring), and
    which keeps freed host memory for the next step when the trainer runs on CPU (``host_memory.py``)."""

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand") if self.subcommand is not None else None
        if subcommand is not None:
            arguments = self.config_init[subcommand]
            # Lightning leaves None to torch, whose default an environment variable can turn off
            if "weights_only" in arguments and arguments["weights_only"] is None:
                arguments["weights_only"] = True
        if isinstance(self.trainer.accelerator, CPUAccelerator):
            keep_freed_host_memory()  # no page faults per step (host_memory.py)

    def before_fit(self) -> None:
        """Refuse a fit into a checkpoint folder of another run before anything is written (the logger's folder,
        config.yaml); ``AtomicModelCheckpoint`` checks again at fit start, for fits started from Python."""
        from speedrun_diffusion.callbacks.checkpointing import AtomicModelCheckpoint

        ckpt_path = self.config_init["fit"].get("ckpt_path")
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, AtomicModelCheckpoint):
                problem = callback.folder_problem(ckpt_path)
                if problem:
                    raise FileExistsError(problem)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` to this run's own checkpoint, then read the checkpoint (as the resume will:
        same ``weights_only``) and refuse it if another recipe wrote it or if the configured model contradicts its
        hyper-parameters. The config then builds the model: on every key both hold they agree, so LightningCLI's
        replacement of the config by the checkpoint's hyper-parameters is not needed (and not done)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        section = self.config[subcommand]
        ckpt_path = section.get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = str(own_last_checkpoint(section))
            section["ckpt_path"] = ckpt_path  # Lightning's "last" would take the newest last*.ckpt of the folder
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # a sharded (directory) checkpoint, "best", "hpc": left to Lightning
        weights_only = section.get("weights_only")
        # mmap (zip format only): tensors stay on disk; a refused pickle or a damaged file raises naming the file
        checkpoint = safe_torch_load(ckpt_path, weights_only=False if weights_only is False else None,
                                     mmap=zipfile.is_zipfile(ckpt_path) or None)
        if not isinstance(checkpoint, Mapping):
            raise CheckpointMismatchError(f"checkpoint {ckpt_path} is not a Lightning checkpoint (a dict) but a "
                                          f"{type(checkpoint).__name__}")
        model = section.get("model")
        configured = model.get("class_path") if model is not None else None
        if configured:
            check_written_by(checkpoint, configured, f"checkpoint {ckpt_path}", "the config trains that recipe "
                             "(model.class_path): pass a checkpoint of it, or the config of the recipe that wrote it")
        init_args = model.get("init_args") if model is not None else None
        if configured and init_args is not None:
            given = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
            # how the run is laid out on devices or compiled never conflicts; evaluation runs may sample differently
            ignored = {"sharding", "compile", *getattr(_import_class(configured), "weight_loading_args", ())}
            if subcommand != "fit":
                ignored.add("sampling")
            conflicts = model_conflicts(checkpoint.get("hyper_parameters") or {}, given, ignored)
            if conflicts:
                raise CheckpointMismatchError(
                    f"checkpoint {ckpt_path} was written with other model settings than configured: "
                    + "; ".join(conflicts[:5]) + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
                    + ". Resume with the configuration that wrote it, or start a new run (another "
                    "--trainer.default_root_dir) to change them")


def _import_class(class_path: str) -> Any:
    """The class ``class_path`` names (None if it cannot be imported: the parser reports that itself)."""
    module, _, name = qualified_class_name(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def own_last_checkpoint(section: Any) -> Path:
    """The ``last.ckpt`` of this run: in the ``dirpath`` of the first ``ModelCheckpoint`` among the configured
    ``trainer.callbacks`` that has one (the shipped configs: ``<trainer.default_root_dir>/checkpoints``).
    FileNotFoundError naming it when the run has none yet; ValueError when no checkpoint callback names a folder."""
    callbacks = section.get("trainer", {}).get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    for callback in callbacks:
        cls = _import_class(str(callback.get("class_path", ""))) if hasattr(callback, "get") else None
        init_args = callback.get("init_args") or {}
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint) and init_args.get("dirpath"):
            last = Path(init_args.get("dirpath")) / f"{cls.CHECKPOINT_NAME_LAST}{cls.FILE_EXTENSION}"
            if not last.exists():
                raise FileNotFoundError(
                    f"--ckpt_path last: this run has no checkpoint {last} (trainer.default_root_dir "
                    f"{section.get('trainer', {}).get('default_root_dir')}); start it without --ckpt_path, or pass "
                    "a checkpoint file")
            return last
    raise ValueError("--ckpt_path last needs a ModelCheckpoint with a dirpath in trainer.callbacks (every shipped "
                     "config has one, under trainer.default_root_dir); pass the checkpoint file instead")


def _comparable(value: Any) -> Any:
    """``value`` in one form for both sides of :func:`model_conflicts`: tuples as lists, ``class_path`` entries as
    the class's defining module path (``EulerODE`` and ``...diffusion.samplers.EulerODE`` are one class)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        out = {str(k): _comparable(v) for k, v in value.items()}
        if isinstance(out.get("class_path"), str):
            out["class_path"] = qualified_class_name(out["class_path"])
        return out
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def model_conflicts(saved: Mapping[str, Any], configured: Mapping[str, Any], ignored: Any = (),
                    prefix: str = "model.init_args.") -> list[str]:
    """``"key: checkpoint A, config B"`` for every key (dotted, nested argument groups included) whose value in a
    checkpoint's ``hyper_parameters`` differs from the configured ``model.init_args``. Keys only one side has are
    not conflicts (an argument added or retired since, an output path kept out of the hyper-parameters); private
    entries (``_class_path``) and ``ignored`` top-level keys are skipped."""
    saved, configured = _comparable(saved), _comparable(configured)
    conflicts = []
    for key in sorted(set(saved) & set(configured)):
        if key.startswith("_") or key in ignored:
            continue
        a, b = saved[key], configured[key]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            conflicts += model_conflicts(a, b, (), f"{prefix}{key}.")
        elif a != b:
            conflicts.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
    return conflicts


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (``sid2/tiny_cpu``, ``scale/ddp_8gpu``, ...)."""
    root = importlib.resources.files("speedrun_diffusion.configs")
    names: list[str] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(("_", ".")):
                stack.append((entry, f"{prefix}{entry.name}/"))
            elif entry.name.endswith(".yaml"):
                names.append(prefix + entry.name[: -len(".yaml")])
    return sorted(names)


def resolve_config(value: str) -> str:
    """A ``--config`` value as a path: an existing file as given, else the shipped config of that name
    (``sid2/tiny_cpu``, ``sid2/tiny_cpu.yaml`` or ``configs/sid2/tiny_cpu.yaml``, from any working directory).
    Raises FileNotFoundError naming the value and the shipped configs."""
    if Path(value).is_file() or value.lstrip().startswith("{"):  # a file, or an inline YAML / JSON mapping
        return value
    name = value[len("configs/"):] if value.startswith("configs/") else value
    name = name if name.endswith(".yaml") else name + ".yaml"
    shipped = importlib.resources.files("speedrun_diffusion.configs").joinpath(*name.split("/"))
    if shipped.is_file():
        return str(shipped)
    raise FileNotFoundError(f"config {value!r} is neither a file nor a shipped config; shipped: "
                            + ", ".join(shipped_configs()))


def resolve_config_arguments(args: list[str]) -> list[str]:
    """``args`` with every ``-c`` / ``--config`` value replaced by :func:`resolve_config`'s path."""
    out, take_next = [], False
    for arg in args:
        if take_next:
            out.append(resolve_config(arg))
            take_next = False
        elif arg in ("-c", "--config"):
            out.append(arg)
            take_next = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg[len("--config="):]))
        else:
            out.append(arg)
    return out


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI object (``run=False`` parses and instantiates without running a subcommand); ``args`` default to
    ``sys.argv[1:]``, with shipped configs found by name (:func:`resolve_config`)."""
    # imported so that YAML can name classes by their short names (class_path: SiT)
    import speedrun_diffusion.callbacks  # noqa: F401
    import speedrun_diffusion.datamodules  # noqa: F401
    import speedrun_diffusion.lightning_modules  # noqa: F401

    given = sys.argv[1:] if args is None else list(args)
    replaced = sorted({a.split("=")[0] for a in given if a.split("=")[0] in ("--optimizer", "--lr_scheduler")})
    if replaced:
        raise SystemExit(f"speedrun-diffusion: error: {', '.join(replaced)} would replace the recipe's AdamW and "
                         "schedule; set them in its optimizer group instead (--model.init_args.optimizer.lr 1e-3, "
                         "...optimizer.schedule cosine; docs/configuration.md)")
    if args is None:  # the console script: LightningCLI reads sys.argv itself (and warns if args are given too)
        sys.argv[1:] = resolve_config_arguments(sys.argv[1:])
    else:
        args = resolve_config_arguments(list(args))
    return SpeedrunCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the recipes configure AdamW + schedule from their optimizer group
        args=args,
        run=run,
    )


def main() -> None:
    """Console-script entry point (returns None so the exit status is 0 on success); a multi-process run's
    ranks leave their process group together (``process_group.py``: a gloo group can abort the exit otherwise)."""
    if sys.argv[1:2] == ["sample"]:  # not a Lightning subcommand: images from a trained model (sample_command.py)
        from speedrun_diffusion.lightning_modules.sample_command import main as sample_main

        sample_main(sys.argv[2:])
        return
    try:
        sys.argv[1:] = resolve_config_arguments(sys.argv[1:])
    except FileNotFoundError as error:
        sys.exit(f"speedrun-diffusion: error: {error}")
    build_cli()
    leave_process_group()


if __name__ == "__main__":
    main()
