"""Stage 5 batched generation and continuous batching: every request's text equals its text generated alone (greedy
and sampled, each row with its own settings, prompt length, stop tokens and length limit), rows are reused as requests
end and arrive, and bad requests are one-line errors."""
from __future__ import annotations

import pytest
import torch

from scripts.common import UserError
from stage5_gpt import batching
from stage5_gpt.batching import Request
from stage5_gpt.model import GPT, GPTConfig


@pytest.fixture(scope="module", params=[("rope", "sdpa"), ("learned", "manual")])
def model(request):
    torch.manual_seed(0)
    pos, attn = request.param
    m = GPT(GPTConfig(vocab_size=40, block_size=48, n_layer=2, n_head=2, n_embd=32, pos=pos, attn=attn)).eval()
    with torch.no_grad():
        m.wte.weight.mul_(3)          # sharper distributions: greedy and sampled paths diverge quickly if wrong
    return m


def requests() -> list[Request]:
    return [Request([1, 2, 3], 12),
            Request([5], 20, temperature=0.9, seed=1),
            Request([7, 8, 9, 10, 11, 12, 13, 14], 6, temperature=1.2, top_k=5, seed=2),
            Request([3, 3, 3, 3], 15, temperature=0.7, top_p=0.8, repetition_penalty=1.3, seed=3),
            Request([20, 21], 25, stop_ids=(4, 9, 17)),
            Request([2] * 30, 18, temperature=1.0, seed=4, stop_ids=(6,))]


def alone(model) -> list[batching.Handle]:
    return [batching.generate_one(model, r) for r in requests()]


def test_a_left_padded_batch_gives_each_request_its_own_text(model):
    want = alone(model)
    got = batching.generate_batch(model, requests())
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.finish_reason for h in got] == [h.finish_reason for h in want]
    assert {h.finish_reason for h in want} == {"stop", "length"}      # both ways of ending are exercised


def test_continuous_batching_admits_and_retires_rows_and_changes_no_text(model):
    want = alone(model)
    batcher = batching.ContinuousBatcher(model, max_batch=2)          # fewer rows than requests: rows are reused
    reqs = requests()
    handles = [batcher.submit(r) for r in reqs[:3]]
    steps = 0
    while batcher.busy:
        batcher.step()
        steps += 1
        if steps == 3:                                                # more arrive while others are running
            handles += [batcher.submit(r) for r in reqs[3:]]
    assert [h.tokens for h in handles] == [h.tokens for h in want] and all(h.done for h in handles)
    assert steps < sum(len(h.tokens) for h in want)                   # rows decoded together, not one by one


def test_bad_requests_are_one_line(model):
    for req, pattern in [(Request([], 5), "at least one token"), (Request([1], 0), "at least 1"),
                         (Request([1] * 40, 10), "exceed the model's context")]:
        with pytest.raises(UserError, match=pattern):
            batching.generate_batch(model, [req])
        with pytest.raises(UserError, match=pattern):
            batching.ContinuousBatcher(model).submit(req)


def test_a_cancelled_request_frees_its_row_for_the_next(model):
    batcher = batching.ContinuousBatcher(model, max_batch=1)
    first = batcher.submit(Request([1, 2], 30))
    second = batcher.submit(Request([3, 4], 5))
    batcher.step()
    assert len(first.tokens) == 1 and not second.tokens and batcher.in_flight == 2
    batcher.cancel(first)
    assert first.done and first.finish_reason == "cancelled" and batcher.in_flight == 1
    while batcher.busy:
        batcher.step()
    assert second.tokens == batching.generate_one(model, Request([3, 4], 5)).tokens
    waiting = batcher.submit(Request([5], 5))
    batcher.cancel(waiting)                                  # still in the queue: it just leaves it
    assert not batcher.busy


def test_throughput_serves_every_request_at_each_concurrency(model):
    prompts = [[1, 2, 3]] * 6
    for c in (1, 3):
        row = batching.throughput(model, prompts, c, max_batch=c, new_tokens=5)
        assert row["requests"] == 6 and row["tokens_per_second"] > 0 and row["mean_latency_s"] > 0

