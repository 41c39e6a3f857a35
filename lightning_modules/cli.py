"""The ``speedrun-diffusion`` console script: LightningCLI over every recipe, datamodule and callback.

    speedrun-diffusion fit --config configs/sit/tiny_cpu.yaml
    speedrun-diffusion fit --config configs/sit/tiny_cpu.yaml --ckpt_path last   # resume
    speedrun-diffusion validate --config configs/sit/tiny_cpu.yaml --ckpt_path last
    speedrun-diffusion fit --config configs/sit/tiny_cpu.yaml --print_config

``parser_mode="omegaconf"`` lets configs interpolate (``num_classes: ${data.init_args.num_classes}``);
``model`` and ``data`` take any LightningModule / LightningDataModule by ``class_path``, so the
recipes and user modules are all reachable from YAML. Unknown or mistyped keys are rejected by the
parser with the key's name.
"""
from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI object (``run=False`` parses and instantiates without running a subcommand)."""
    # configs live in the repository (not the wheel); imports make the short class names resolvable
    import callbacks  # noqa: F401
    import datamodules  # noqa: F401
    import lightning_modules  # noqa: F401

    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Console-script entry point (returns None so the exit status is 0 on success)."""
    build_cli()


if __name__ == "__main__":
    main()
