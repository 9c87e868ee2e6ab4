"""scripts/demo.py without a browser: each tab's function called directly, on tiny checkpoints built with each stage's
own classes (tests/tiny_checkpoints.py). Normal answers, a missing checkpoint (the message names the command that
trains it), bad input answered by a message, an unexpected exception turned into one line, the flags.
tests/test_demo_e2e.py drives the same page in a real browser."""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -r requirements-demo.txt")

import tiny_checkpoints  # noqa: E402
from conftest import REPO_ROOT, assert_one_line_error, cli  # noqa: E402
from scripts import demo  # noqa: E402
from stage6_bert.predict import load_predictor  # noqa: E402
from stage6_bert.reference_runs import MINILM_SST2_CHECKPOINT  # noqa: E402

SOURCE = "A man is riding a bike."  # 8 source tokens with <eos>: the attention map is 0.45 * 8 + 2 inches wide


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_checkpoints.make_all(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def tiny(checkpoints):
    """The tiny checkpoints, and no real-weights SST-2 classifier (whatever runs/ holds on this machine): the
    sentiment box answers with the course's own tiny BERT unless a test puts one there."""
    demo.configure("cpu", **checkpoints, **{demo.REAL_SST2: checkpoints["stage6_sst2"].parent / "no_real" / "best.pt"})
    yield checkpoints
    demo.configure("cpu", **{key: demo.default_checkpoint(key) for key in demo.MODELS},
                   **{demo.REAL_SST2: Path(MINILM_SST2_CHECKPOINT), demo.CHAT: Path(demo.SFT_CHECKPOINT),
                      demo.ADAPTER: Path(demo.LORA_ADAPTER), demo.S5_DRAFT: Path(demo.S5_DRAFT_CHECKPOINT)})


# every tab, called with one text: the tab's outputs (a streamed tab: its last outputs)
TABS = {
    "stage1": lambda text: demo.stage1_classify(text),
    "stage2": lambda text: demo.stage2_continue(text, 0.8, 0, 5),
    "stage34": lambda text: demo.stages34_translate(text),
    "stage5": lambda text: list(demo.stage5_generate(text, 0.8, 0, 1.0, 5))[-1],
    "stage6_mlm": lambda text: demo.stage6_fill(text, 3),
    "stage6_sst2": lambda text: demo.stage6_sentiment(text),
}
TYPICAL = {"stage1": "a wonderful film", "stage2": "ROMEO:", "stage34": SOURCE, "stage5": "The history",
           "stage6_mlm": "the movie was [MASK] .", "stage6_sst2": "a gripping film ."}
LIMITS = {"stage1": "stage1", "stage2": "stage2", "stage34": "stage34", "stage5": "stage5", "stage6_mlm": "stage6",
          "stage6_sst2": "stage6"}


def messages(tab: str, outputs: tuple) -> list[str]:
    """The message boxes of a tab's outputs: the last one, or one per side for Stages 3 and 4."""
    return [outputs[2], outputs[5]] if tab == "stage34" else [outputs[-1]]


def answers(tab: str, outputs: tuple) -> list:
    """The other outputs: the answers themselves."""
    return [outputs[i] for i in (0, 1, 3, 4)] if tab == "stage34" else list(outputs[:-1])


# ----------------------------------------------------------------------------- answers

def test_stage1_gives_class_probabilities(tiny):
    probs, message = demo.stage1_classify("A gripping, beautifully acted film with a wonderful cast.")
    assert list(probs) == ["neg", "pos"] and sum(probs.values()) == pytest.approx(1.0) and message == ""


def test_stage2_continues_the_prompt(tiny):
    text, message = demo.stage2_continue("ROMEO:", 0.8, 5, 40)
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40 and message == ""  # characters: 1 a token


def test_stages_3_and_4_translate_with_attention_maps(tiny):
    text3, image3, message3, text4, image4, message4 = demo.stages34_translate(SOURCE)
    assert text3.strip() and isinstance(text4, str) and message3 == message4 == ""
    for image in (image3, image4):   # rows: output tokens (at least <eos>), columns: the 8 source tokens
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[1] == round((0.45 * 8 + 2) * 100) and image.shape[0] >= round((0.4 + 1.5) * 100)
    assert image3.std() > 0 and image4.std() > 0


def test_stage5_streams_growing_text(tiny):
    steps = list(demo.stage5_generate("The history of the city", 0.8, 40, 0.95, 12))
    texts = [text for text, _ in steps]
    assert len(steps) == 13 and all(t.startswith("The history of the city") for t in texts)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert [m for _, m in steps[:-1]] == [""] * 12 and re.match(r"12 tokens in [\d.]+ s", steps[-1][1])


def test_stage5_generates_with_int8_and_int4_weights_of_the_same_model(tiny, tmp_path):
    from test_stage5_serve import tiny_chat_checkpoint
    int8 = list(demo.stage5_generate("The history", 0, 0, 1.0, 6, "int8"))[-1]
    assert int8[0].startswith("The history") and re.match(r"6 tokens in .*; int8 weights, [\d.]+ MiB", int8[1])
    assert demo.load_stage5("int8")[2] < demo.load_stage5("float32")[2]
    assert "weights come in groups of 32 or 64 inputs" in list(demo.stage5_generate("The history", 0, 0, 1.0, 6, "int4"))[-1][1]
    demo.configure("cpu", stage5=tiny_chat_checkpoint(tmp_path / "wide"))        # 32 wide: groups of 32 fit
    int4 = list(demo.stage5_generate("The history", 0, 0, 1.0, 6, "int4"))[-1]
    assert re.match(r"6 tokens in .*; int4 weights", int4[1])
    assert demo.load_stage5("int4")[2] < demo.load_stage5("int8")[2] < demo.load_stage5("float32")[2]


def test_stage5_decodes_speculatively_with_a_draft_of_the_same_tokenizer(tiny, tmp_path):
    """The switch: without a draft, a message saying how to make one; a draft with another tokenizer, refused; with
    the GPT itself as its own draft, greedy text identical to plain decoding and every proposal accepted."""
    from test_stage5_serve import tiny_chat_checkpoint
    demo.configure("cpu", **{demo.S5_DRAFT: tmp_path / "none" / "best.pt"})
    assert "No draft model for speculative decoding" in list(demo.stage5_generate("The", 0, 0, 1.0, 6, "float32",
                                                                                   True))[-1][1]
    demo.configure("cpu", **{demo.S5_DRAFT: tiny_chat_checkpoint(tmp_path / "other")})
    assert "has another tokenizer" in list(demo.stage5_generate("The", 0, 0, 1.0, 6, "float32", True))[-1][1]
    demo.configure("cpu", **{demo.S5_DRAFT: tiny["stage5"]})
    plain = list(demo.stage5_generate("The history", 0, 0, 1.0, 10))[-1]
    fast = list(demo.stage5_generate("The history", 0, 0, 1.0, 10, "float32", True))
    assert len(fast) == 1 and fast[0][0] == plain[0]
    assert re.match(r"10 tokens in .*speculative decoding, the draft proposing 4 a round: 100% of its tokens "
                    r"accepted", fast[0][1])
    sampled = list(demo.stage5_generate("The history", 0.8, 20, 0.9, 10, "int8", True))[-1]
    assert sampled[0].startswith("The history") and "int8 weights" in sampled[1]


def test_stage6_fills_mask_with_k_guesses_each(tiny):
    table, message = demo.stage6_fill("the movie was [MASK] , [MASK] .", 4)
    assert message == "" and table.startswith("**Best guess:** the movie was ")
    assert [sum(line.startswith(f"| {n} |") for line in table.splitlines()) for n in (1, 2)] == [4, 4]


def test_stage6_gives_sst2_sentiment(tiny):
    probs, message = demo.stage6_sentiment("a gripping , beautifully acted film .")
    assert list(probs) == ["negative", "positive"] and sum(probs.values()) == pytest.approx(1.0)
    assert message == f"Answered by the course's own BERT, pre-trained and fine-tuned here (`{tiny['stage6_sst2']}`)."


def test_stage6_sentiment_prefers_real_weights_when_their_checkpoint_exists(tiny, tmp_path):
    """A classifier at the real-weights path (here a second tiny classifier standing in for all-MiniLM-L6-v2 fine-tuned
    on SST-2) answers instead of the course's own, found on the next submit, and the message names it; while it is
    there, a missing course checkpoint is no note on the page."""
    text = "a gripping , beautifully acted film ."
    real = tmp_path / "glue_sst2_minilm" / "best.pt"
    demo.configure("cpu", **{demo.REAL_SST2: real})
    own, message = demo.stage6_sentiment(text)
    assert message.startswith("Answered by the course's own BERT")
    real.parent.mkdir()
    torch.manual_seed(1)   # other random weights than the course's tiny classifier: other probabilities
    tiny_checkpoints.stage6_sst2(real.parent)
    probs, message = demo.stage6_sentiment(text)
    assert message == f"Answered by all-MiniLM-L6-v2 (real pre-trained weights) fine-tuned on SST-2 (`{real}`)."
    assert list(probs.values()) == pytest.approx(load_predictor(real)([text])[0].tolist())
    assert list(probs.values()) != pytest.approx(list(own.values()))
    demo.configure("cpu", stage6_sst2=tmp_path / "none.pt")
    assert demo.stage6_sentiment(text)[1].startswith("Answered by all-MiniLM-L6-v2")
    assert demo.page_notes()[list(demo.MODELS).index("stage6_sst2")] == ""


def test_a_missing_sst2_checkpoint_names_the_real_weights_command_too(tiny, tmp_path):
    demo.configure("cpu", stage6_sst2=tmp_path / "none.pt")
    probs, message = demo.stage6_sentiment("a good film .")
    assert probs is None and "does not exist" in message
    assert f"`{demo.REAL_SST2_COMMAND}` writes `{demo.SETTINGS['checkpoints'][demo.REAL_SST2]}`" in message
    assert demo.REAL_SST2_COMMAND == "python stage6_bert/finetune.py --task sst2 --pretrained all-MiniLM-L6-v2"


# ----------------------------------------------------------------------------- messages instead of errors

@pytest.mark.parametrize("tab", TABS)
def test_missing_checkpoint_names_the_command_that_trains_it(tab, tiny, tmp_path):
    keys = ["stage3", "stage4"] if tab == "stage34" else [tab]
    demo.configure("cpu", **{key: tmp_path / key / "best.pt" for key in keys})
    outputs = TABS[tab](TYPICAL[tab])
    for key, message in zip(keys, messages(tab, outputs)):
        assert f"`{tmp_path / key / 'best.pt'}` does not exist" in message
        assert all(f"`{command}`" in message for command in demo.commands(key))
    assert all(x is None for x in answers(tab, outputs))
    assert [n for n in demo.page_notes() if n] == [demo.missing_checkpoint(key) for key in keys]
    for key in keys:  # trained while the demo runs: the next submit finds it
        shutil.copytree(tiny[key].parent, tmp_path / key)
    outputs = TABS[tab](TYPICAL[tab])
    assert all(x is not None for x in answers(tab, outputs))
    assert not any("does not exist" in m for m in messages(tab, outputs))


def test_one_missing_translator_leaves_the_other_side_working(tiny, tmp_path):
    demo.configure("cpu", stage4=tmp_path / "none.pt")
    text3, image3, message3, text4, image4, message4 = demo.stages34_translate(SOURCE)
    assert text3 and image3 is not None and message3 == ""
    assert text4 is None and image4 is None and "python stage4_transformer/train.py" in message4


@pytest.mark.parametrize("tab", TABS)
def test_empty_and_overlong_text_are_messages(tab, tiny):
    limit = demo.MAX_CHARS[LIMITS[tab]]
    for text in ("", "   \n "):
        assert all("empty" in m.lower() for m in messages(tab, TABS[tab](text)))
    for m in messages(tab, TABS[tab]("a" * (limit + 1))):
        assert re.search(f"{limit:,}|{limit}", m) and str(limit + 1) in m.replace(",", "")


def test_characters_outside_the_vocabulary_are_named(tiny):
    text, message = demo.stage2_continue("ROMEO: \u6771\u20ac", 0.8, 0, 5)
    assert text is None and "never saw" in message and "'\u6771'" in message and "'\u20ac'" in message


def test_words_all_unknown_are_a_message(tiny):
    assert demo.stage1_classify("zzzz qqqq")[1].startswith("None of these words")
    outputs = demo.stages34_translate("zzzz qqqq")
    assert all(m.startswith("None of these words") for m in messages("stage34", outputs))
    some = demo.stages34_translate("A man is riding a zzzz.")  # some unknown: translated, with a note
    assert all(m == "Not in the vocabulary, read as &lt;unk&gt;: zzzz" for m in messages("stage34", some))


def test_fill_mask_without_mask_is_a_message(tiny):
    table, message = demo.stage6_fill("the movie was great .", 3)
    assert table is None and "has no [MASK]" in message


def test_unexpected_exception_is_one_line_and_the_tab_keeps_working(tiny, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(demo.s1_predict, "classify", broken)
    monkeypatch.setattr(demo.s5_generate, "stream_text", broken)
    with caplog.at_level(logging.ERROR, logger="demo"):
        assert demo.stage1_classify("a good film") == (None, "Unexpected error: RuntimeError: boom")
        assert list(demo.stage5_generate("The", 0.8, 0, 1.0, 5)) == [(None, "Unexpected error: RuntimeError: boom")]
    assert "stage1_classify failed" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    assert demo.stage1_classify("a good film")[0] is not None


# ----------------------------------------------------------------------------- the reference commands and defaults

@pytest.mark.parametrize("key", demo.MODELS)
def test_commands_are_the_published_reference_commands(key):
    """What a tab tells a person to run is what the README's results table shows for that run."""
    for run, command in zip(demo.MODELS[key][1], demo.commands(key)):
        assert json.loads((REPO_ROOT / run).read_text(encoding="utf-8"))["command"] == command


@pytest.mark.parametrize("key", demo.MODELS)
def test_default_checkpoint_is_where_the_command_writes_it(key):
    """<out-dir>/best.pt of the last declared run, as its own script parses it; Stages 5 and 6: the constant the
    fine-tunes read."""
    words = shlex.split(demo.commands(key)[-1])
    script = import_module(words[1].removesuffix(".py").replace("/", "."))
    assert Path(script.parse_args(words[2:]).out_dir) / "best.pt" == demo.default_checkpoint(key)
    from stage5_gpt.reference_runs import GPT_CHECKPOINT
    from stage6_bert.reference_runs import BERT_CHECKPOINT
    assert demo.default_checkpoint("stage5") == Path(GPT_CHECKPOINT)
    assert demo.default_checkpoint("stage6_mlm") == Path(BERT_CHECKPOINT)


def test_the_real_weights_classifier_is_where_its_command_writes_it():
    """The sentiment box looks for real weights where `finetune.py --task sst2 --pretrained all-MiniLM-L6-v2` writes
    (MINILM_SST2_CHECKPOINT, itself tested against finetune.parse_args in tests/test_stage6_reference_runs.py)."""
    from stage6_bert import finetune
    words = shlex.split(demo.REAL_SST2_COMMAND)
    assert Path(finetune.parse_args(words[2:]).out_dir) / "best.pt" == Path(MINILM_SST2_CHECKPOINT)
    assert demo.parse_args([]).stage6_sst2_real == MINILM_SST2_CHECKPOINT
    assert demo.SETTINGS["checkpoints"][demo.REAL_SST2] == Path(MINILM_SST2_CHECKPOINT)


# ----------------------------------------------------------------------------- the command line

def test_help_and_defaults(capsys):
    code, _ = cli(demo.main, ["--help"], capsys)
    assert code == 0
    args = demo.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert {key: getattr(args, key) for key in demo.MODELS} == {key: str(demo.default_checkpoint(key))
                                                                for key in demo.MODELS}


@pytest.mark.parametrize("argv, pattern", [
    (["--port", "-1"], r"--port: expected a port number from 1 to 65535, got '-1'"),
    (["--port", "70000"], r"--port: expected a port number"),
    (["--stage1-checkpoint", "no/such/best.pt"], r"--stage1-checkpoint no/such/best.pt: no such file"),
    (["--stage6-sst2-checkpoint", "nope.pt"], r"--stage6-sst2-checkpoint nope.pt: no such file"),
    (["--stage6-sst2-real-checkpoint", "nope.pt"], r"--stage6-sst2-real-checkpoint nope.pt: no such file"),
])
def test_bad_flags_are_one_line_errors(argv, pattern, capsys):
    code, err = cli(demo.main, argv, capsys)
    assert_one_line_error(code, err, pattern)


def test_the_chat_tab_answers_keeps_the_conversation_and_says_why_not(tiny, tmp_path):
    first = list(demo.stage5_chat("Translate this: a dog.", [], 0.0, 1.0, 6))[-1]
    history, box, message = first
    assert [m["role"] for m in history] == ["user", "assistant"] and box == "" and "tokens of conversation" in message
    second = list(demo.stage5_chat("And a cat?", history, 0.0, 1.0, 6))[-1][0]
    assert second[:2] == history and len(second) == 4                    # the conversation goes on
    # the page sends the conversation back as Gradio 6 shows it: each message's content a list of text parts
    as_sent = [{"role": m["role"], "metadata": None, "content": [{"text": m["content"], "type": "text"}]}
               for m in history]
    again = list(demo.stage5_chat("And a cat?", as_sent, 0.0, 1.0, 6))[-1][0]
    assert again[:2] == history and len(again) == 4
    kept, box, message = list(demo.stage5_chat("   ", second, 0.0, 1.0, 6))[-1]
    assert kept == second and "empty" in message                           # bad input: nothing lost
    kept, box, message = list(demo.stage5_chat("word " * 300, second, 0.0, 1.0, 6))[-1]
    assert kept == second and box.startswith("word") and "reads at most" in message
    demo.configure("cpu", **{demo.CHAT: tmp_path / "none" / "best.pt"})
    kept, _, message = list(demo.stage5_chat("hi", [], 0.0, 1.0, 6))[-1]
    assert kept == [] and "does not exist" in message and "stage5_gpt/sft.py" in message


def test_the_chat_tabs_adapter_switch_adds_the_adapter_beside_the_same_weights(tiny, tmp_path):
    history, _, message = list(demo.stage5_chat("Translate: a dog.", [], 0.0, 1.0, 6, True))[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] and "English -> German adapter" in message
    adapted, _ = demo.load(demo.ADAPTER, demo.load_adapted)
    plain, _ = demo.load(demo.CHAT, lambda path, device: demo.s5_evaluate_chat.load_chat_model(path, device)[:2])
    assert demo.s5_lora_layers(adapted) and not demo.s5_lora_layers(plain)   # the switch never touches the plain one
    x = torch.randint(0, plain.cfg.vocab_size, (1, 8))
    assert not torch.allclose(adapted(x)[0], plain(x)[0], atol=1e-4)          # the adapter changes what it says
    _, _, message = list(demo.stage5_chat("Translate: a dog.", [], 0.0, 1.0, 6, False))[-1]
    assert "adapter" not in message
    # an adapter trained on another model is refused in one line; a missing one names its command
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(1)
    tiny_checkpoints.stage5_chat_adapter(other, tiny_checkpoints.stage5_chat(other))
    demo.configure("cpu", **{demo.ADAPTER: other / "adapter.pt"})
    kept, _, message = list(demo.stage5_chat("hi", history, 0.0, 1.0, 6, True))[-1]
    assert kept == history and "adapts another base model" in message and "\n" not in message
    demo.configure("cpu", **{demo.ADAPTER: tmp_path / "none" / "adapter.pt"})
    kept, _, message = list(demo.stage5_chat("hi", history, 0.0, 1.0, 6, True))[-1]
    assert kept == history and "does not exist" in message and "--lora-rank" in message

