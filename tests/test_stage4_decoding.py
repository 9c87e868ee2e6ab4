"""Stage 4 decoding: cached = uncached, beam size 1 = greedy, and batching never changes a translation."""
from __future__ import annotations

import pytest
import torch

from stage4_transformer.data import EOS_ID, SPECIALS, Vocab, make_batch
from stage4_transformer.decoding import beam_search, greedy_decode, translate
from stage4_transformer.model import Transformer, TransformerConfig

V = 40


def make_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(V, V, d_model=32, n_heads=4, n_enc_layers=2, n_dec_layers=2, d_ff=64, dropout=0.0, **kw)
    return Transformer(cfg).eval()


def batch() -> torch.Tensor:
    return make_batch([[5, 6, 7, 8, EOS_ID], [9, 10, EOS_ID], [11, EOS_ID]])["src"]


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cached_greedy_equals_uncached(norm):
    model, src = make_model(norm=norm), batch()
    a, attn_a = greedy_decode(model, src, max_len=12, use_cache=True)
    b, attn_b = greedy_decode(model, src, max_len=12, use_cache=False)
    assert torch.equal(a, b) and torch.allclose(attn_a, attn_b, atol=1e-5)


def test_cached_beam_equals_uncached():
    model, src = make_model(1), batch()
    a = beam_search(model, src, beam_size=3, max_len=10, use_cache=True)
    b = beam_search(model, src, beam_size=3, max_len=10, use_cache=False)
    assert [h["ids"] for h in a] == [h["ids"] for h in b]
    assert all(abs(x["score"] - y["score"]) < 1e-4 for x, y in zip(a, b))


def test_beam_size_one_is_greedy():
    model, src = make_model(2), batch()
    tokens, attn = greedy_decode(model, src, max_len=12)
    for r, h in enumerate(beam_search(model, src, beam_size=1, max_len=12)):
        row = tokens[r].tolist()
        row = row[:row.index(EOS_ID) + 1] if EOS_ID in row else row
        assert h["ids"] == row
        assert torch.allclose(h["attn"], attn[r, :len(row)], atol=1e-6)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translate_does_not_depend_on_batching(beam_size):
    vocab = Vocab(SPECIALS + [f"▁w{i}" for i in range(V - 4)])
    model = make_model(3)
    sentences = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10", "w11 w12"]
    together = translate(model, vocab, sentences, "cpu", beam_size, batch_size=8, with_attention=True)
    alone = translate(model, vocab, sentences, "cpu", beam_size, batch_size=1)
    assert [o["text"] for o in together] == [o["text"] for o in alone]
    assert together[2]["attn"].shape == (len(together[2]["tgt_tokens"]), 7)
