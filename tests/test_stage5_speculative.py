"""Stage 5 speculative decoding: greedy output identical to the target's own for every k (also near the end of the
context and with a stop token), sampled output distributed as the target's (a chi-square test on a small vocabulary,
which the naive "take the draft's tokens" rule fails), and bad input in one line."""
from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from scripts.common import UserError
from stage5_gpt import speculative
from stage5_gpt.model import GPT, GPTConfig


def gpt(seed: int, vocab: int = 50, block: int = 32, n_embd: int = 32, layers: int = 2, spread: float = 1.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=2, n_embd=n_embd, pos="rope"))
    with torch.no_grad():
        model.wte.weight.mul_(spread)      # larger embeddings: sharper, less uniform next-token distributions
    return model.eval()


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_greedy_text_is_the_targets_own(k):
    target, draft = gpt(0), gpt(1, layers=1, n_embd=16)
    for prompt in ([3], [5, 1, 4, 1, 5]):
        plain = speculative.plain_generate(target, prompt, 40)
        new, stats = speculative.speculative_generate(target, draft, prompt, 40, k)
        assert new == plain and len(new) == min(40, 32 - len(prompt))       # up to the end of the context
        assert stats["target_passes"] <= len(new)


def test_a_perfect_draft_is_always_accepted_and_saves_passes():
    target = gpt(0)
    new, stats = speculative.speculative_generate(target, target, [7, 8], 24, k=4)
    assert new == speculative.plain_generate(target, [7, 8], 24)
    assert stats["acceptance_rate"] == 1.0 and stats["target_passes"] == 5    # 5 tokens per pass: 4 + 1 free


def test_generation_stops_at_the_stop_token_it_keeps():
    target, draft = gpt(0), gpt(1)
    plain = speculative.plain_generate(target, [2, 3], 20)
    stop = plain[5]
    new, _ = speculative.speculative_generate(target, draft, [2, 3], 20, k=3, stop_id=stop)
    assert new == plain[:plain.index(stop) + 1]


def exact_pairs(target: GPT, prompt: list[int], temperature: float) -> dict:
    """The target's own probability of every pair of next tokens: q(a) q(b | a)."""
    from stage5_gpt.model import next_token_probs
    V = target.cfg.vocab_size
    with torch.no_grad():
        first = next_token_probs(target(torch.tensor([prompt]))[0][:, -1], temperature)[0]
        seconds = next_token_probs(target(torch.tensor([prompt + [a] for a in range(V)]))[0][:, -1], temperature)
    return {(a, b): float(first[a] * seconds[a, b]) for a, b in itertools.product(range(V), repeat=2)}


def chi2_pvalue(samples: list[tuple[int, int]], exact: dict) -> float:
    cells = list(exact)
    observed = [sum(s == c for s in samples) for c in cells]
    total = sum(exact.values())                           # 1, up to float rounding
    expected = [exact[c] / total * len(samples) for c in cells]
    return float(chisquare(observed, expected).pvalue)


def test_sampled_text_follows_the_targets_distribution_and_the_naive_rule_does_not():
    small = {"vocab": 5, "block": 8, "spread": 4, "layers": 1, "n_embd": 16}
    target, draft = gpt(0, **small), gpt(3, **small)
    prompt, temperature = [1, 2], 1.0
    exact = exact_pairs(target, prompt, temperature)
    g = torch.Generator().manual_seed(0)
    samples = [tuple(speculative.speculative_generate(target, draft, prompt, 2, k=2, temperature=temperature,
                                                      generator=g)[0]) for _ in range(1200)]
    assert chi2_pvalue(samples, exact) > 0.01      # measured: 0.70
    # the test can fail: tokens drawn from the draft, unchecked, are distributed as the draft, not the target
    naive = [tuple(speculative.plain_sampled(draft, prompt, 2, temperature, g)) for _ in range(1200)]
    assert chi2_pvalue(naive, exact) < 1e-6       # measured: 1e-19


def test_bad_input_is_one_line():
    target = gpt(0)
    with pytest.raises(UserError, match="at least 1"):
        speculative.speculative_generate(target, target, [1], 5, k=0)
    with pytest.raises(UserError, match="the models read at most"):
        speculative.speculative_generate(target, target, list(range(32)), 5)
    with pytest.raises(UserError, match="another tokenizer"):
        speculative.check_pair({"data": {"fingerprint": "a"}}, {"data": {"fingerprint": "b"}}, "t.pt", "d.pt")


def test_the_script_measures_each_k_on_checkpoints_and_writes_its_figures(tmp_path, capsys):
    """A trained GPT as its own draft: every proposal accepted, the text the target's own, a result file and plot."""
    import json

    from conftest import write_tiny_lm_data
    from stage5_gpt import train
    data = write_tiny_lm_data(tmp_path / "data")
    train.main(["--data-dir", str(data), "--out-dir", str(tmp_path / "lm"), "--dataset", "wikitext2", "--vocab-size",
                "300", "--epochs", "1", "--batch-size", "8", "--block-size", "32", "--n-layer", "1", "--n-head", "2",
                "--n-embd", "32", "--no-tensorboard"])
    ckpt, out = tmp_path / "lm" / "best.pt", tmp_path / "spec.json"
    speculative.main(["--checkpoint", str(ckpt), "--draft", str(ckpt), "--k", "1", "3", "--max-new-tokens", "12",
                      "--rounds", "1", "--prompt", "the", "--result", str(out)])
    r = json.loads(out.read_text())
    assert set(r["rows"]) == {"plain", "k=1", "k=3"} and r["greedy_identical"]
    assert all(r["rows"][k]["acceptance_rate"] == 1.0 for k in ("k=1", "k=3"))
    assert r["target_val_ppl"] is not None and r["target_params"] == r["draft_params"]
    assert "run" not in r and out.with_suffix(".png").exists()
