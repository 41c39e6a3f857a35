"""`InceptionScore` on the unbiased 1008-way Inception logits (metrics README §2.5).

ADM rule (``Evaluator.compute_inception_score``, the seed papers' number): p = softmax(logits), the
samples split *in their given order* into consecutive chunks of 5,000 (last one may be shorter),
score = exp(mean_i KL(p_i || mean_j p_j)) per chunk, IS = mean of the chunk scores. No shuffling.

torch-fidelity rule (``isc_features_to_metric``, also dgm-eval when 10 divides N): permute with
``np.random.RandomState(2020)``, 10 splits with boundaries floor(i N / 10), mean (and population
std) of the split scores. Both evaluated in float64 here (ADM's float32 differs by ~1e-6 relative).

Order matters for the ADM rule, so ``update`` can take the global sample indices; ``compute`` then
sorts by them, which makes the value independent of how samples were spread over ranks.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

ADM_SPLIT_SIZE = 5000  # ADM compute_inception_score(split_size=5000)
TORCH_FIDELITY_SPLITS = 10  # torch-fidelity isc_splits default
TORCH_FIDELITY_SEED = 2020  # torch-fidelity isc rng_seed default


def _chunk_score(logits: Tensor) -> Tensor:
    """exp(mean_i KL(p_i || mean_j p_j)) of one chunk, float64."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    log_marginal = p.mean(0, keepdim=True).log()
    return (p * (log_p - log_marginal)).sum(1).mean().exp()


def inception_score_adm(logits: Tensor, split_size: int = ADM_SPLIT_SIZE) -> tuple[Tensor, Tensor]:
    """ADM evaluator rule: (IS, per-chunk scores) over consecutive unshuffled chunks of ``split_size``."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"inception score needs (N, C) logits with N > 0, got {tuple(logits.shape)}")
    scores = torch.stack([_chunk_score(logits[i:i + split_size]) for i in range(0, logits.shape[0], split_size)])
    return scores.mean(), scores


def inception_score_torch_fidelity(logits: Tensor, splits: int = TORCH_FIDELITY_SPLITS,
                                   seed: int = TORCH_FIDELITY_SEED, shuffle: bool = True) -> tuple[Tensor, Tensor]:
    """torch-fidelity rule: (mean, population std) over ``splits`` parts of a seeded permutation."""
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"torch-fidelity IS needs at least {splits} samples, got {n}")
    if shuffle:
        logits = logits[torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(logits.device)]
    scores = torch.stack([_chunk_score(logits[i * n // splits:(i + 1) * n // splits]) for i in range(splits)])
    return scores.mean(), scores.std(unbiased=False)


class InceptionScore(Metric):
    """IS from unbiased Inception logits (``logits_unbiased``). ``rule``: "adm" (default) or "torch_fidelity".

    ``compute()`` returns the IS (0-d float64); ``split_scores`` holds the per-chunk scores of the last
    compute (ADM) and ``std`` the torch-fidelity standard deviation.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, rule: Literal["adm", "torch_fidelity"] = "adm", split_size: int = ADM_SPLIT_SIZE,
                 splits: int = TORCH_FIDELITY_SPLITS, seed: int = TORCH_FIDELITY_SEED, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if rule not in ("adm", "torch_fidelity"):
            raise ValueError(f"unknown Inception Score rule {rule!r}; use 'adm' or 'torch_fidelity'")
        self.rule = rule
        self.split_size = split_size
        self.splits = splits
        self.seed = seed
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("indices", [], dist_reduce_fx="cat")
        self.split_scores: Tensor | None = None
        self.std: Tensor | None = None

    def update(self, logits: Tensor, indices: Tensor | None = None) -> None:
        """(N, C) logits, optionally with their global sample indices (to restore the sample order)."""
        if logits.ndim != 2:
            raise ValueError(f"InceptionScore expects (N, C) logits, got {tuple(logits.shape)}")
        if indices is not None and indices.shape != (logits.shape[0],):
            raise ValueError(f"indices {tuple(indices.shape)} do not match {logits.shape[0]} logits")
        self.logits.append(logits.detach().float())
        if indices is not None:
            self.indices.append(indices.detach().to(device=logits.device, dtype=torch.float64))

    def ordered_logits(self) -> Tensor:
        logits = torch.cat(self.logits) if isinstance(self.logits, list) else self.logits
        indices = (torch.cat(self.indices) if self.indices else None) if isinstance(self.indices, list) else self.indices
        if indices is not None and indices.numel() > 0:
            if indices.numel() != logits.shape[0]:
                raise RuntimeError("InceptionScore: give indices with every update or with none")
            logits = logits[torch.argsort(indices)]
        return logits

    def compute(self) -> Tensor:
        logits = self.ordered_logits()
        if self.rule == "adm":
            value, self.split_scores = inception_score_adm(logits, self.split_size)
            self.std = None
        else:
            value, self.std = inception_score_torch_fidelity(logits, self.splits, self.seed)
        return value
