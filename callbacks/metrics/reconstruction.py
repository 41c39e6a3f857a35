"""`PSNR` and `SSIM` of autoencoder reconstructions: torchmetrics, configured as the tokenizer papers report.

Both are evaluated on the uint8-quantised images (originals vs reconstructions quantised like
samples, metrics README §2.8) as floats in [0, 255] with ``data_range=255``. PSNR is the mean of the
per-image PSNRs (``dim=(1, 2, 3)``), not the PSNR of the pooled MSE; SSIM is torchmetrics' Gaussian
11x11, sigma 1.5 SSIM (Wang et al. 2004), averaged over images.
"""
from __future__ import annotations

from typing import Any

from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure


class PSNR(PeakSignalNoiseRatio):
    """Mean per-image PSNR over [0, 255] images (torchmetrics ``PeakSignalNoiseRatio``)."""

    def __init__(self, data_range: float = 255.0, **kwargs: Any) -> None:
        kwargs.setdefault("dim", (1, 2, 3))
        kwargs.setdefault("reduction", "elementwise_mean")
        super().__init__(data_range=data_range, **kwargs)


class SSIM(StructuralSimilarityIndexMeasure):
    """Mean SSIM over [0, 255] images (torchmetrics ``StructuralSimilarityIndexMeasure``)."""

    def __init__(self, data_range: float = 255.0, **kwargs: Any) -> None:
        super().__init__(data_range=data_range, **kwargs)
