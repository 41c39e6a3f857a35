"""Multi-head self-attention with optional QK-norm, value residual and 2-D RoPE (SR-DiT README "Network")."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import RMSNorm
from .rope import RoPE2D


def _qk_norm(kind: str, head_dim: int, eps: float | None) -> nn.Module:
    """Per-head norm of q or k, with a weight: RMSNorm, or LayerNorm with affine (default eps 1e-5)."""
    if kind == "layernorm":
        return nn.LayerNorm(head_dim, eps=1e-5 if eps is None else eps, elementwise_affine=True)
    return RMSNorm(head_dim, eps=eps, affine=True)


# On CPU in bf16 / fp16, PyTorch's fused SDPA kernel (fwd + bwd) is 1.3-8x slower than the explicit
# matmul-softmax-matmul up to this many tokens — SR-DiT-B/1's 257 (REG token + 16² patches) and DiT^DH's 256 at
# 256 px included — and about as fast at 1024 (benchmarks/attention_cpu.py); beyond, SDPA saves the N² scores.
CPU_EXPLICIT_ATTENTION_MAX_TOKENS = 1024


def explicit_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ/√Dh) v (Vaswani et al. 2017, eq. 1) as two matmuls and a softmax, in the inputs' dtype."""
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


def dot_product_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ/√Dh) v on (B, heads, N, Dh) (Vaswani et al. 2017, eq. 1): SDPA, or the explicit
    form where it is faster (half precision on CPU, N ≤ ``CPU_EXPLICIT_ATTENTION_MAX_TOKENS``)."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    short = q.shape[-2] <= CPU_EXPLICIT_ATTENTION_MAX_TOKENS and k.shape[-2] <= CPU_EXPLICIT_ATTENTION_MAX_TOKENS
    if q.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16) or not short:
        return F.scaled_dot_product_attention(q, k, v)
    return explicit_attention(q.to(dtype), k.to(dtype), v.to(dtype))  # the cast SDPA's autocast would do


class Attention(nn.Module):
    """softmax(q kᵀ/√Dh) v over all tokens (Vaswani et al. 2017, eq. 1), computed by ``dot_product_attention``.

    Order, as in the official SR-DiT attention: qkv → heads → RMSNorm on q and k (QK-norm, Dehghani et
    al. 2023; weight on, ``eps=None`` = machine epsilon) → value residual v ← λ·v1 + (1 − λ)·v
    (ResFormer, Zhou et al. 2024; λ an unconstrained scalar initialised to 0.5) → RoPE on q and k →
    attention (no mask, no dropout) → merge heads → ``proj``.

    ``qk_norm_type="layernorm"`` uses LayerNorm(head_dim) with affine instead (LightningDiT / RAE with
    ``use_rmsnorm=False``; ``qk_norm_eps=None`` then means LayerNorm's 1e-5).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        qk_norm_eps: float | None = None,
        value_residual: bool = False,
        qk_norm_type: Literal["rmsnorm", "layernorm"] = "rmsnorm",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if qk_norm_type not in ("rmsnorm", "layernorm"):
            raise ValueError(f"qk_norm_type must be 'rmsnorm' or 'layernorm', got {qk_norm_type!r}")
        self.q_norm = _qk_norm(qk_norm_type, self.head_dim, qk_norm_eps) if qk_norm else nn.Identity()
        self.k_norm = _qk_norm(qk_norm_type, self.head_dim, qk_norm_eps) if qk_norm else nn.Identity()
        if value_residual:
            # one-element vector, not the official 0-dim scalar: FSDP2 cannot shard 0-dim parameters;
            # official (and older) state dicts still load (_load_from_state_dict)
            self.v1_lambda = nn.Parameter(torch.full((1,), 0.5))
        else:
            self.register_parameter("v1_lambda", None)
        self.proj = nn.Linear(dim, dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        key = prefix + "v1_lambda"
        if self.v1_lambda is not None and key in state_dict and state_dict[key].ndim == 0:
            state_dict[key] = state_dict[key].reshape(1)  # the official scalar
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        x: Tensor,
        rope: RoPE2D | None = None,
        pos_ids: Tensor | None = None,
        v1: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x (B, N, dim) → (output (B, N, dim), raw values v (B, heads, N, head_dim) before mixing).

        The first block's raw v is the ``v1`` of every later block; ``v1`` must have this call's tokens
        (e.g. the routed rows in sparse blocks). Without ``v1_lambda`` a given ``v1`` is ignored.
        """
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        v_raw = v
        if self.v1_lambda is not None and v1 is not None:
            v = self.v1_lambda * v1 + (1 - self.v1_lambda) * v
        if rope is not None:
            q, k = rope(q, pos_ids), rope(k, pos_ids)
        out = dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), v_raw
