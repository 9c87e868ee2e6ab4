"""dpo.py end to end on tiny files: pairs sampled and ranked by a Stage 1 classifier, DPO training that lowers the
loss, held-out figures next to the reference's, the polite/rude pairs through the chat template, exact resume, and
bad input in one line."""
from __future__ import annotations

import json

import pytest
import torch

import tiny_checkpoints
from conftest import assert_one_line_error, cli, write_tiny_data
from scripts.common import load_checkpoint, save_checkpoint
from stage5_gpt import dpo
from stage5_gpt.chat_template import SPECIAL_TOKENS
from stage5_gpt.data import tokenizer_fingerprint
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    data = write_tiny_data(root / "data")
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}.", "chosen": f"Sure: {i}.",
             "rejected": f"Ugh, {i}, whatever."} for i in range(60)]
    (data / "instructions").mkdir()
    (data / "instructions" / "instruction-data-with-preference.json").write_text(json.dumps(rows))
    reward = tiny_checkpoints.stage1(root)                       # a Stage 1 IMDb classifier (random weights)
    folder = root / "policy"
    folder.mkdir()
    text = " ".join(json.dumps(r) for r in rows)
    tok = BPETokenizer.train(text + " the film was great awful boring" * 20, 300, SPECIAL_TOKENS)
    tok.save(folder / "tokenizer.json")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=len(tok), block_size=96, n_layer=1, n_head=2, n_embd=32, pos="rope")
    save_checkpoint({"stage": "stage5_gpt", "kind": "language_model", "dataset": "course_mix", "config": cfg.to_dict(),
                     "model": GPT(cfg).state_dict(), "state": {"step": 0}, "args": {},
                     "data": {"tokenizer": "tokenizer.json",
                              "fingerprint": tokenizer_fingerprint(folder / "tokenizer.json")}}, folder / "best.pt")
    return data, reward, folder / "best.pt"


def args_for(setup, out, *extra):
    data, reward, policy = setup
    return ["--checkpoint", str(policy), "--reward", str(reward), "--judge", str(reward), "--data-dir", str(data),
            "--out-dir", str(out), "--quick", "--lr", "1e-3", "--batch-size", "4", "--eval-interval", "3",
            "--min-margin", "0", "--no-tensorboard", *extra]


def test_reward_pairs_train_and_report_next_to_the_reference(setup, tmp_path):
    dpo.main(args_for(setup, tmp_path / "r", "--epochs", "3"))
    r = json.loads((tmp_path / "r" / "result.json").read_text())
    cont = r["details"]["continuations"]
    assert cont["reference"]["kl_per_token"] == 0.0 and cont["policy"]["kl_per_token"] > 0   # the policy moved
    for key in ("reward_mean", "judged_positive", "reference_ppl", "distinct_2", "repetition_rate"):
        assert key in cont["policy"] and key in cont["reference"]
    assert 0 <= cont["judge_accuracy_on_40_word_reviews"] <= 1
    loss = [v for _, v in load_checkpoint(tmp_path / "r" / "last.pt")["state"]["history"]["loss"]]
    assert sum(loss[-3:]) < sum(loss[:3])                        # DPO's loss goes down on its pairs
    assert (tmp_path / "r" / "pairs.json").is_file()


def test_polite_pairs_through_the_chat_template(setup, tmp_path):
    dpo.main(args_for(setup, tmp_path / "p", "--pairs", "polite", "--epochs", "4"))
    r = json.loads((tmp_path / "p" / "result.json").read_text())
    assert r["split"] == "test" and {"reward_accuracy", "reference_accuracy", "policy_accuracy"} <= set(r["metrics"])
    pairs = json.loads((tmp_path / "p" / "pairs.json").read_text())
    assert len(pairs["train"]) == 40 and len(pairs["test"]) == 10


def test_dpo_resumes_exactly(setup, tmp_path):
    dpo.main(args_for(setup, tmp_path / "a", "--pairs", "polite", "--max-steps", "6"))
    dpo.main(args_for(setup, tmp_path / "b", "--pairs", "polite", "--max-steps", "3"))
    dpo.main(args_for(setup, tmp_path / "b", "--pairs", "polite", "--max-steps", "6", "--resume"))
    a, b = (load_checkpoint(tmp_path / x / "last.pt") for x in "ab")
    assert a["state"]["history"]["loss"] == b["state"]["history"]["loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    code, err = cli(dpo.main, args_for(setup, tmp_path / "x", "--beta", "0"), capsys)
    assert_one_line_error(code, err, "beta")
    code, err = cli(dpo.main, args_for(setup, tmp_path / "y", "--resume"), capsys)
    assert_one_line_error(code, err, "checkpoint not found")
