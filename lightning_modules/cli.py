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
LightningCLI reads the model's hyper-parameters from the checkpoint and applies them; before that,
a checkpoint written by another recipe than the configured ``model.class_path`` is refused with an
error naming the file and both recipes (Lightning would otherwise switch the model class silently).
"""
from __future__ import annotations

import importlib.resources
import sys
import zipfile
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from speedrun_diffusion.lightning_modules.process_group import leave_process_group
from speedrun_diffusion.lightning_modules.weights import (
    CheckpointMismatchError,
    qualified_class_name,
    recipe_of,
    safe_torch_load,
)


class SpeedrunCLI(LightningCLI):
    """LightningCLI whose checkpoint loading defaults to ``weights_only=True`` (safe loading)."""

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand") if self.subcommand is not None else None
        if subcommand is not None:
            arguments = self.config_init[subcommand]
            # Lightning leaves None to torch, whose default an environment variable can turn off
            if "weights_only" in arguments and arguments["weights_only"] is None:
                arguments["weights_only"] = True

    def _parse_ckpt_path(self) -> None:
        """Refuse a checkpoint of another recipe (naming the file), then let Lightning apply its hyper-parameters."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            # mmap (zip format only): tensors stay on disk; a refused pickle raises naming the file
            checkpoint = safe_torch_load(ckpt_path, mmap=zipfile.is_zipfile(ckpt_path) or None)
            saved = recipe_of(checkpoint)
            model = self.config[subcommand].get("model")
            configured = model.get("class_path") if model is not None else None
            if saved and configured and saved != qualified_class_name(configured):
                raise CheckpointMismatchError(
                    f"checkpoint {ckpt_path} was written by recipe {saved}, but the config trains "
                    f"{qualified_class_name(configured)} (model.class_path): pass a checkpoint of this recipe, or "
                    "the config of the recipe that wrote it")
        super()._parse_ckpt_path()


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
