"""``eval_mode(*modules)``: evaluate with modules in eval mode, then give each back the mode it had."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """``with eval_mode(net, tokenizer):`` — dropout off, class dropout off, no noise augmentation — restoring each
    module's own training flag afterwards, also when the body raises (None entries are skipped)."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for module in present:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(present, modes):
            module.train(mode)
