"""SR-DiT 2-D RoPE (official ``VisionRotaryEmbeddingFast``) against the reference ``rope`` case(s)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.blocks import RoPE2D, rope_grid_tables
from tests.conftest import REFERENCE_DIR, load_case, reference_cases

# output name -> (input tensor, position ids or None): the six call forms that define the case
CALLS = {
    "output/grid": ("input/q_grid", None),
    "output/cls_noids": ("input/q_cls", None),
    "output/cls_fullids": ("input/q_cls", "input/ids_full"),
    "output/subset": ("input/q_subset", "input/ids_subset"),
    "output/subset_1d": ("input/q_subset", "input/ids_1d"),
    "output/tail": ("input/q_tail", "input/ids_tail"),
}
TABLES = ("freqs_cos", "freqs_sin")


def _official_tables(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``param/<prefix>freqs_*`` → ``freqs_*``, whatever module prefix the official state dict used."""
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    out = {}
    for key, value in params.items():
        name = key.rsplit(".", 1)[-1]
        assert name in TABLES, f"unexpected official RoPE state-dict key {key!r}"
        out[name] = value
    return out


def _assert_within(ours: torch.Tensor, ref: torch.Tensor, tol: dict, what: str) -> None:
    err = (ours - ref).abs()
    bound = tol["atol"] + tol["rtol"] * ref.abs()
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert bool((err <= bound).all()), \
        f"{what}: max |err| {err.max().item():.3g}, worst err/bound {(err / bound).max().item():.3g}"


def _module(spec: dict) -> RoPE2D:
    # the official module gets dim = head_dim / 2; ours is parametrised by head_dim itself
    head_dim, grid = spec["derived"]["head_dim"], spec["config"]["pt_seq_len"]
    assert head_dim == 2 * spec["config"]["dim"]
    return RoPE2D(head_dim=head_dim, grid_size=grid)


@pytest.mark.parametrize("path", reference_cases("srdit", "rope"), ids=lambda p: str(p.relative_to(REFERENCE_DIR)))
def test_rope_tables_computed_and_loaded(path: Path):
    spec, data = load_case(path)
    rope = _module(spec)
    official = _official_tables(data)
    for name in TABLES:  # freshly computed tables equal the official deterministic buffers
        _assert_within(getattr(rope, name), official[name], spec["tolerance"], name)
    cos, sin = rope_grid_tables(rope.head_dim, rope.grid_size)
    assert torch.equal(cos, rope.freqs_cos) and torch.equal(sin, rope.freqs_sin)
    rope.load_state_dict(official, strict=True)  # official keys map straight onto our buffers
    assert torch.equal(rope.freqs_cos, official["freqs_cos"])


@pytest.mark.parametrize("path", reference_cases("srdit", "rope"), ids=lambda p: str(p.relative_to(REFERENCE_DIR)))
@pytest.mark.parametrize("output", list(CALLS))
def test_rope_call_forms(path: Path, output: str):
    spec, data = load_case(path)
    assert set(CALLS) == set(spec["outputs"]), "the case defines call forms this test does not know"
    rope = _module(spec)
    rope.load_state_dict(_official_tables(data), strict=True)
    x_key, ids_key = CALLS[output]
    ids = None if ids_key is None else data[ids_key]
    _assert_within(rope(data[x_key], ids), data[output], spec["tolerance"], output)
    # the freshly computed tables give the same result within the case tolerance
    _assert_within(_module(spec)(data[x_key], ids), data[output], spec["tolerance"], f"{output} (own tables)")
