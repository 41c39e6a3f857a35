"""SR-DiT network (SiT-B/1 + SPRINT, REG, REPA) loaded through ``import_official`` against the official
forward in eval mode (incl. the null-label ``uncond=True`` call), train mode with pinned routing, and
train mode with the sparse path dropped (reference/srdit/sit_forward_*.json)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.dit import DiTOutput
from speedrun_diffusion.lightning_modules.networks.sprint import SprintDiT
from tests.conftest import reference_cases
from tests.reference.conftest import Executed
from tests.reference.srdit_common import assert_matches, load_srdit_case

EVAL = reference_cases("srdit", "sit_forward_eval")
TRAIN = reference_cases("srdit", "sit_forward_train") + reference_cases("srdit", "sit_forward_train_pathdrop")


def _check(out: DiTOutput, data: dict, spec: dict, prefix: str = "") -> None:
    assert_matches(out.velocity, data[f"output/{prefix}x"], spec, f"{prefix}x")
    assert_matches(out.zs[0], data[f"output/{prefix}zs0"], spec, f"{prefix}zs0")
    assert_matches(out.cls_velocity, data[f"output/{prefix}cls"], spec, f"{prefix}cls")


@pytest.mark.parametrize("path", EVAL, ids=lambda p: p.stem)
def test_forward_eval_and_uncond(path: Path, executed: Executed) -> None:
    spec, data, net = load_srdit_case(path)
    assert isinstance(net, SprintDiT)
    net = executed(net.eval())
    x, t, y, cls = data["input/x"], data["input/t"], data["input/y"], data["input/cls_token"]
    with torch.no_grad():
        _check(net(x, t, y, cls_token=cls), data, spec)
        null = torch.full_like(y, spec["derived"]["null_label"])
        _check(net(x, t, null, cls_token=cls, uncond=True), data, spec, "uncond_")


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.stem)
def test_forward_train_with_recorded_draws(path: Path, executed: Executed) -> None:
    spec, data, net = load_srdit_case(path)
    net = executed(net.train())
    x, t, y, cls = data["input/x"], data["input/t"], data["input/y"], data["input/cls_token"]
    drop = data["input/labels_after_drop"] != y
    assert torch.equal(drop, data["input/label_drop_uniform"] < spec["config"]["class_dropout_prob"])
    ids_keep = data["input/ids_keep"]
    assert ids_keep.shape[1] == net.sprint.num_keep(spec["derived"]["seq_len_with_cls"]) == spec["derived"]["num_keep"]
    assert torch.equal(ids_keep, data["input/token_drop_noise"].argsort(dim=1)[:, : ids_keep.shape[1]])
    path_drop = bool(data["input/path_dropped"][0])
    assert path_drop == bool(data["input/path_drop_uniform"][0] < net.sprint.path_drop_prob)
    with torch.no_grad():
        out = net(x, t, y, cls_token=cls, force_drop=drop, ids_keep=ids_keep, path_drop=path_drop)
    _check(out, data, spec)
    # the dropped labels can equally be fed directly (the embedder maps the null id to its own row)
    with torch.no_grad():
        out = net(x, t, data["input/labels_after_drop"], cls_token=cls, force_drop=torch.zeros_like(drop),
                  ids_keep=ids_keep, path_drop=path_drop)
    _check(out, data, spec)
