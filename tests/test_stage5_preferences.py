"""Stage 5 preference pairs: the variety measures on hand-made texts, KL and perplexity against a written-out
computation, samples that do not depend on how requests are batched, pairs ordered by the reward, any stage's
classifier as the reward model, IMDb prompts, and bad input in one line."""
from __future__ import annotations

import math

import pytest
import torch

import tiny_checkpoints
from scripts.common import UserError
from stage5_gpt import preferences
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.tokenizer import BPETokenizer


def tiny(seed: int, vocab: int = 300) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()


def test_text_stats_on_hand_made_texts():
    assert preferences.text_stats(["a b a b"]) == {"distinct_2": round(2 / 3, 4), "repetition_rate": 0.5}
    assert preferences.text_stats(["one two three four"]) == {"distinct_2": 1.0, "repetition_rate": 0.0}
    assert preferences.text_stats(["great great great great"])["repetition_rate"] == 0.75


def test_kl_is_zero_against_itself_and_perplexity_is_the_written_out_one():
    policy, other = tiny(0), tiny(1)
    prompts, conts = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]
    assert preferences.kl_and_perplexity(policy, policy, prompts, conts)["kl_per_token"] == 0.0
    got = preferences.kl_and_perplexity(policy, other, prompts, conts)
    nll = 0.0
    for p, c in zip(prompts, conts):
        with torch.no_grad():
            logq = torch.log_softmax(other(torch.tensor([p + c]))[0][0], -1)
        nll -= sum(float(logq[len(p) - 1 + j, t]) for j, t in enumerate(c))
    assert math.isclose(got["reference_ppl"], math.exp(nll / 5), rel_tol=1e-3) and got["kl_per_token"] > 0


def test_samples_do_not_depend_on_the_batching():
    model = tiny(0)
    prompts = [[1, 2], [3, 4, 5], [6]]
    a = preferences.sample_groups(model, prompts, group=3, max_new_tokens=6, seed=7, batch_size=2)
    b = preferences.sample_groups(model, prompts, group=3, max_new_tokens=6, seed=7, batch_size=32)
    assert a == b and len(a) == 3 and all(len(g) == 3 for g in a) and a[0][0] != a[0][1]


def test_pairs_put_the_higher_reward_first():
    tok = BPETokenizer.train("the film was good and the film was bad " * 20, 300)
    model = tiny(0, vocab=len(tok))
    reward = lambda texts: torch.tensor([t.count("e") / max(len(t), 1) for t in texts])  # noqa: E731
    pairs = preferences.make_pairs(model, tok, ["the film", "it was"], reward, group=4, max_new_tokens=8,
                                   min_margin=0.0)
    assert pairs and all(p["scores"][0] >= p["scores"][1] for p in pairs)
    for p in pairs:
        text = tok.decode(p["prompt"])
        assert math.isclose(float(reward([text + tok.decode(p["chosen"])])[0]), p["scores"][0], abs_tol=1e-4)
    with pytest.raises(UserError, match="at least 2"):
        preferences.make_pairs(model, tok, ["x"], reward, group=1)


def test_any_stages_classifier_is_a_reward_model(tmp_path):
    path = tiny_checkpoints.stage1(tmp_path)
    score = preferences.load_classifier(path)
    s = score(["a wonderful film", "an awful film"])
    assert s.shape == (2,) and ((0 <= s) & (s <= 1)).all()


@pytest.mark.real_data("imdb")
def test_imdb_prompts_are_the_first_words_of_both_kinds_of_review(real_data_dir):
    prompts = preferences.review_prompts(real_data_dir, "test", 100)
    assert len(prompts) == 100 and all(len(p.split()) == preferences.PROMPT_WORDS for p in prompts)
    assert not any("<br" in p for p in prompts)
