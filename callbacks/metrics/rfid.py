"""`RFID`: reconstruction FID of an autoencoder (metrics README §2.8).

FID between the pool_3 statistics of the original (ADM centre-cropped, uint8) validation images and
of their reconstructions, quantised exactly like samples; both sides are computed from images,
never from stored statistics (RAE: torch-fidelity ``calculate_metrics(fid=True)`` on the two sets).
The arithmetic is `FID`'s; real = originals, fake = reconstructions.
"""
from __future__ import annotations

from typing import Any

from speedrun_diffusion.callbacks.metrics.fid import FID


class RFID(FID):
    """rFID: `FID` with both sides from images (``update(originals, real=True)``, ``update(recons, real=False)``)."""

    def __init__(self, num_features: int = 2048, **kwargs: Any) -> None:
        if kwargs.get("reference") is not None:
            raise ValueError("rFID compares reconstructions with their originals; fixed reference statistics make no sense")
        kwargs.pop("reference", None)
        kwargs.setdefault("reset_real_features", True)
        super().__init__(num_features=num_features, **kwargs)
