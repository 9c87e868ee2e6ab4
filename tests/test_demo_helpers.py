"""The small functions the stages gained for the web demo (scripts/demo.py). They belong to the stages and need no
gradio, so they are tested here, on the tiny checkpoints of tests/tiny_checkpoints.py.

stage1_mlp.predict.classify, stage3_attention_seq2seq.evaluate.attention_figure, stage5_gpt.generate.stream_text and
stage6_bert.fill_mask.load_mlm; each script's own output must be what it was before them.
"""
from __future__ import annotations

import argparse
import io
import json

import pytest
import torch

import tiny_checkpoints
from stage1_mlp import predict as s1_predict
from stage1_mlp.evaluate import load_model as s1_load_model
from stage3_attention_seq2seq.evaluate import attention_figure, plot_attention
from stage5_gpt import generate as s5_generate
from stage5_gpt.evaluate import load_model as s5_load_model
from stage6_bert import fill_mask
from stage6_bert.predict import load_pretrained

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_checkpoints.make_all(tmp_path_factory.mktemp("tiny"))


def test_classify_gives_probabilities_and_known_ngram_counts(checkpoints):
    model, vocab, _ = s1_load_model(checkpoints["stage1"], DEVICE)
    texts = ["A gripping, beautifully acted film with a wonderful cast.", "zzzz qqqq"]
    probs, known = s1_predict.classify(model, vocab, texts, DEVICE)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2))
    assert known[0] > 0 and known[1] == 0           # only <unk> in the second text
    assert torch.allclose(probs, s1_predict.load_predictor(checkpoints["stage1"])(texts))


def test_predict_script_reports_what_classify_gives(checkpoints, capsys):
    model, vocab, _ = s1_load_model(checkpoints["stage1"], DEVICE)
    texts = ["A gripping, beautifully acted film with a wonderful cast.", "zzzz qqqq"]
    probs, known = s1_predict.classify(model, vocab, texts, DEVICE)
    s1_predict.main(["--checkpoint", str(checkpoints["stage1"]), "--device", "cpu", "--json", *texts])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["known_ngrams"] for r in rows] == known
    assert [r["probs"]["pos"] for r in rows] == [round(float(p), 4) for p in probs[:, 1]]
    s1_predict.main(["--checkpoint", str(checkpoints["stage1"]), "--device", "cpu", "zzzz qqqq"])
    assert capsys.readouterr().out.rstrip().endswith("zzzz qqqq  (no known n-grams: this is a guess)")


def test_attention_figure_is_what_plot_attention_saves(tmp_path):
    src, tgt = ["\u2581A", "\u2581dog", ".", "<eos>"], ["\u2581Un", "\u2581chien", "<eos>"]
    attn = torch.softmax(torch.randn(3, 4), -1)
    fig = attention_figure(src, tgt, attn, title="A dog.")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "dog", ".", "<eos>"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Un", "chien", "<eos>"]
    plot_attention(tmp_path / "maps" / "a.png", src, tgt, attn)
    assert (tmp_path / "maps" / "a.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("no_stream", [False, True])
def test_stream_text_grows_to_what_generate_prints(checkpoints, no_stream):
    model, tok, _ = s5_load_model(checkpoints["stage5"], DEVICE)
    prompt = "The history of the city"
    ids = s5_generate.encode_prompt(tok, prompt)
    steps = list(s5_generate.stream_text(model, tok, ids, 15, DEVICE, temperature=0.9, top_k=50, seed=7))
    assert [n for _, n in steps] == list(range(1, 16))
    texts = [t for t, _ in steps]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))         # each text extends the one before
    assert texts[-1] == tok.decode(model.generate(torch.tensor([ids]), 15, temperature=0.9, top_k=50,
                                                  generator=torch.Generator().manual_seed(7))[0, len(ids):].tolist())
    args = argparse.Namespace(max_new_tokens=15, temperature=0.9, top_k=50, top_p=None, repetition_penalty=1.0,
                              seed=7, no_kv_cache=False, no_stream=no_stream)
    out = io.StringIO()
    assert s5_generate.generate(model, tok, prompt, args, DEVICE, out) == texts[-1]
    assert out.getvalue() == prompt + texts[-1] + "\n"


def test_load_mlm_is_what_fill_mask_reads(checkpoints, capsys):
    model, tok = fill_mask.load_mlm(checkpoints["stage6_mlm"], DEVICE)
    state, cfg, _, _ = load_pretrained(checkpoints["stage6_mlm"])
    assert not model.training and len(tok) == cfg.vocab_size
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    ids = fill_mask.encode_masked(tok, "the movie was [MASK] .", cfg.max_position)
    best = fill_mask.fill_mask(model, ids, 1, DEVICE)[0][0][0]
    fill_mask.main(["the movie was [MASK] .", "--top-k", "1", "--checkpoint", str(checkpoints["stage6_mlm"]),
                    "--device", "cpu"])
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == tok.vocab[best]
