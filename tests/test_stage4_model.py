"""Stage 4 model: parity with torch.nn (MultiheadAttention, TransformerEncoderLayer, TransformerDecoderLayer) after
copying weights, masks (no attention to padding or to the future), positions, and cached decoding = uncached."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from stage4_transformer.model import (DecoderLayer, EncoderLayer, MultiHeadAttention, Transformer, TransformerConfig,
                                      causal_mask, scaled_dot_product_attention, sinusoidal_positions)

D, H, FF = 32, 4, 64


def cfg(**kw) -> TransformerConfig:
    base = dict(src_vocab_size=30, tgt_vocab_size=40, d_model=D, n_heads=H, n_enc_layers=2, n_dec_layers=2, d_ff=FF,
                dropout=0.0)
    return TransformerConfig(**{**base, **kw})


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)


def copy_layer(ours, theirs) -> None:
    copy_attention(ours.self_attn, theirs.self_attn)
    if hasattr(ours, "cross_attn"):
        copy_attention(ours.cross_attn, theirs.multihead_attn)
    with torch.no_grad():
        for a, b in [(ours.ff.linear1, theirs.linear1), (ours.ff.linear2, theirs.linear2), (ours.norm1, theirs.norm1),
                     (ours.norm2, theirs.norm2)] + ([(ours.norm3, theirs.norm3)] if hasattr(ours, "norm3") else []):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)


def randomize(module: nn.Module) -> None:
    """LayerNorms start at 1/0; give every parameter random values so the copy is really checked."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def padding(B: int, S: int, lengths: list[int]) -> torch.Tensor:
    """(B, S) True on real tokens."""
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]


def test_multi_head_attention_matches_torch():
    ours, theirs = MultiHeadAttention(D, H, 0.0), nn.MultiheadAttention(D, H, dropout=0.0, batch_first=True)
    randomize(ours)
    copy_attention(ours, theirs)
    q, kv = torch.randn(3, 5, D), torch.randn(3, 7, D)
    real = padding(3, 7, [7, 4, 1])
    out, w, _ = ours(q, kv, kv, real[:, None, None, :])
    ref, ref_w = theirs(q, kv, kv, key_padding_mask=~real, average_attn_weights=False)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(w, ref_w, atol=1e-6)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_layer_matches_torch(kind, norm):
    ours_cls, theirs_cls = {"encoder": (EncoderLayer, nn.TransformerEncoderLayer),
                            "decoder": (DecoderLayer, nn.TransformerDecoderLayer)}[kind]
    ours = ours_cls(cfg(norm=norm))
    theirs = theirs_cls(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm == "pre")
    randomize(ours)
    copy_layer(ours, theirs)
    y, memory, real = torch.randn(3, 5, D), torch.randn(3, 6, D), padding(3, 6, [6, 3, 2])
    if kind == "encoder":
        out, _ = ours(memory, real[:, None, None, :])
        ref = theirs(memory, src_key_padding_mask=~real)
        assert torch.allclose(out[real], ref[real], atol=1e-5)  # torch's fast path may zero padded rows
    else:
        out, _, _ = ours(y, memory, causal_mask(5)[None, None], real[:, None, None, :])
        ref = theirs(y, memory, tgt_mask=~causal_mask(5), memory_key_padding_mask=~real)
        assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_whole_model_matches_nn_transformer():
    """Our pre-norm stack = nn.Transformer(norm_first=True) with the same weights, final norms included."""
    c = cfg(norm="pre")
    ours = Transformer(c).eval()
    theirs = nn.Transformer(D, H, 2, 2, FF, dropout=0.0, batch_first=True, norm_first=True).eval()
    randomize(ours)
    for a, b in zip(ours.encoder, theirs.encoder.layers):
        copy_layer(a, b)
    for a, b in zip(ours.decoder, theirs.decoder.layers):
        copy_layer(a, b)
    with torch.no_grad():
        for a, b in [(ours.enc_norm, theirs.encoder.norm), (ours.dec_norm, theirs.decoder.norm)]:
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13], [2, 14, 15, 0]])
    logits, _ = ours(src, tgt)
    memory_mask = src == 0
    h = theirs(ours.src_embed(src), ours.tgt_embed(tgt), tgt_mask=~causal_mask(4), src_key_padding_mask=memory_mask,
               memory_key_padding_mask=memory_mask)
    assert torch.allclose(logits, ours.out(h), atol=1e-5)


def test_attention_ignores_padding_and_the_future():
    q = k = v = torch.randn(2, 1, 4, 8)
    mask = causal_mask(4)[None, None] & padding(2, 4, [4, 2])[:, None, None, :]
    _, w = scaled_dot_product_attention(q, k, v, mask[:, :, :, :])
    assert torch.allclose(w.sum(-1), torch.ones(2, 1, 4))
    assert (w.masked_select(~mask.expand_as(w)) == 0).all()
    # in the model: changing a future target token or a padded source token changes nothing before it
    model = Transformer(cfg()).eval()
    src = torch.tensor([[5, 6, 7, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13, 14]])
    base, _ = model(src, tgt)
    changed_tgt = tgt.clone()
    changed_tgt[0, 3] = 20
    after, _ = model(src, changed_tgt)
    assert torch.allclose(base[:, :3], after[:, :3], atol=1e-6) and not torch.allclose(base[:, 3], after[:, 3])
    shorter, _ = model(src[:, :4], tgt)  # the same sentence without its padding
    assert torch.allclose(base, shorter, atol=1e-5)


@pytest.mark.parametrize("norm,pos", [("pre", "sinusoidal"), ("post", "learned")])
def test_cached_decoding_equals_uncached(norm, pos):
    model = Transformer(cfg(norm=norm, pos=pos)).eval()
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13, 14, 15], [2, 16, 17, 18, 19, 20]])
    memory, src_mask, _ = model.encode(src)
    full, _, _ = model.decode(tgt, memory, src_mask)
    cache = [{} for _ in model.decoder]
    for t in range(tgt.shape[1]):
        step, _, _ = model.decode(tgt[:, t:t + 1], memory, src_mask, cache, start=t)
        assert torch.allclose(step[:, 0], full[:, t], atol=1e-5), t


def test_sinusoidal_positions():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    assert torch.allclose(pe[0, 0::2], torch.zeros(8)) and torch.allclose(pe[0, 1::2], torch.ones(8))
    assert torch.allclose(pe[7, 0], torch.sin(torch.tensor(7.0)))


def test_shared_and_tied_embeddings():
    c = cfg(src_vocab_size=40, share_embeddings=True)
    m = Transformer(c)
    assert m.src_embed.tokens is m.tgt_embed.tokens and m.out.weight is m.tgt_embed.tokens.weight
    untied = Transformer(cfg(src_vocab_size=40, tie_output=False))
    assert m.num_params() == untied.num_params() - 2 * 40 * D
    with pytest.raises(ValueError, match="joint vocabulary"):
        cfg(share_embeddings=True)


def test_joint_table_scores_only_the_target_tokens():
    """A shared joint table of 40 rows whose first 25 are the target side: the decoder scores those 25 only, with
    exactly the rows of the embedding table, and gradients reach the table through both uses."""
    m = Transformer(cfg(src_vocab_size=40, tgt_vocab_size=25, share_embeddings=True))
    assert m.out.weight is m.src_embed.tokens.weight and m.out.weight.shape == (40, D)
    src, tgt = torch.randint(4, 40, (2, 7)), torch.randint(4, 25, (2, 6))
    logits, loss = m(src, tgt, tgt)
    assert logits.shape == (2, 6, 25)
    h = torch.randn(3, D)
    assert torch.allclose(m.out(h), h @ m.src_embed.tokens.weight[:25].T, atol=1e-6)
    loss.backward()
    assert m.src_embed.tokens.weight.grad[25:].abs().sum() > 0  # source-only rows still learn (from the encoder)


def test_vocab_puts_target_tokens_first(tmp_path):
    from stage4_transformer.data import SPECIALS, Vocab
    src = ["a man runs .", "a dog runs ."]
    tgt = ["un homme court .", "un chien court ."]
    v = Vocab.build(src + tgt, min_freq=1, targets=tgt)
    written = v.itos[len(SPECIALS):v.n_target]
    assert set(written) == {"▁un", "▁homme", "▁court", "▁.", "▁chien"}  # every target token, nothing else
    assert set(v.itos[v.n_target:]) == {"▁a", "▁man", "▁runs", "▁dog"}
    assert all(i < v.n_target for t in tgt for i in v.encode(t))
    assert v.encode("un dog", target=True) == [v.stoi["▁un"], 1, 3]  # a source-side token is <unk> (1) for the decoder
    v.save(tmp_path / "v.json")
    again = Vocab.load(tmp_path / "v.json")
    assert again.itos == v.itos and again.n_target == v.n_target and again.fingerprint() == v.fingerprint()
    assert Vocab.build(src + tgt, min_freq=1).n_target == len(v)  # without targets: every entry can be written
