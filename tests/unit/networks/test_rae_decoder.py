"""RAEDecoder (RAE Sec. 3, App. E.2): shapes, the dropped [CLS], fixed sin-cos positions, p_d = 2·p_e
upsampling, the interpolate_latent path, clear errors, official B/L/XL sizes and the importer's strictness."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.blocks.embeddings import sincos_2d_pos_embed
from speedrun_diffusion.lightning_modules.checkpoints import OfficialCheckpointError, import_official
from speedrun_diffusion.lightning_modules.networks.rae import RAE
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder, RAEDecoderConfig, rae_decoder_preset
from speedrun_diffusion.lightning_modules.networks.rae_encoder import (
    RepresentationEncoder,
    representation_encoder_preset,
)

TINY = RAEDecoderConfig(latent_dim=8, hidden_size=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, num_patches=16)



@pytest.fixture(autouse=True)
def _one_thread(_deterministic_torch):
    """Tiny tensors: one thread avoids oversubscription stalls on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shapes_and_cls_dropped() -> None:
    dec = RAEDecoder(TINY)
    tokens = torch.randn(2, 16, 8)
    logits, hidden = dec(tokens, return_hidden_states=True)
    assert logits.shape == (2, 16, 4 * 4 * 3)
    assert len(hidden) == TINY.depth + 1 and all(h.shape == (2, 17, 16) for h in hidden)
    # row 0 of the first hidden state is the learned [CLS] (its position row is zero), not an input token
    torch.testing.assert_close(hidden[0][:, 0], dec.cls_token[0].expand(2, -1))
    torch.testing.assert_close(hidden[0][:, 1:], dec.embed(tokens) + dec.pos_embed[:, 1:])
    # logits are the prediction of rows 1.. only
    torch.testing.assert_close(logits, dec.pred(dec.norm(hidden[-1]))[:, 1:])
    assert dec.unpatchify(logits).shape == (2, 3, 16, 16)
    assert dec.last_layer is dec.pred.weight


def test_cls_token_zero_init_and_fixed_positions() -> None:
    dec = RAEDecoder(TINY)
    assert torch.count_nonzero(dec.cls_token) == 0
    assert not dec.pos_embed.requires_grad and "pos_embed" in dec.state_dict()
    torch.testing.assert_close(dec.pos_embed[0], sincos_2d_pos_embed(16, 4, num_extra_tokens=1), rtol=0, atol=0)
    # first half of the channels encodes the column: tokens in one column share it
    pe = dec.pos_embed[0, 1:].reshape(4, 4, 16)
    torch.testing.assert_close(pe[0, :, :8], pe[3, :, :8])


def test_unpatchify_layout() -> None:
    dec = RAEDecoder(TINY)
    logits = torch.randn(1, 16, 48)
    img = dec.unpatchify(logits)
    i, j, p, q, c = 2, 1, 3, 0, 2  # image[c, i·p_d + p, j·p_d + q] = logits[i·w + j, (p·p_d + q)·3 + c]
    assert img[0, c, i * 4 + p, j * 4 + q] == logits[0, i * 4 + j, (p * 4 + q) * 3 + c]


def test_other_grid_is_resized_to_the_trained_grid() -> None:
    dec = RAEDecoder(TINY)
    out = dec(torch.randn(2, 9, 8))
    assert out.shape == (2, 16, 48)
    x = torch.randn(2, 16, 8)
    torch.testing.assert_close(dec.resize_tokens(dec.embed(x)), dec.embed(x))  # trained grid: identity


def test_decoder_patch_twice_encoder_patch_doubles_resolution() -> None:
    enc = RepresentationEncoder(representation_encoder_preset("mae", hidden_size=16, depth=1, num_heads=2, mlp_dim=32,
                                                              patch_size=8, pos_grid=4))
    dec = RAEDecoder(RAEDecoderConfig(latent_dim=16, hidden_size=16, depth=1, num_heads=2, mlp_dim=32, patch_size=16,
                                      num_patches=16))
    rae = RAE(enc, dec, encoder_input_size=32).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert rae.decode(rae.encode(x)).shape == (1, 3, 64, 64)


def test_clear_errors() -> None:
    dec = RAEDecoder(TINY)
    with pytest.raises(ValueError, match="square"):
        dec(torch.randn(1, 15, 8))
    with pytest.raises(ValueError, match="latent_dim=8"):
        dec(torch.randn(1, 16, 7))
    with pytest.raises(ValueError, match="num_patches"):
        RAEDecoderConfig(num_patches=15)
    with pytest.raises(ValueError, match="num_heads"):
        RAEDecoderConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown RAE decoder size"):
        rae_decoder_preset("XXL")


@pytest.mark.parametrize("size,total", [("B", 86_435_328), ("L", 304_150_272), ("XL", 415_352_704)])
def test_official_decoder_param_counts(size: str, total: int) -> None:
    with torch.device("meta"):
        dec = RAEDecoder(rae_decoder_preset(size))
    assert sum(p.numel() for p in dec.parameters()) == total
    # everything but the fixed position table trains
    assert sum(p.numel() for p in dec.parameters() if p.requires_grad) == total - 257 * dec.cfg.hidden_size


def test_importer_is_strict_and_names_keys() -> None:
    official = {"hidden_size": 8, "patch_size": 4, "num_patches": 16, "decoder_hidden_size": 16,
                "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32}
    ours = RAEDecoder(RAEDecoderConfig(latent_dim=8, hidden_size=16, depth=1, num_heads=2, mlp_dim=32, patch_size=4,
                                       num_patches=16))
    sd = {"decoder_embed.weight": ours.embed.weight, "decoder_embed.bias": ours.embed.bias,
          "trainable_cls_token": ours.cls_token, "decoder_pos_embed": ours.pos_embed,
          "decoder_norm.weight": ours.norm.weight, "decoder_norm.bias": ours.norm.bias,
          "decoder_pred.weight": ours.pred.weight, "decoder_pred.bias": ours.pred.bias}
    blk = ours.blocks[0]
    q, k, v = blk.attn.qkv.weight.chunk(3)
    qb, kb, vb = blk.attn.qkv.bias.chunk(3)
    names = {"attention.attention.query": (q, qb), "attention.attention.key": (k, kb),
             "attention.attention.value": (v, vb), "attention.output.dense": (blk.attn.proj.weight, blk.attn.proj.bias),
             "intermediate.dense": (blk.mlp.fc1.weight, blk.mlp.fc1.bias),
             "output.dense": (blk.mlp.fc2.weight, blk.mlp.fc2.bias),
             "layernorm_before": (blk.norm1.weight, blk.norm1.bias),
             "layernorm_after": (blk.norm2.weight, blk.norm2.bias)}
    for name, (w, b) in names.items():
        sd[f"decoder_layers.0.{name}.weight"], sd[f"decoder_layers.0.{name}.bias"] = w, b
    dec = import_official("rae.decoder", sd, official)
    x = torch.randn(1, 16, 8)
    torch.testing.assert_close(dec(x), ours(x))
    sd.pop("decoder_norm.bias")
    with pytest.raises(OfficialCheckpointError, match="norm.bias"):
        import_official("rae.decoder", sd, official)
    with pytest.raises(ValueError, match="patch_size"):
        import_official("rae.decoder", sd, {**official, "patch_size": "SHOULD BE RELOADED"})


def test_decoder_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    dec = RAEDecoder(TINY)
    tokens, target = torch.randn(2, 16, 8), torch.randn(2, 3, 16, 16)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = (dec.decode(tokens) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]
    assert dec.pos_embed.grad is None  # the fixed table never trains
