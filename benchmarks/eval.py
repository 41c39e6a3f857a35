"""Evaluation cost on this machine: feature extractors (images/s) and the metric math.

    python benchmarks/eval.py                      # extractors at 256x256, batch 8; metric math for 50K x 2048
    python benchmarks/eval.py --samples 5000       # smaller metric math (precision/recall is O(N_fake x N_real))

Extractors run with injected small networks (the ones the tests use) and at real size with random
weights (torch-fidelity inception-v3-compat, timm DINOv2 ViT-L/14): no download. The metric math
is fed random features: FID (statistics + ADM sqrtm at D = 2048), IS (ADM rule), precision/recall
(ADM, float32, 10,000 real), KDD (dgm-eval, 100 subsets of 1,000, D = 1024).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speedrun_diffusion.callbacks.features import DINOv2Features, InceptionFeatures  # noqa: E402
from speedrun_diffusion.callbacks.metrics import FID, KDD, InceptionScore, PrecisionRecall  # noqa: E402
from tests.helpers.eval_toy import tiny_dinov2, tiny_inception  # noqa: E402


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def extractors(resolution: int, batch: int, repeats: int) -> None:
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8)
    for name, build in [("inception (injected tiny)", tiny_inception),
                        ("inception-v3-compat (real size, random)", lambda: InceptionFeatures(random_weights=True)),
                        ("dinov2 (injected tiny)", tiny_dinov2),
                        ("dinov2 ViT-L/14 (real size, random)", lambda: DINOv2Features(random_weights=True))]:
        extractor = build()
        seconds = _timed(lambda: extractor(images), repeats)
        print(f"{name:<42} {batch / seconds:9.1f} images/s  ({seconds * 1000:.0f} ms / batch of {batch} at {resolution}²)")


def metric_math(samples: int, references: int) -> None:
    g = torch.Generator().manual_seed(0)
    fake, real = torch.randn(samples, 2048, generator=g).exp(), torch.randn(references, 2048, generator=g).exp()

    def fid():
        m = FID()
        m.update(real, real=True)
        m.update(fake, real=False)
        return m.compute()

    def inception():
        m = InceptionScore()
        m.update(fake[:, :1008])
        return m.compute()

    def pr():
        m = PrecisionRecall()
        m.update(real, real=True)
        m.update(fake, real=False)
        return m.compute()

    def kdd():
        m = KDD()
        m.update(real[:, :1024], real=True)
        m.update(fake[:, :1024], real=False)
        return m.compute()

    for name, fn in [("FID (stats + sqrtm, D=2048)", fid), ("IS (ADM rule)", inception),
                     ("precision/recall (float32)", pr), ("KDD (100 x 1000, D=1024)", kdd)]:
        start = time.perf_counter()
        fn()
        print(f"{name:<42} {time.perf_counter() - start:9.2f} s   ({samples} fake x {references} real)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--references", type=int, default=10_000)
    parser.add_argument("--skip-extractors", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_extractors:
        extractors(args.resolution, args.batch, args.repeats)
    metric_math(args.samples, args.references)


if __name__ == "__main__":
    main()
