"""SR-DiT objective (official SILoss + train.py weights) through ``import_official`` + ``SRDiTLoss``
against reference/srdit/loss.json: time shift, every term and the weighted total."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import dimension_shift, shift_time
from speedrun_diffusion.lightning_modules.losses.srdit_loss import SRDiTLoss
from tests.conftest import reference_cases
from tests.reference.conftest import Executed
from tests.reference.srdit_common import assert_matches, load_srdit_case

CASES = reference_cases("srdit", "loss")


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_srdit_loss_terms_and_total(path: Path, executed: Executed) -> None:
    spec, data, net = load_srdit_case(path)
    net = executed(net.train())
    loss_cfg, weights = spec["config"]["loss"], spec["config"]["weights"]
    x0 = data["input/x0"]
    s = dimension_shift(x0[0].numel(), loss_cfg["shift_base"])
    assert s == pytest.approx(spec["derived"]["shift"], rel=1e-12)
    t = shift_time(data["input/t_uniform"].flatten(), s)
    assert_matches(t.reshape(data["output/time_input"].shape), data["output/time_input"], spec, "time_input")
    loss_fn = SRDiTLoss(repa_weight=weights["proj_coeff"], cls_weight=weights["cls"], cfm_weight=weights["cfm_coeff"],
                        shift_base=loss_cfg["shift_base"])
    y = data["input/y"]
    with torch.no_grad():
        terms = loss_fn(
            net, x0, y, [data["input/zs0"]], data["input/cls_token"],
            t=t, noise=data["input/noise"], noise_cls=data["input/noise_cls"],
            force_drop=data["input/labels_after_drop"] != y, ids_keep=data["input/ids_keep"],
            path_drop=bool(data["input/path_dropped"][0]),
        )
    expected = {
        "velocity": data["output/loss_mean"],
        "repa": data["output/proj_loss"],
        "cls": data["output/loss_mean_cls_weighted"] / weights["cls"],
        "cfm": data["output/cfm_loss"],
        "cfm_cls": data["output/cfm_loss_cls"],
        "loss": data["output/total_loss"],
    }
    for name, ref in expected.items():
        assert_matches(terms[name], ref, spec, name)
    assert_matches(terms["cls"], data["output/denoising_loss_cls"].mean(), spec, "cls")
    assert_matches(weights["cfm_coeff"] * terms["cfm"], data["output/cfm_loss_weighted"], spec, "cfm_weighted")
    assert_matches(weights["proj_coeff"] * terms["repa"], data["output/proj_loss_weighted"], spec, "repa_weighted")
