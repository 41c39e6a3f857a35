"""`SFID`: spatial FID (Nash et al. 2021) as the ADM evaluator computes it (metrics README §2.4).

The Fréchet distance of `FID` on the 2023-d spatial features: Inception ``mixed_6/conv``
(= torch-fidelity ``Mixed_6d.branch1x1``), channels 0..6 of the 17x17 map, flattened NHWC
(``callbacks.features.inception.spatial_features``). Reference statistics are the ``mu_s`` /
``sigma_s`` arrays of an ADM reference ``.npz``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from speedrun_diffusion.callbacks.metrics.fid import FID

SFID_FEATURES = 17 * 17 * 7  # 2023: 17x17 positions x the first 7 channels


class SFID(FID):
    """sFID: `FID` over spatial features; ``reference`` reads ``mu_s`` / ``sigma_s`` from an ADM ``.npz``."""

    npz_keys = ("mu_s", "sigma_s")

    def __init__(self, num_features: int = SFID_FEATURES, reference: str | Path | tuple[Any, Any] | None = None,
                 reset_real_features: bool = True, **kwargs: Any) -> None:
        super().__init__(num_features=num_features, reference=reference, reset_real_features=reset_real_features,
                         **kwargs)
