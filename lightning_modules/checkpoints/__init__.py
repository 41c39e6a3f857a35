"""Import of official checkpoints into this library's networks (DESIGN "Public surface").

``import_official(kind, state_dict, config)`` builds our network from the official constructor kwargs
(``config``, exactly as the official class takes them) and loads the official state dict with strict key
matching; a mismatch raises ``OfficialCheckpointError`` listing missing keys, unexpected keys and shape
mismatches. ``load_official_checkpoint(path, kind)`` reads an official file (a training checkpoint with
``model`` / ``ema`` / ``args``, a bare state dict, or safetensors) with ``weights_only=True``.

One module per official code base registers its kinds with ``@register_official("<recipe>.<network>")``:

* ``srdit.sit``, ``srdit.invae`` — ``checkpoints/srdit.py``
* ``rae.discriminator``, ``rae.lpips`` — ``checkpoints/rae_stage1_gan.py``
* ``rae.decoder``, ``rae.encoder.{dinov2,siglip2,mae}``, ``rae.rae`` — ``checkpoints/rae_stage1.py``
* ``rae.ditdh``, ``rae.lightningdit`` — ``checkpoints/rae_stage2.py``
"""
# one adapter module per official code base; importing each registers its kinds
from speedrun_diffusion.lightning_modules.checkpoints import rae_stage1, rae_stage1_gan, rae_stage2, srdit  # noqa: F401
from speedrun_diffusion.lightning_modules.checkpoints.loading import load_official_checkpoint
from speedrun_diffusion.lightning_modules.checkpoints.registry import (
    OFFICIAL_IMPORTERS,
    OfficialCheckpointError,
    import_official,
    load_strict,
    register_official,
    strip_wrapper_prefixes,
)
from speedrun_diffusion.lightning_modules.checkpoints.srdit import (
    srdit_config_from_args,
    srdit_invae_config,
    srdit_sit_config,
)

__all__ = [
    "OFFICIAL_IMPORTERS",
    "OfficialCheckpointError",
    "import_official",
    "load_official_checkpoint",
    "load_strict",
    "rae_stage1_gan",
    "register_official",
    "srdit",
    "srdit_config_from_args",
    "srdit_invae_config",
    "srdit_sit_config",
    "strip_wrapper_prefixes",
]
