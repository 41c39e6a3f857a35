"""`Evaluation` callback: logs the metrics in a plain Trainer (fit and validate), samples with the EMA
weights, balanced labels and per-batch seeds, writes the ADM .npz, equals the metrics recomputed from
its own images, gives the same values on 2 gloo processes (FSDP2) as on one, and computes rFID /
PSNR / SSIM of reconstructions."""
from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from speedrun_diffusion.callbacks.ema import EMA
from speedrun_diffusion.callbacks.evaluation import Evaluation, rank_batches
from speedrun_diffusion.callbacks.image_protocol import balanced_labels, nhwc_to_nchw, quantize
from speedrun_diffusion.callbacks.metrics import FID, KDD, InceptionScore, PrecisionRecall
from tests.helpers.eval_toy import EvalToyRecipe, ToyImages, image_loader, tiny_dinov2, tiny_inception

METRICS = ("fid", "sfid", "is", "precision_recall", "kdd")


def _trainer(callbacks, **kwargs) -> L.Trainer:
    kwargs.setdefault("max_steps", 2)
    kwargs.setdefault("limit_val_batches", 1)
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                     num_sanity_val_steps=0, **kwargs)


def _evaluation(**kwargs) -> Evaluation:
    kwargs.setdefault("metrics", METRICS)
    return Evaluation(num_samples=14, batch_size=4, inception=tiny_inception(), dinov2=tiny_dinov2(),
                      kdd_subsets=3, kdd_subset_size=10, progress=False, **kwargs)


def test_rank_batches_are_contiguous_and_cover_everything():
    shares = [rank_batches(18, 4, 3, r) for r in range(3)]
    assert [s[0] for s in shares] == [[0, 1], [2, 3], [4]] and {s[1] for s in shares} == {2}
    assert rank_batches(18, 4, 1, 0) == ([0, 1, 2, 3, 4], 5)


def test_fit_logs_metrics_samples_with_ema_and_npz_matches_the_metrics(tmp_path):
    ema = EMA(decay=0.5)
    ev = _evaluation(every_n_steps=2, on_validation=False, npz_path=str(tmp_path / "samples.npz"), num_reference=20)
    module = EvalToyRecipe()
    _trainer([ema, ev], val_check_interval=2, check_val_every_n_epoch=None).fit(module, image_loader(),
                                                                               image_loader())
    names = {"fid", "sfid", "inception_score", "precision", "recall", "kdd"}
    assert set(ev.last_results) == names
    logged = module.trainer.callback_metrics
    for name in names:
        assert f"eval/{name}" in logged and np.isfinite(ev.last_results[name])
    assert ev.last_results["fid"] > 0

    data = np.load(tmp_path / "samples.npz")
    images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (14, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == balanced_labels(14, 3).tolist()
    # batch j of the file = quantised sample(labels k mod C, generator(seed, j)) with the EMA weights
    with ema.swapped(module):
        batch1 = module.sample(balanced_labels(4, 3, start=4), generator=ev.batch_generator(1, module.device))
    assert np.array_equal(images[4:8], quantize(batch1).permute(0, 2, 3, 1).numpy())
    raw = module.sample(balanced_labels(4, 3, start=4), generator=ev.batch_generator(1, module.device))
    assert not np.array_equal(images[4:8], quantize(raw).permute(0, 2, 3, 1).numpy())  # EMA weights differ

    # the logged values are the metrics of exactly these images against the validation images (float32
    # features of other batch sizes differ in the last bits, hence rel 1e-6 on a tiny FID)
    extractor = tiny_inception()
    fake = extractor(nhwc_to_nchw(torch.from_numpy(images)))
    real = extractor(ToyImages().uint8[:20])
    fid = FID(num_features=16)
    fid.update(real["pool_3"], real=True)
    fid.update(fake["pool_3"], real=False)
    assert fid.compute().item() == pytest.approx(ev.last_results["fid"], rel=1e-6)
    pr = PrecisionRecall()
    pr.update(real["pool_3"], real=True)
    pr.update(fake["pool_3"], real=False)
    assert pr.compute()["recall"].item() == ev.last_results["recall"]
    inception = InceptionScore()
    inception.update(fake["logits_unbiased"])
    assert inception.compute().item() == pytest.approx(ev.last_results["inception_score"], rel=1e-9)
    dino = tiny_dinov2()
    kdd = KDD(num_subsets=3, subset_size=10)
    kdd.update(dino(ToyImages().uint8[:20])["dinov2"], real=True)
    kdd.update(dino(nhwc_to_nchw(torch.from_numpy(images)))["dinov2"], real=False)
    assert kdd.compute().item() == pytest.approx(ev.last_results["kdd"], rel=1e-6)


def test_validate_logs_and_is_deterministic():
    runs = []
    for _ in range(2):
        ev = _evaluation(metrics=("fid", "is"), on_validation=False)  # validate evaluates regardless
        result = _trainer([ev]).validate(EvalToyRecipe(), image_loader(), verbose=False)[0]
        runs.append(result)
        assert {"eval/fid", "eval/inception_score"} <= set(result)
    assert runs[0]["eval/fid"] == runs[1]["eval/fid"]


class ReconstructingToy(EvalToyRecipe):
    def reconstruct(self, images):
        return (images + 0.02 * torch.sin(7 * images)).clamp(-1, 1)


def test_reconstruction_metrics_in_validate():
    ev = Evaluation(metrics=("rfid", "psnr", "ssim"), inception=tiny_inception(), progress=False)
    result = _trainer([ev], limit_val_batches=3).validate(ReconstructingToy(), image_loader(), verbose=False)[0]
    assert {"eval/rfid", "eval/psnr", "eval/ssim"} <= set(result)
    assert 25 < result["eval/psnr"] < 60 and 0.5 < result["eval/ssim"] <= 1 and result["eval/rfid"] >= 0


def test_bad_configuration_and_samples_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown metrics"):
        Evaluation(metrics=("fid", "fd_dinov2"))
    with pytest.raises(ValueError, match="quantization"):
        Evaluation(quantization="floor")  # type: ignore[arg-type]

    class OutOfRange(EvalToyRecipe):
        def sample(self, labels, **kwargs):
            return super().sample(labels, **kwargs) * 3

    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        _trainer([_evaluation(metrics=("fid",))]).validate(OutOfRange(), image_loader(), verbose=False)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(16), sigma=np.eye(16))
    with pytest.raises(KeyError, match="arr_0"):
        _trainer([_evaluation(metrics=("precision_recall",), reference=str(tmp_path / "ref.npz"))]).validate(
            EvalToyRecipe(), image_loader(), verbose=False)
