"""INVAE (official AutoencoderKL) through ``import_official`` against reference/srdit/invae_forward.json."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.invae import INVAE
from tests.conftest import reference_cases
from tests.reference.conftest import Executed
from tests.reference.srdit_common import assert_matches, load_srdit_case

CASES = reference_cases("srdit", "invae_forward")


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_invae_forward_mode_decode(path: Path, executed: Executed) -> None:
    spec, data, vae = load_srdit_case(path, kind="srdit.invae")
    assert isinstance(vae, INVAE)
    vae = executed(vae.eval())
    x = data["input/x"]
    with torch.no_grad():
        posterior, z, recon = vae(x, noise=data["input/sample_noise"])
        outputs = {
            "moments": posterior.moments, "mean": posterior.mean, "logvar": posterior.logvar, "std": posterior.std,
            "z_sample": z, "recon": recon,
            "decoded_mode": vae.decode(posterior.mode()), "decoded_z": vae.decode(data["input/z"]),
        }
        assert z.shape[1:] == tuple(spec["derived"]["latent_shape"])
        torch.testing.assert_close(vae.encode(x, sample=False), posterior.mean)
        torch.testing.assert_close(vae.encode(x, noise=data["input/sample_noise"]), z)
    for name, value in outputs.items():
        assert_matches(value, data[f"output/{name}"], spec, name)
