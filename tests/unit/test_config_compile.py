"""Which shipped configs compile (issue 23, item 4): every standalone GPU training config turns the ``compile``
group on; the CPU configs leave it off (on 2 CPU cores the compile time exceeds what a tiny run saves,
docs/benchmarks.md "torch.compile"), and so do the latent-caching predict configs (one pass over the data)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import CONFIGS

STANDALONE = [p for p in sorted(CONFIGS.glob("**/*.yaml"))
              if "class_path" in ((yaml.safe_load(p.read_text()) or {}).get("model") or {})]


def _compiles(config: dict) -> bool:
    return bool((((config.get("model") or {}).get("init_args") or {}).get("compile") or {}).get("enabled", False))


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_gpu_training_configs_compile_and_cpu_configs_do_not(path: Path):
    config = yaml.safe_load(path.read_text())
    trainer = config.get("trainer") or {}
    gpu_training = trainer.get("accelerator") == "gpu" and "cache_latents" not in path.name
    assert _compiles(config) == gpu_training, (
        f"{path.relative_to(CONFIGS)}: compile.enabled should be {gpu_training} "
        f"(accelerator {trainer.get('accelerator')!r})")
