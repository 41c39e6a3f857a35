"""Import of official checkpoints into this library's networks (DESIGN "Public surface").

``import_official(kind, state_dict, config)`` builds our network from the official constructor kwargs
(``config``, exactly as the official class takes them) and loads the official state dict with strict key
matching; a mismatch raises ``OfficialCheckpointError`` listing missing keys, unexpected keys and shape
mismatches. ``load_official_checkpoint(path, kind)`` reads an official file (a training checkpoint with
``model`` / ``ema`` / ``args``, a bare state dict, or safetensors) with ``weights_only=True``.

One module per official code base registers its kinds with ``@register_official("<recipe>.<network>")``:

* ``srdit.sit``, ``srdit.invae`` — ``checkpoints/srdit.py``
"""
from lightning_modules.checkpoints import srdit
from lightning_modules.checkpoints.loading import load_official_checkpoint
from lightning_modules.checkpoints.registry import (
    OFFICIAL_IMPORTERS,
    OfficialCheckpointError,
    import_official,
    load_strict,
    register_official,
    strip_wrapper_prefixes,
)
from lightning_modules.checkpoints.srdit import srdit_config_from_args, srdit_invae_config, srdit_sit_config

__all__ = [
    "OFFICIAL_IMPORTERS",
    "OfficialCheckpointError",
    "import_official",
    "load_official_checkpoint",
    "load_strict",
    "register_official",
    "srdit",
    "srdit_config_from_args",
    "srdit_invae_config",
    "srdit_sit_config",
    "strip_wrapper_prefixes",
]
