"""Stage 3 model and decoding: shapes, masks, attention that sums to one and ignores padding, the parallel
teacher-forcing path equal to stepping, batching that never changes a translation, beam size 1 = greedy,
and BLEU equal to sacreBLEU's command line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from stage3_attention_seq2seq.data import BOS_ID, EOS_ID, PAD_ID, Vocab, make_batch
from stage3_attention_seq2seq.decoding import beam_search, bleu, greedy_decode, translate
from stage3_attention_seq2seq.model import ATTENTIONS, Seq2Seq, Seq2SeqConfig, init_weights

V_SRC, V_TGT = 40, 50


def make_model(attention: str, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    model = Seq2Seq(Seq2SeqConfig(V_SRC, V_TGT, emb_dim=16, hidden_dim=24, attention=attention, dropout=0.0))
    init_weights(model)
    return model.eval()


def random_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 4, 1, 6, 7]
    src = [torch.randint(4, V_SRC, (n - 1,), generator=g).tolist() + [EOS_ID] for n in lengths]
    tgt = [torch.randint(4, V_TGT, (n,), generator=g).tolist() + [EOS_ID] for n in [5, 8, 3, 6, 2]]
    return make_batch(src, tgt)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_shapes_and_loss(attention):
    model, b = make_model(attention), random_batch()
    logits, loss, attn = model(b["src"], b["src_len"], b["tgt_in"], b["tgt_out"])
    B, S = b["src"].shape
    T = b["tgt_in"].shape[1]
    assert logits.shape == (B, T, V_TGT)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if attention == "none":
        assert attn is None
    else:
        assert attn.shape == (B, T, S)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_attention_sums_to_one_and_ignores_padding(attention):
    model, b = make_model(attention), random_batch()
    _, _, attn = model(b["src"], b["src_len"], b["tgt_in"])
    assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[:2]), atol=1e-6)
    padding = b["src"] == PAD_ID  # (B, S)
    assert padding.any()
    assert (attn.masked_select(padding.unsqueeze(1).expand_as(attn)) == 0).all()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_does_not_change_the_output(attention):
    """A sentence gives the same logits alone as in a batch padded to a longer length (packing + masks)."""
    model, b = make_model(attention), random_batch()
    full, _, _ = model(b["src"], b["src_len"], b["tgt_in"])
    n = int(b["src_len"][1])
    alone, _, _ = model(b["src"][1:2, :n], b["src_len"][1:2], b["tgt_in"][1:2])
    assert torch.allclose(full[1:2], alone, atol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_forward_equals_stepping(attention):
    """Teacher forcing in one call (the parallel path for luong/none) equals calling `step` token by token."""
    model, b = make_model(attention), random_batch()
    logits, _, attn = model(b["src"], b["src_len"], b["tgt_in"])
    enc, state = model.encode(b["src"], b["src_len"])
    for t in range(b["tgt_in"].shape[1]):
        step_logits, state, w = model.decoder.step(b["tgt_in"][:, t], state, enc)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5)
        if attn is not None:
            assert torch.allclose(w, attn[:, t], atol=1e-6)


def test_gradients_reach_every_parameter():
    model, b = make_model("bahdanau"), random_batch()
    model.train()
    _, loss, _ = model(b["src"], b["src_len"], b["tgt_in"], b["tgt_out"], label_smoothing=0.1)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scheduled_sampling_feeds_back_predictions():
    model, b = make_model("luong"), random_batch()
    forced, _, _ = model(b["src"], b["src_len"], b["tgt_in"])
    torch.manual_seed(0)
    sampled, _, _ = model(b["src"], b["src_len"], b["tgt_in"], teacher_forcing=0.01)
    assert torch.allclose(forced[:, 0], sampled[:, 0], atol=1e-6)  # the first input is always <bos>
    assert not torch.allclose(forced, sampled)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_beam_size_one_is_greedy(attention):
    model, b = make_model(attention, seed=3), random_batch()
    tokens, attn = greedy_decode(model, b["src"], b["src_len"], max_len=12)
    hyps = beam_search(model, b["src"], b["src_len"], beam_size=1, max_len=12)
    for r, h in enumerate(hyps):
        row = tokens[r].tolist()
        row = row[:row.index(EOS_ID) + 1] if EOS_ID in row else row
        assert h["ids"] == row
        if attn is not None:
            assert torch.allclose(h["attn"], attn[r, :len(row)], atol=1e-6)


def test_greedy_never_emits_pad_or_bos():
    model, b = make_model("luong", seed=5), random_batch()
    tokens, _ = greedy_decode(model, b["src"], b["src_len"], max_len=15)
    for row in tokens.tolist():
        n = row.index(EOS_ID) if EOS_ID in row else len(row)
        assert PAD_ID not in row[:n] and BOS_ID not in row[:n]


def test_beam_finds_at_least_greedys_score():
    """Beam search explores more than greedy, so its best (unpenalised) log-probability is never lower."""
    model, b = make_model("bahdanau", seed=4), random_batch()
    tokens, _ = greedy_decode(model, b["src"], b["src_len"], max_len=10)
    beams = beam_search(model, b["src"], b["src_len"], beam_size=4, alpha=0.0, max_len=10)

    def logprob(r, ids):
        enc, state = model.encode(b["src"][r:r + 1], b["src_len"][r:r + 1])
        y, total = torch.tensor([BOS_ID]), 0.0
        for tok in ids:
            logits, state, _ = model.decoder.step(y, state, enc)
            logits[:, [PAD_ID, BOS_ID]] = float("-inf")
            total += torch.log_softmax(logits, -1)[0, tok].item()
            y = torch.tensor([tok])
        return total
    for r, h in enumerate(beams):
        g = tokens[r].tolist()
        if EOS_ID in g and EOS_ID in h["ids"]:
            g = g[:g.index(EOS_ID) + 1]
            assert logprob(r, h["ids"]) >= logprob(r, g) - 1e-4
            assert abs(h["score"] - logprob(r, h["ids"])) < 1e-4  # alpha 0: the score is the log-probability


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translate_does_not_depend_on_batching(beam_size):
    src_vocab = Vocab(["<pad>", "<unk>", "<bos>", "<eos>"] + [f"▁w{i}" for i in range(V_SRC - 4)], "en")
    tgt_vocab = Vocab(["<pad>", "<unk>", "<bos>", "<eos>"] + [f"▁m{i}" for i in range(V_TGT - 4)], "fr")
    model = make_model("bahdanau", seed=6)
    sentences = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10", "w11 w12", "w3 w2 w1 w0"]
    one_batch = translate(model, src_vocab, tgt_vocab, sentences, "cpu", beam_size, batch_size=8, with_attention=True)
    singles = translate(model, src_vocab, tgt_vocab, sentences, "cpu", beam_size, batch_size=1)
    assert [o["text"] for o in one_batch] == [o["text"] for o in singles]
    for s, o in zip(sentences, one_batch):
        assert o["attn"].shape == (len(o["tgt_tokens"]), len(s.split()) + 1)  # + <eos> on the source side


@pytest.mark.slow
def test_bleu_matches_the_sacrebleu_command_line(tmp_path):
    hyps = ["Un homme fait du vélo.", "Deux chiens jouent dans la neige !", "une femme lit un livre"]
    refs = ["Un homme fait du vélo dans la rue.", "Deux chiens jouent dans la neige\u00a0!", "Une femme lit un livre."]
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    for lowercase in (False, True):
        ours, signature = bleu(hyps, refs, lowercase=lowercase)
        cmd = [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
               "-b", "-w", "2"] + (["-lc"] if lowercase else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        assert ours == float(out)
        assert ("case:lc" if lowercase else "case:mixed") in signature and "tok:13a" in signature
