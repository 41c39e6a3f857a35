"""The DiT family: DiT / SiT, LightningDiT and Refined-DiT as options of one transformer denoiser.

One block (`DiTBlock`) and one network (`DiT`) cover the papers' variants through switches:

| option            | SiT / DiT (Peebles & Xie 2023; Ma et al. 2024) | SR-DiT / LightningDiT / Refined-DiT |
|-------------------|------------------------------------------------|-------------------------------------|
| ``norm``          | "layernorm" (no affine, eps 1e-6)              | "rmsnorm"                           |
| ``mlp``           | "gelu" (GELU-tanh, ratio 4)                    | "swiglu" (LightningDiT, SpeedDiff)  |
| ``qk_norm``       | False                                          | True                                |
| ``rope``          | False                                          | True (2-D axial)                    |
| ``value_residual``| False                                          | True (SR-DiT Table 1)               |
| ``modulation``    | "adaln" (adaLN-Zero per block)                 | "global" (SpeedDiff A.1.2)          |
| ``cls_token_dim`` | 0 (no extra token)                             | 768 (SR-DiT REG token, DINOv2 CLS)  |
| ``z_dims``        | () (no projector)                              | (768,) (REPA projector, λ 0.5)      |
| ``time_embed``    | "sinusoidal"                                   | "fourier" (RAE LightningDiT, App. F)|
| ``norm_weight``   | False                                          | True (RAE LightningDiT RMSNorm)     |
| ``learn_sigma``   | False                                          | LightningDiT option (σ half dropped)|

The vanilla SiT forward is DiT's: patchify → + fixed 2-D sin-cos APE → N × (adaLN-Zero block) →
adaLN final layer → unpatchify; the conditioning is c = t_emb(t) + y_emb(y) with t raw in [0, 1]
(SiT's convention, no ×1000). The network predicts the flow velocity ε − x0 (SiT "velocity"; the
learned-sigma half of SiT's output is never used by flow training, so it is not built).

SR-DiT additions (reference/srdit/README "Network"): with ``cls_token_dim > 0`` a REG class token
(noisy DINOv2 CLS → Linear → RMSNorm with weight) is prepended at index 0 (its sin-cos row is zero,
RoPE leaves it unrotated) and gets its own output head ``final_layer.linear_cls``; with ``z_dims`` the
REPA projectors MLP(D → P → P → z) read the hidden state after ``repa_depth`` blocks. The forward then
returns ``DiTOutput(velocity, zs, cls_velocity)`` — the official ``(x, zs, cls)`` triple. SPRINT token
routing is a subclass in ``networks/sprint.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks import (
    AdaLNModulation,
    Attention,
    BlockModulationBias,
    FourierTimestepEmbedder,
    GlobalModulation,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    RMSNorm,
    RoPE2D,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    sincos_2d_pos_embed,
    swiglu_hidden_dim,
    unpatchify,
)

NormKind = Literal["layernorm", "rmsnorm"]
MlpKind = Literal["gelu", "swiglu"]
ModulationKind = Literal["adaln", "global"]
TimeEmbedKind = Literal["sinusoidal", "fourier"]


@dataclass(frozen=True)
class DiTConfig:
    """Every hyper-parameter of a DiT-family network; presets below fill the size fields."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    norm: NormKind = "layernorm"
    mlp: MlpKind = "gelu"
    qk_norm: bool = False
    rope: bool = False
    value_residual: bool = False
    modulation: ModulationKind = "adaln"
    pos_embed: bool = True
    cls_token_dim: int = 0
    z_dims: tuple[int, ...] = ()
    projector_dim: int = 2048
    repa_depth: int = 4
    # LightningDiT options (RAE App. F): Gaussian Fourier t-embedding, RMSNorm with weight, QK-norm kind
    time_embed: TimeEmbedKind = "sinusoidal"
    norm_weight: bool = False
    qk_norm_type: NormKind = "rmsnorm"
    qk_norm_eps: float | None = None
    learn_sigma: bool = False
    swiglu_multiple_of: int = 1  # SwiGLU width rounded up to this (Refined-DiT: 256, SpeedDiff Tab. 7)

    @property
    def num_extra_tokens(self) -> int:
        """Tokens before the patches: 1 for the REG cls token, else 0."""
        return 1 if self.cls_token_dim else 0

    @property
    def out_channels(self) -> int:
        """Channels the final layer predicts: 2C with LightningDiT's ``learn_sigma`` (σ half discarded), else C."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


# SiT / DiT sizes (DiT Table 1): name -> (depth, hidden, heads).
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def dit_preset(name: str, **overrides) -> DiTConfig:
    """Config for a named model such as "SiT-B/2" or "DiT-XL/1" (DiT Table 1 sizes, patch after '/')."""
    family, _, size_patch = name.partition("-")
    size, _, patch = size_patch.partition("/")
    if family not in {"SiT", "DiT"} or size not in DIT_SIZES or not patch.isdigit():
        raise ValueError(f"unknown preset {name!r}; expected e.g. 'SiT-B/2' with size in {sorted(DIT_SIZES)}")
    depth, hidden, heads = DIT_SIZES[size]
    return replace(DiTConfig(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(patch)), **overrides)


# SpeedDiff Tab. 14 Refined-DiT rows: size -> (depth, hidden, heads); 64 channels per head.
REFINED_DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (27, 1408, 22),
}


def refined_dit_preset(name: str = "Refined-DiT-XL", **overrides) -> DiTConfig:
    """SpeedDiff denoisers on the ViT-VAE latent (32 × 16 × 16 at 256² and 512²).

    "Refined-DiT-B/L/XL" (supp. A.1.2, Tab. 14): LightningDiT block (RMSNorm, SwiGLU, QK-norm, 2-D RoPE, fixed
    sin-cos APE as LightningDiT) with one global adaLN-single modulation + per-block bias tables (PixArt-α),
    patch size 1 (a 1×1 conv = a per-token linear projection), class dropout 10 %. The SwiGLU width is
    ⌈(2/3)·4·D / 256⌉·256 (2048 / 2816 / 3840): the choice that reproduces Tab. 7 (91.38 / 319.38 / 672.23 M,
    21.79 / 79.01 / 167.07 GFLOPs) within 0.15 %; unrounded widths miss L / XL by 2 % / 1.4 %. The final layer
    keeps its own adaLN Linear(D, 2D) (PixArt's table-only final layer would miss Tab. 7's B count by 1.3 %).
    "DiT-XL/1" gives the Tab. 10 baseline on the same latent (675.15 M counting the sin-cos table, as DiT).
    AutoGuidance's bad model (A.3.1) is an override: half the blocks and half the heads at the 64-channel head
    width of Tab. 14, e.g. XL: ``depth=13, hidden_size=704, num_heads=11`` (configs/speeddiff/bad_model_*).
    """
    latent = {"input_size": 16, "in_channels": 32}
    if name.startswith(("DiT-", "SiT-")):
        return dit_preset(name, **{**latent, **overrides})
    size = name.removeprefix("Refined-DiT-")
    if size not in REFINED_DIT_SIZES:
        raise ValueError(f"unknown preset {name!r}; expected 'Refined-DiT-' + one of {sorted(REFINED_DIT_SIZES)}")
    depth, hidden, heads = REFINED_DIT_SIZES[size]
    cfg = DiTConfig(
        **latent, patch_size=1, hidden_size=hidden, depth=depth, num_heads=heads, class_dropout_prob=0.1,
        norm="rmsnorm", mlp="swiglu", qk_norm=True, rope=True, modulation="global", swiglu_multiple_of=256,
    )
    return replace(cfg, **overrides)


def check_token_width(width: int, token_dim: int, what: str = "hidden_size") -> None:
    """RAE Sec. 4.1 (Theorem 1): a denoiser narrower than its token dimension n = C·p² cannot fit even
    one image (loss ≥ (n − d)/n); refuse such configs with a clear error."""
    if width < token_dim:
        raise ValueError(
            f"{what} {width} is smaller than the token dimension {token_dim} (in_channels·patch_size²); "
            "RAE Sec. 4.1: the denoiser width must be at least the token dimension"
        )


# LightningDiT as RAE trains it (App. F): Gaussian Fourier time embedding, RMSNorm with weight (eps 1e-6, also
# for the optional QK-norm), SwiGLU, 2-D RoPE plus the fixed sin-cos APE, patch size 1 on DINOv2-B latents.
LIGHTNINGDIT_OPTIONS: dict = dict(
    time_embed="fourier", norm="rmsnorm", norm_weight=True, mlp="swiglu", rope=True, pos_embed=True,
    qk_norm=False, qk_norm_type="rmsnorm", qk_norm_eps=1e-6, class_dropout_prob=0.1,
)


def lightningdit_preset(name: str = "LightningDiT-XL/1", check_width: bool = True, **overrides) -> DiTConfig:
    """RAE's LightningDiT backbone ("LightningDiT-S|B|L|XL/p", Table 13 sizes = DiT Table 1) on the
    DINOv2-B 768 × 16 × 16 latent by default; ``overrides`` replace any field (e.g. ``input_size=32`` at 512 px).

    ``check_width`` enforces RAE Sec. 4.1: hidden_size ≥ in_channels·patch_size² (ValueError otherwise).
    """
    family, _, size_patch = name.partition("-")
    size, _, patch = size_patch.partition("/")
    if family != "LightningDiT" or size not in DIT_SIZES or not patch.isdigit():
        raise ValueError(f"unknown preset {name!r}; expected e.g. 'LightningDiT-XL/1' with size in {sorted(DIT_SIZES)}")
    depth, hidden, heads = DIT_SIZES[size]
    cfg = DiTConfig(input_size=16, in_channels=768, patch_size=int(patch), depth=depth, hidden_size=hidden,
                    num_heads=heads, **LIGHTNINGDIT_OPTIONS)
    cfg = replace(cfg, **overrides)
    if check_width:
        check_token_width(cfg.hidden_size, cfg.in_channels * cfg.patch_size**2)
    return cfg


def make_time_embedder(kind: TimeEmbedKind, dim: int) -> nn.Module:
    """t (B,) → (B, dim): DiT's sinusoidal MLP (SiT, SR-DiT) or the Gaussian Fourier MLP (RAE App. F)."""
    if kind == "fourier":
        return FourierTimestepEmbedder(dim)
    if kind != "sinusoidal":
        raise ValueError(f"time_embed must be 'sinusoidal' or 'fourier', got {kind!r}")
    return TimestepEmbedder(dim)


def make_norm(kind: NormKind, dim: int, weight: bool = False) -> nn.Module:
    """The pre-norm of blocks and final layer, eps 1e-6: weightless (DiT LayerNorm; SR-DiT RMSNorm) or,
    with ``weight``, RMSNorm with a learnable weight (LightningDiT / RAE; LayerNorm stays weightless)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    return RMSNorm(dim, eps=1e-6, affine=weight)


def _gate(gate: Tensor, h: Tensor) -> Tensor:
    """g·h with a per-sample gate (B, D) broadcast over tokens, or a per-token gate (B, N, D) as is."""
    return (gate if gate.dim() == h.dim() else gate.unsqueeze(1)) * h


class DiTBlock(nn.Module):
    """x ← x + g₁·Attn(mod(norm(x))); x ← x + g₂·MLP(mod(norm(x))) (DiT adaLN-Zero block, Fig. 3)."""

    def __init__(self, cfg: DiTConfig, index: int) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.norm1 = make_norm(cfg.norm, dim, cfg.norm_weight)
        self.attn = Attention(
            dim, cfg.num_heads, qkv_bias=True, qk_norm=cfg.qk_norm,
            qk_norm_eps=cfg.qk_norm_eps, qk_norm_type=cfg.qk_norm_type,
            # block 0 produces v1; only later blocks mix it in (SR-DiT value residual)
            value_residual=cfg.value_residual and index > 0,
        )
        self.norm2 = make_norm(cfg.norm, dim, cfg.norm_weight)
        if cfg.mlp == "gelu":
            self.mlp: nn.Module = Mlp(dim, int(dim * cfg.mlp_ratio))
        else:
            self.mlp = SwiGLU(dim, swiglu_hidden_dim(dim, cfg.mlp_ratio, cfg.swiglu_multiple_of))
        if cfg.modulation == "adaln":
            self.adaLN_modulation: nn.Module = AdaLNModulation(dim, dim, num_chunks=6)
        else:
            self.adaLN_modulation = BlockModulationBias(dim, num_chunks=6)

    def forward(
        self, x: Tensor, cond: Tensor, rope: RoPE2D | None = None, pos_ids: Tensor | None = None, v1: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``cond`` is c (B, D) for per-block adaLN, per token (B, N, D) (RAE DDT head), or the global
        modulation (B, 6D); returns (x, raw v)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(cond)
        h, v = self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope, pos_ids=pos_ids, v1=v1)
        x = x + _gate(gate1, h)
        x = x + _gate(gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x, v


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → weightless norm → Linear(D, p²C) (DiT final layer, zero-initialised).

    With ``cls_out_features`` the leading token goes through its own ``linear_cls`` instead (SR-DiT REG
    head: cls velocity); ``forward`` then returns (patch outputs, cls output).
    """

    def __init__(
        self, dim: int, out_features: int, norm: NormKind, cls_out_features: int = 0, norm_weight: bool = False
    ) -> None:
        super().__init__()
        self.norm_final = make_norm(norm, dim, norm_weight)
        self.adaLN_modulation = AdaLNModulation(dim, dim, num_chunks=2)
        self.linear = nn.Linear(dim, out_features)
        self.linear_cls = nn.Linear(dim, cls_out_features) if cls_out_features else None

    def forward(self, x: Tensor, c: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        shift, scale = self.adaLN_modulation(c)
        x = modulate(self.norm_final(x), shift, scale)
        if self.linear_cls is None:
            return self.linear(x)
        return self.linear(x[:, 1:]), self.linear_cls(x[:, 0])


class DiTOutput(NamedTuple):
    """The official SR-DiT ``(x, zs, cls)`` triple: velocity (B, C, H, W), REPA projections [(B, T, z)],
    REG cls-token velocity (B, cls_token_dim) or None."""

    velocity: Tensor
    zs: list[Tensor]
    cls_velocity: Tensor | None


def repa_projector(dim: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """MLP Linear(D, P) SiLU Linear(P, P) SiLU Linear(P, z) (REPA eq. 8's h_φ; keys ``.0/.2/.4``)."""
    return nn.Sequential(
        nn.Linear(dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


class DiT(nn.Module):
    """DiT-family denoiser ``forward(x, t, y) -> velocity`` (DESIGN contract: t ∈ [0, 1], shape (B,))."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if cfg.input_size % cfg.patch_size:
            raise ValueError(f"input_size {cfg.input_size} is not divisible by patch_size {cfg.patch_size}")
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        if cfg.z_dims and not 1 <= cfg.repa_depth <= cfg.depth:
            raise ValueError(f"repa_depth {cfg.repa_depth} must lie in [1, depth={cfg.depth}]")
        self.cfg = cfg
        dim = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.in_channels, dim, cfg.patch_size)
        self.t_embedder = make_time_embedder(cfg.time_embed, dim)
        self.y_embedder = LabelEmbedder(cfg.num_classes, dim, cfg.class_dropout_prob)
        if cfg.cls_token_dim:
            # REG (SR-DiT README "Network"): noisy DINOv2 CLS → Linear → RMSNorm with weight; official names
            self.cls_projectors2 = nn.Linear(cfg.cls_token_dim, dim)
            self.wg_norm = RMSNorm(dim, eps=1e-6, affine=True)
        if cfg.pos_embed:
            # fixed, not trained (DiT); persistent so official state dicts map key-for-key
            table = sincos_2d_pos_embed(dim, cfg.grid_size, num_extra_tokens=cfg.num_extra_tokens)
            self.register_buffer("pos_embed", table.unsqueeze(0))
        self.feat_rope = RoPE2D(dim // cfg.num_heads, cfg.grid_size) if cfg.rope else None
        self.global_modulation = GlobalModulation(dim, dim, num_chunks=6) if cfg.modulation == "global" else None
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.depth))
        self.projectors = nn.ModuleList(repa_projector(dim, cfg.projector_dim, z) for z in cfg.z_dims)
        self.final_layer = FinalLayer(
            dim, cfg.patch_size**2 * cfg.out_channels, cfg.norm, cfg.cls_token_dim, norm_weight=cfg.norm_weight
        )
        self.initialize_weights()

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def initialize_weights(self) -> None:
        """DiT init: Xavier-uniform linears, N(0, 0.02) embeddings, zero adaLN and output (block = identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            if isinstance(block.adaLN_modulation, AdaLNModulation):
                nn.init.zeros_(block.adaLN_modulation[1].weight)
                nn.init.zeros_(block.adaLN_modulation[1].bias)
        if self.global_modulation is not None:  # adaLN-single: zero global modulation = zero gates
            nn.init.zeros_(self.global_modulation[1].weight)
            nn.init.zeros_(self.global_modulation[1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.final_layer.linear_cls is not None:
            nn.init.zeros_(self.final_layer.linear_cls.weight)
            nn.init.zeros_(self.final_layer.linear_cls.bias)

    @property
    def returns_tuple(self) -> bool:
        """True when ``forward`` returns a ``DiTOutput`` (REG cls token or REPA projectors present)."""
        return bool(self.cfg.cls_token_dim or self.cfg.z_dims)

    def embed(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        cls_token: Tensor | None = None,
        force_drop: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Tokens [cls; patches] + APE (B, T, D) and the conditioning c = t_emb + y_emb (B, D)."""
        cfg = self.cfg
        if x.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(
                f"expected input (B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}), got {tuple(x.shape)}"
            )
        tokens = self.x_embedder(x)
        if cfg.cls_token_dim:
            if cls_token is None:
                raise ValueError("this network has a REG cls token: pass cls_token (B, cls_token_dim)")
            cls = self.wg_norm(self.cls_projectors2(cls_token.to(tokens.dtype)))
            tokens = torch.cat([cls.unsqueeze(1), tokens], dim=1)
        if cfg.pos_embed:
            tokens = tokens + self.pos_embed.to(tokens.dtype)
        drop_p = self.y_embedder.dropout_prob
        if force_drop is None and generator is not None and self.training and drop_p > 0:
            # one uniform per sample, as the official LabelEmbedder, but from the given generator
            force_drop = torch.rand(y.shape, device=y.device, generator=generator) < drop_p
        c = self.t_embedder(t) + self.y_embedder(y, force_drop=force_drop)
        return tokens, c

    def trunk(self, tokens: Tensor, c: Tensor) -> tuple[Tensor, Tensor | None]:
        """All blocks, dense; returns (last hidden state, hidden state after ``repa_depth`` blocks or None)."""
        cond = self.global_modulation(c) if self.global_modulation is not None else c
        v1, repa_in = None, None
        for i, block in enumerate(self.blocks):
            tokens, v = block(tokens, cond, rope=self.feat_rope, v1=v1)
            v1 = v if v1 is None else v1  # value residual: v1 is block 0's raw value
            if self.projectors and i + 1 == self.cfg.repa_depth:
                repa_in = tokens
        return tokens, repa_in

    def head(self, tokens: Tensor, c: Tensor, repa_in: Tensor | None, height: int, width: int) -> Tensor | DiTOutput:
        """Final layer → unpatchified velocity (+ REPA projections and cls velocity when configured)."""
        cfg = self.cfg
        out = self.final_layer(tokens, c)
        out, cls_velocity = out if isinstance(out, tuple) else (out, None)
        velocity = unpatchify(out, cfg.patch_size, cfg.out_channels, height, width)
        if cfg.learn_sigma:  # LightningDiT: the σ half is computed but discarded
            velocity = velocity[:, : cfg.in_channels]
        if not self.returns_tuple:
            return velocity
        zs = [proj(repa_in) for proj in self.projectors] if repa_in is not None else []
        return DiTOutput(velocity, zs, cls_velocity)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        cls_token: Tensor | None = None,
        force_drop: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor | DiTOutput:
        """Velocity v̂(x_t, t, y); ``force_drop`` pins class dropout (DESIGN: injectable randomness).

        With a REG token (``cls_token``, the noisy cls state) or REPA projectors the result is
        ``DiTOutput(velocity, zs, cls_velocity)``, else the velocity tensor.
        """
        tokens, c = self.embed(x, t, y, cls_token, force_drop, generator)
        tokens, repa_in = self.trunk(tokens, c)
        return self.head(tokens, c, repa_in, x.shape[-2], x.shape[-1])

    def velocity(self, state: Tensor | tuple[Tensor, Tensor], t: Tensor, y: Tensor, **kwargs) -> Tensor | tuple[Tensor, Tensor]:
        """Sampler view: state x or (x, cls) → v or (v, v_cls) (the tuple state of ``euler_maruyama_sample``)."""
        if isinstance(state, (tuple, list)):
            x, cls = state
            out = self(x, t, y, cls_token=cls, **kwargs)
            return out.velocity, out.cls_velocity
        out = self(state, t, y, **kwargs)
        return out.velocity if isinstance(out, DiTOutput) else out


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries (buffers excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# buffers here that the official codes hold as frozen nn.Parameters (RAE: also the Fourier W)
OFFICIAL_FROZEN_PARAMETERS = ("pos_embed", "t_embedder.W")


def official_parameter_count(net: nn.Module) -> int:
    """Parameters as the official DiT/SiT/SR-DiT/RAE code counts them: its frozen sin-cos ``pos_embed`` (and
    RAE's Fourier ``t_embedder.W``) are ``nn.Parameter``s there (buffers here); RoPE tables are buffers in both."""
    frozen = sum(b.numel() for name, b in net.named_buffers() if name in OFFICIAL_FROZEN_PARAMETERS)
    return count_parameters(net) + frozen


__all__ = [
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "DiTOutput",
    "DIT_SIZES",
    "FinalLayer",
    "LIGHTNINGDIT_OPTIONS",
    "OFFICIAL_FROZEN_PARAMETERS",
    "check_token_width",
    "count_parameters",
    "dit_preset",
    "lightningdit_preset",
    "make_norm",
    "make_time_embedder",
    "official_parameter_count",
    "REFINED_DIT_SIZES",
    "refined_dit_preset",
    "repa_projector",
]
