"""Image protocol: the seed papers' truncating uint8 conversion (and EDM2's rounding) on edge values,
balanced labels, the ADM .npz writer/reader and its errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speedrun_diffusion.callbacks.image_protocol import balanced_labels, load_reference_npz, quantize, write_npz


def _level(k: int) -> float:
    """The float32 x whose ((x + 1) / 2) * 255 is exactly k (for the k used below)."""
    return float(np.float32(2 * k / 255 - 1))


def test_truncation_edge_values():
    x = torch.tensor([-1.0, 1.0, -1.5, 1.5, 0.0, 1 - 2 ** -23])
    # -1 → 0, 1 → 255, beyond the range clamps, 0 → 127.5 → 127 (truncated, not 128), just below 1 → 254
    assert quantize(x.view(2, 3, 1, 1), "truncate").flatten().tolist() == [0, 255, 0, 255, 127, 254]


def test_just_below_a_level_truncates_down_and_rounding_does_not():
    for k in (1, 37, 128, 254):
        y = ((torch.tensor(_level(k)) + 1) / 2 * 255).item()
        x = torch.tensor(_level(k))
        below = torch.nextafter(x, torch.tensor(-2.0))
        img = lambda v: v.view(1, 1, 1, 1).expand(1, 3, 1, 1).contiguous()  # noqa: E731
        if y == k:  # exactly on the level: that level
            assert quantize(img(x))[0, 0, 0, 0].item() == k
        assert quantize(img(below))[0, 0, 0, 0].item() == k - 1  # a hair below: the level under it
        # EDM2 rounds: x * 127.5 + 128 then truncation, so a hair below still lands on the nearest level
        assert quantize(img(below), "round")[0, 0, 0, 0].item() == round(((below.item() + 1) / 2) * 255)


def test_round_inverts_the_datamodule_conversion_and_truncate_follows_the_formula():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = u.float() / 127.5 - 1
    assert torch.equal(quantize(x, "round"), u)
    expected = torch.clamp((x + 1) / 2 * 255, 0, 255).to(torch.uint8)  # clamp(255 (x+1)/2) then cast
    assert torch.equal(quantize(x, "truncate"), expected)
    assert (quantize(x, "truncate").int() - u.int()).abs().max() <= 1


@pytest.mark.parametrize("bad, err", [(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), TypeError),
                                      (torch.zeros(3, 2, 2), ValueError),
                                      (torch.full((1, 3, 2, 2), float("nan")), ValueError)])
def test_quantize_rejects_bad_input(bad, err):
    with pytest.raises(err):
        quantize(bad)
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize(torch.zeros(1, 3, 2, 2), "floor")  # type: ignore[arg-type]


def test_balanced_labels():
    labels = balanced_labels(50_000, 1000)
    assert torch.equal(torch.bincount(labels), torch.full((1000,), 50))
    assert torch.equal(torch.bincount(labels[:5000]), torch.full((1000,), 5))  # every 5,000-chunk is balanced
    assert balanced_labels(4, 10, start=18).tolist() == [8, 9, 0, 1]


def test_npz_writer_streams_adm_layout_and_reader(tmp_path):
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, 256, (n, 5, 4, 3), generator=g, dtype=torch.uint8) for n in (3, 4)]
    labels = balanced_labels(7, 3)
    path = write_npz(tmp_path / "samples.npz", iter(chunks), num_images=7, labels=labels)
    with np.load(path, allow_pickle=False) as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (7, 5, 4, 3)
        assert np.array_equal(data["arr_0"], torch.cat(chunks).numpy())
        assert np.array_equal(data["arr_1"], labels.numpy())
    batch = load_reference_npz(path, required=("arr_0",))
    assert batch.mu is None and batch.images.shape == (7, 5, 4, 3)
    with pytest.raises(KeyError, match="mu_s"):
        load_reference_npz(path, required=("arr_0", "mu_s"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_reference_npz(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="announced"):
        write_npz(tmp_path / "short.npz", iter(chunks), num_images=9)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        write_npz(tmp_path / "bad.npz", [np.zeros((2, 3, 4, 4), np.float32)])
    np.savez(tmp_path / "half.npz", mu=np.zeros(3), arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(KeyError, match="only one of"):
        load_reference_npz(tmp_path / "half.npz")
