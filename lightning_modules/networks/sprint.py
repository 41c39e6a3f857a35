"""SPRINT token routing for DiT-family networks (Park et al. 2025, "Sprint: Sparse-Dense Residual Fusion";
SR-DiT Sec. 3.4, reference/srdit/README "Network: SiT-B/1 + SPRINT").

The blocks are split into a dense encoder f (first ``num_encoder_blocks``), a sparse middle g and a dense
decoder h (last ``num_decoder_blocks``):

    x_enc = f(x)                                   all T tokens (REG cls token included)
    g     = g(x_enc[ids_keep])                     training: ⌊T·(1 − drop_ratio)⌋ random tokens per sample
    g_pad = mask token everywhere, g written back at ids_keep
    h_in  = Linear(2D → D)(concat[x_enc, g_pad])   residual fusion
    out   = h(h_in)                                all tokens

The kept tokens carry their own RoPE position ids and their rows of the value-residual source v1; a
kept cls token gets position 0, whose rotation is the identity. Path drop (SPRINT Sec. 3.3 / SR-DiT
"path-drop guidance"): with probability ``path_drop_prob`` per training step (one draw for the whole
batch) ``g_pad`` is the mask token at every position; ``uncond=True`` does the same at inference —
the "weak" model of path-drop guidance. In eval mode g sees all tokens (the official code has no
full-token fine-tuning stage; SPRINT's paper fine-tunes with all tokens at the end).

The split is fixed at 2 / depth − 4 / 2 in the official SR-DiT (its ``encoder_depth`` is unused); the
REPA projectors read the encoder output x_enc, cls slot included.

Routing quirk kept from the official RoPE: if more tokens than grid positions are routed (K > G², only
possible with keep ratios ≥ G²/T), the first listed token is treated as a leading unrotated token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.networks.dit import DiT, DiTConfig, DiTOutput


@dataclass(frozen=True)
class SprintConfig:
    """SPRINT routing hyper-parameters (SR-DiT defaults: 2 / 8 / 2 blocks, keep 25 %, path drop 0.05)."""

    num_encoder_blocks: int = 2
    num_decoder_blocks: int = 2
    drop_ratio: float = 0.75
    path_drop_prob: float = 0.05

    def num_keep(self, num_tokens: int) -> int:
        """max(1, ⌊T·(1 − drop_ratio)⌋): 64 of 257 tokens for SR-DiT-B/1 at 256 px (official formula)."""
        return max(1, int(num_tokens * (1 - self.drop_ratio)))


def gather_tokens(x: Tensor, ids: Tensor, dim: int = 1) -> Tensor:
    """Rows ``ids`` (B, K) of x along the token axis ``dim`` (x (B, …, T, …)); ids keep their order."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = ids.shape
    index = ids.reshape(shape).expand(*x.shape[:dim], ids.shape[1], *x.shape[dim + 1:])
    return x.gather(dim, index)


def random_keep_ids(
    batch: int, num_tokens: int, num_keep: int, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample random token subset: argsort(U(0,1)^T)[:num_keep], unsorted (official SPRINT draw)."""
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :num_keep]


class SprintDiT(DiT):
    """DiT with SPRINT routing (module docstring): ``forward(x, t, y, cls_token, …, ids_keep, path_drop,
    uncond)``. Extra parameters ``mask_token`` (1, 1, D) and ``fusion_proj`` Linear(2D, D) keep the
    official SR-DiT names, so its state dicts load key-for-key.
    """

    def __init__(self, cfg: DiTConfig, sprint: SprintConfig | None = None) -> None:
        sprint = SprintConfig() if sprint is None else sprint
        if cfg.depth <= sprint.num_encoder_blocks + sprint.num_decoder_blocks:
            raise ValueError(
                f"depth {cfg.depth} leaves no sparse block after {sprint.num_encoder_blocks} encoder and "
                f"{sprint.num_decoder_blocks} decoder blocks"
            )
        if cfg.modulation != "adaln":
            raise ValueError("SprintDiT supports per-block adaLN modulation only")
        super().__init__(cfg)
        self.sprint = sprint
        dim = cfg.hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # official init: zero
        self.fusion_proj = nn.Linear(2 * dim, dim)
        nn.init.xavier_uniform_(self.fusion_proj.weight)
        nn.init.zeros_(self.fusion_proj.bias)

    def full_position_ids(self, device: torch.device | None = None) -> Tensor:
        """Position ids of the full sequence: [0]·extra ++ [0 … G²−1] (official ``rope_ids_full``)."""
        cfg = self.cfg
        ids = torch.arange(cfg.num_tokens, device=device)
        return torch.cat([ids.new_zeros(cfg.num_extra_tokens), ids])

    def trunk(  # type: ignore[override]
        self,
        tokens: Tensor,
        c: Tensor,
        ids_keep: Tensor | None = None,
        path_drop: bool | Tensor | None = None,
        uncond: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """f → (routed) g → pad + fuse → h; returns (decoder output, encoder output for REPA).

        Training draws ``ids_keep`` (B, K) then the path-drop uniform (official draw order) unless
        given; eval mode routes nothing unless ``ids_keep`` is given and drops the path only for
        ``uncond`` (or an explicit ``path_drop``).
        """
        sp = self.sprint
        blocks = list(self.blocks)
        encoder = blocks[: sp.num_encoder_blocks]
        middle = blocks[sp.num_encoder_blocks: len(blocks) - sp.num_decoder_blocks]
        decoder = blocks[len(blocks) - sp.num_decoder_blocks:]
        rope = self.feat_rope
        x, v1 = tokens, None
        for block in encoder:  # dense: no ids = leading cls token unrotated, patches in raster order
            x, v = block(x, c, rope=rope, v1=v1)
            v1 = v if v1 is None else v1
        x_enc = x
        b, n, d = x_enc.shape
        if self.training:
            if ids_keep is None:
                ids_keep = random_keep_ids(b, n, sp.num_keep(n), x.device, generator)
            if path_drop is None:  # one draw for the whole batch (official; broadcast over ranks)
                path_drop = torch.rand(1, device=x.device, generator=generator)[0] < sp.path_drop_prob
        # a tensor decision (training draws one) stays a tensor: branching on its value would split a compiled
        # graph (torch.compile), so the training replacement below is a torch.where with the same values
        decided = path_drop if isinstance(path_drop, Tensor) else None
        dropped = bool(uncond) or (decided is None and bool(path_drop))
        mask = self.mask_token.to(x_enc.dtype).expand(b, n, d)
        if not self.training and (dropped or (decided is not None and bool(decided))):
            g_pad = mask  # inference path drop: the sparse path's output is never used
        else:
            if ids_keep is None:
                g, v1_g, ids = x_enc, v1, None
            else:
                ids_keep = ids_keep.to(x.device)
                g = gather_tokens(x_enc, ids_keep)
                v1_g = gather_tokens(v1, ids_keep, dim=2)  # (B, heads, T, Dh) → kept rows
                ids = self.full_position_ids(x.device)[ids_keep]  # (B, K): every kept token rotated
            for block in middle:
                g, _ = block(g, c, rope=rope, pos_ids=ids, v1=v1_g)
            if ids_keep is None:
                g_pad = g
            else:
                g_pad = mask.scatter(1, ids_keep[..., None].expand(-1, -1, d), g)
            # training path drop: keep g in the graph (zero grads, DDP-safe) as the official code, g_pad·0 + mask
            if dropped:
                g_pad = g_pad * 0 + mask
            elif decided is not None:
                g_pad = torch.where(decided, g_pad * 0 + mask, g_pad)
        x = self.fusion_proj(torch.cat([x_enc, g_pad], dim=-1))
        for block in decoder:
            x, _ = block(x, c, rope=rope, v1=v1)
        return x, (x_enc if len(self.projectors) else None)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        cls_token: Tensor | None = None,
        force_drop: Tensor | None = None,
        generator: torch.Generator | None = None,
        ids_keep: Tensor | None = None,
        path_drop: bool | Tensor | None = None,
        uncond: bool = False,
    ) -> Tensor | DiTOutput:
        """DiT forward with routing. Randomness (DESIGN): ``force_drop`` (B,) label dropout, ``ids_keep``
        (B, K) kept token indices into [cls; patches], ``path_drop`` the step's path-drop decision — each
        drawn from ``generator`` (else the global RNG) in the official order when not given (train mode).
        """
        tokens, c = self.embed(x, t, y, cls_token, force_drop, generator)
        tokens, repa_in = self.trunk(tokens, c, ids_keep, path_drop, uncond, generator)
        return self.head(tokens, c, repa_in, x.shape[-2], x.shape[-1])


def build_dit(cfg: DiTConfig, sprint: SprintConfig | None = None) -> DiT:
    """``SprintDiT`` when ``sprint`` is given, else the dense ``DiT`` (SR-DiT Table 1 "SPRINT" switch)."""
    return DiT(cfg) if sprint is None else SprintDiT(cfg, sprint)


__all__ = ["SprintConfig", "SprintDiT", "build_dit", "gather_tokens", "random_keep_ids"]
