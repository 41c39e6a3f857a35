"""torchmetrics `Metric`s that compute what the papers' evaluators compute (metrics README).

Every metric takes pre-extracted features (``callbacks.features``), keeps its state in a form that
sums or concatenates across ranks, and uses float64 where the reference does:

* `FID`, `SFID`, `RFID` — ADM evaluator Fréchet distance (pool_3 / spatial / reconstructions).
* `InceptionScore` — ADM rule (consecutive chunks of 5,000), torch-fidelity rule as an option.
* `PrecisionRecall` — ADM improved precision/recall (squared L2, k = 3, inclusive).
* `KDD` — dgm-eval kernel distance on DINOv2 features (100 subsets of 1,000, unbiased, unscaled).
* `PSNR`, `SSIM` — torchmetrics on uint8-range reconstructions.
"""
from speedrun_diffusion.callbacks.metrics.fid import FID, frechet_distance
from speedrun_diffusion.callbacks.metrics.inception_score import InceptionScore
from speedrun_diffusion.callbacks.metrics.kdd import KDD, kernel_distance, polynomial_mmd
from speedrun_diffusion.callbacks.metrics.precision_recall import PrecisionRecall, precision_recall
from speedrun_diffusion.callbacks.metrics.reconstruction import PSNR, SSIM
from speedrun_diffusion.callbacks.metrics.rfid import RFID
from speedrun_diffusion.callbacks.metrics.sfid import SFID

__all__ = [
    "FID",
    "KDD",
    "PSNR",
    "RFID",
    "SFID",
    "SSIM",
    "InceptionScore",
    "PrecisionRecall",
    "frechet_distance",
    "kernel_distance",
    "polynomial_mmd",
    "precision_recall",
]
