"""Every shipped config writes under its ``trainer.default_root_dir`` (issue 21, item 1): checkpoint folders, sample
grids, logs and caches are interpolated from it, never written as a fixed path, so ``--trainer.default_root_dir``
moves all of a run's outputs and two runs with different roots share no file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import CONFIGS

# init_args keys of trainer callbacks / the logger that name where a run writes
OUTPUT_KEYS = ("dirpath", "save_dir", "output_dir")
ALL = sorted(CONFIGS.glob("**/*.yaml"))


def _outputs(config: dict) -> list[tuple[str, Any]]:
    """(where, value) of every output path a config sets: trainer callbacks, the logger and model.stats_output."""
    trainer = config.get("trainer") or {}
    found = []
    callbacks = trainer.get("callbacks") or trainer.get("callbacks+") or []
    for i, callback in enumerate(callbacks if isinstance(callbacks, list) else [callbacks]):
        for key in OUTPUT_KEYS:
            if key in (callback.get("init_args") or {}):
                found.append((f"trainer.callbacks[{i}].init_args.{key}", callback["init_args"][key]))
    logger = trainer.get("logger")
    if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
        found.append(("trainer.logger.init_args.save_dir", logger["init_args"]["save_dir"]))
    model_args = (config.get("model") or {}).get("init_args") or {}
    if model_args.get("stats_output"):
        found.append(("model.init_args.stats_output", model_args["stats_output"]))
    return found


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_output_path_follows_default_root_dir(path: Path):
    config = yaml.safe_load(path.read_text()) or {}
    for where, value in _outputs(config):
        assert value is None or "default_root_dir}" in str(value), (
            f"{path.relative_to(CONFIGS)}: {where} = {value!r} is a fixed path; interpolate it from "
            "trainer.default_root_dir")


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_that_writes_has_a_default_root_dir(path: Path):
    config = yaml.safe_load(path.read_text()) or {}
    trainer = config.get("trainer") or {}
    standalone = "model" in config and "class_path" in (config.get("model") or {})  # not an add-on
    if standalone and _outputs(config):
        assert trainer.get("default_root_dir"), f"{path.relative_to(CONFIGS)} writes outputs, has no default_root_dir"
