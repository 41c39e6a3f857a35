"""Helpers shared by every test tier (not tests themselves): the repository paths, tiny recipes and toy data."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
CONFIGS = ROOT / "configs"
LAUNCHERS = ROOT / "tests" / "distributed" / "launchers"  # scripts the distributed tests start in subprocesses
