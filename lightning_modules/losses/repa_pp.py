"""REPA++ (SpeedDiff supp. A.2.5, Algorithm 1 "REPA++"): align both the clean latent and the denoiser's
features with a frozen vision foundation model (VFM).

    y = VFM(x0) (B, N, D_y)
    y_latent = h_ω1(z0 tokens)     z0 (B, d, h, w) → (B, h·w, d) → 2-layer SiLU MLP       (latent REPA)
    y_diff   = h_ω2(f_t)           f_t: hidden state after block 8 of V_θ(z_t, t)       (diffusion REPA)
    L_REPA++ = w_latent·(−cos(y, y_latent)) + w_diff·(−cos(y, y_diff))      (Tab. 14: weights 1, depth 8)

The negative cosine is REPA's (``losses.repa.negative_cosine``: token mean, then batch mean). Nothing is
detached here, so the latent term also shapes the encoder and the diffusion term the denoiser; the VFM
targets should come in without gradient. The adapters' hidden width is not given by the paper: 2048,
REPA's projector width, is the default.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.losses.repa import negative_cosine

# SpeedDiff Tab. 14 "Diffusion REPA depth".
DIFFUSION_REPA_DEPTH = 8


def repa_adapter(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) → SiLU → Linear(hidden, out): the two-layer adapter h_ω of A.2.5."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim))


def latent_tokens(latents: Tensor) -> Tensor:
    """(B, d, h, w) → (B, h·w, d) in raster order (the denoiser's patch-1 token order)."""
    return latents.flatten(2).transpose(1, 2)


@contextmanager
def capture_block_output(net: nn.Module, depth: int = DIFFUSION_REPA_DEPTH) -> Iterator[dict[str, Tensor]]:
    """Record f_t, the token states after block ``depth`` of a DiT-family ``net`` (blocks return (x, v)).

    ``with capture_block_output(net, 8) as feats: v = net(z_t, t, y)`` → ``feats["features"]`` (B, N, D).
    """
    blocks = getattr(net, "blocks", None)
    if blocks is None or not 1 <= depth <= len(blocks):
        n = 0 if blocks is None else len(blocks)
        raise ValueError(f"depth {depth} is not a block of this network (it has {n} blocks)")
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        store["features"] = output[0] if isinstance(output, tuple) else output

    handle = blocks[depth - 1].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class REPAPlusPlus(nn.Module):
    """The two adapters h_ω1 (latent, d → D_y) and h_ω2 (denoiser width D → D_y) and their losses."""

    def __init__(
        self,
        latent_channels: int,
        hidden_size: int,
        target_dim: int,
        adapter_dim: int = 2048,
        latent_weight: float = 1.0,
        diffusion_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.latent_adapter = repa_adapter(latent_channels, adapter_dim, target_dim)
        self.diffusion_adapter = repa_adapter(hidden_size, adapter_dim, target_dim)
        self.latent_weight = float(latent_weight)
        self.diffusion_weight = float(diffusion_weight)

    def forward(self, z0: Tensor, features: Tensor, target: Tensor) -> dict[str, Tensor]:
        """{"repa_pp": weighted sum, "repa_latent", "repa_diffusion"} for z0 (B, d, h, w), f_t (B, N, D) and
        VFM tokens y (B, N, D_y) (patch tokens only, raster order, N = h·w)."""
        tokens = latent_tokens(z0)
        if target.dim() != 3 or target.shape[:2] != tokens.shape[:2] or features.shape[:2] != tokens.shape[:2]:
            raise ValueError(
                f"REPA++ needs the same (B, N) for latent tokens {tuple(tokens.shape)}, features "
                f"{tuple(features.shape)} and VFM target {tuple(target.shape)}; resize the VFM input so its "
                "patch grid matches the latent grid"
            )
        terms = {
            "repa_latent": negative_cosine(self.latent_adapter(tokens), target).mean(),
            "repa_diffusion": negative_cosine(self.diffusion_adapter(features), target).mean(),
        }
        total = self.latent_weight * terms["repa_latent"] + self.diffusion_weight * terms["repa_diffusion"]
        return {"repa_pp": total, **terms}


__all__ = ["DIFFUSION_REPA_DEPTH", "REPAPlusPlus", "capture_block_output", "latent_tokens", "repa_adapter"]
