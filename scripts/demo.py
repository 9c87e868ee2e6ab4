"""A web demo of every stage's trained model: one tab per stage, each running that stage's own code.

    pip install -r requirements-demo.txt     # gradio, for the page (and playwright, for its browser test)
    python scripts/demo.py                   # then open http://127.0.0.1:7860
    python scripts/demo.py --port 8000 --stage1-checkpoint runs/stage1_mlp/sst2/best.pt

Tabs: Stage 1 classifies a review (class probabilities); Stage 2's character LSTM continues a text; Stages 3 and 4
translate a sentence side by side, each with its attention map; Stage 5's GPT writes a continuation, streamed token by
token, and the instructed GPT chats (the chat template of stage5_gpt/chat_template.py, the history kept within the
context), with or without a LoRA adapter that taught it English -> German; Stage 6's BERT fills in [MASK] and tells a
sentence's sentiment (SST-2): with real pre-trained weights (all-MiniLM-L6-v2 fine-tuned on SST-2) when that checkpoint
exists, else with the course's own BERT, and it says which.

Each tab loads its model the first time it is used and keeps it. The default checkpoints are where each stage's
declared reference run (MODELS below; each stage's reference_runs.py) writes its best checkpoint. A tab
whose checkpoint does not exist yet says which command makes it, and finds the checkpoint on the next submit once it is
there. Bad input (empty, too long, characters a character-level model never saw) is answered by a message in the page;
so is an unexpected exception (its traceback goes to the server's log). The server listens on 127.0.0.1 unless --host
says otherwise, and never opens a public share link.
"""
from __future__ import annotations

import argparse
import functools
import html
import inspect
import logging
import os
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/demo.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check: the page works offline

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from scripts.common import (UserError, all_reference_runs, get_device, get_logger, parse_declared, reference_command,
                            run_cli)
from stage1_mlp import evaluate as s1_evaluate, predict as s1_predict
from stage1_mlp.data import dataset_info as s1_dataset_info
from stage2_rnn_lstm import evaluate as s2_evaluate, generate as s2_generate
from stage3_attention_seq2seq import decoding as s3_decoding, evaluate as s3_evaluate, translate as s3_translate
from stage3_attention_seq2seq.data import tokenize as s3_tokenize
from stage4_transformer import decoding as s4_decoding, evaluate as s4_evaluate, translate as s4_translate
from stage4_transformer.data import tokenize as s4_tokenize
from stage5_gpt import chat as s5_chat, evaluate as s5_evaluate, evaluate_chat as s5_evaluate_chat, generate as s5_generate
from stage5_gpt.chat_template import prompt_ids as s5_prompt_ids
from stage5_gpt.lora import load_adapter as s5_load_adapter, lora_layers as s5_lora_layers
from stage5_gpt.quantize import model_bytes as s5_model_bytes, quantize_model as s5_quantize_int8
from stage5_gpt.quantize_int4 import quantize_model_int4 as s5_quantize_int4
from stage5_gpt.data import tokenizer_fingerprint as s5_tokenizer_fingerprint
from stage5_gpt.speculative import speculative_generate as s5_speculative_generate
from stage5_gpt.reference_runs import (DRAFT_CHECKPOINT, LORA_ADAPTER, LORA_COMMAND, REFERENCE_RUNS as S5_REFERENCE_RUNS,
                                       SFT_CHECKPOINT)
from stage6_bert import fill_mask as s6_fill_mask, predict as s6_predict
from stage6_bert.reference_runs import MINILM_SST2_CHECKPOINT

# model -> (what it is, the declared reference runs that make it, in order: its stage's reference_runs.py). The tab's
# default checkpoint is <out-dir>/best.pt of the last of them, where that run's own script says it writes.
MODELS = {
    "stage1": ("Stage 1 IMDb classifier", ["stage1_mlp/results/imdb.json"]),
    "stage2": ("Stage 2 character LSTM", ["stage2_rnn_lstm/results/tiny_shakespeare_lstm.json"]),
    "stage3": ("Stage 3 translator", ["stage3_attention_seq2seq/results/multi30k_en_fr.json"]),
    "stage4": ("Stage 4 Transformer", ["stage4_transformer/results/multi30k_en_fr.json"]),
    "stage5": ("Stage 5 GPT", ["stage5_gpt/results/wikitext2.json"]),
    "stage6_mlm": ("Stage 6 pre-trained BERT", ["stage6_bert/results/pretrain.json"]),
    "stage6_sst2": ("Stage 6 SST-2 classifier",
                    ["stage6_bert/results/pretrain.json", "stage6_bert/results/glue_sst2.json"]),
}


def commands(key: str) -> list[str]:
    """The commands that make a tab's model, as a person pastes them from the repo root."""
    declared = all_reference_runs()
    return [reference_command(declared[run]) for run in MODELS[key][1]]


def default_checkpoint(key: str) -> Path:
    """Where the last of a tab's declared runs writes its best checkpoint."""
    return Path(parse_declared(all_reference_runs()[MODELS[key][1][-1]]).out_dir) / "best.pt"


# Stage 6's sentiment box prefers real pre-trained weights fine-tuned on SST-2 (finetune.py --task sst2 --pretrained
# all-MiniLM-L6-v2) to the course's own BERT: the same code, weights trained on far more text. Not in MODELS: no declared
# run of it need exist; when its checkpoint is absent the box falls back to MODELS' "stage6_sst2" and says so.
REAL_SST2 = "stage6_sst2_real"
REAL_SST2_COMMAND = "python stage6_bert/finetune.py --task sst2 --pretrained all-MiniLM-L6-v2"
SST2_ANSWERED_BY = {REAL_SST2: "all-MiniLM-L6-v2 (real pre-trained weights) fine-tuned on SST-2",
                    "stage6_sst2": "the course's own BERT, pre-trained and fine-tuned here"}

# Stage 5's chat tab reads the instructed GPT that sft.py writes (SFT_CHECKPOINT). Not in MODELS: its commands are
# these two, the GPT pre-trained on the course's own text, then its supervised fine-tuning.
CHAT = "stage5_chat"
CHAT_COMMANDS = [reference_command(S5_REFERENCE_RUNS["course_mix"]), "python stage5_gpt/sft.py"]

# The chat tab's switch: the same instructed GPT with a LoRA adapter put beside its weights (stage5_gpt/lora.py); the
# adapter names the model it was trained on, and another one refuses it.
ADAPTER = "stage5_chat_adapter"
ADAPTER_COMMAND = "python " + " ".join(LORA_COMMAND)

# Stage 5's generate tab can decode speculatively (docs section 22): a smaller GPT with the same tokenizer proposes
# tokens, the GPT checks them. The declared "draft" run makes one (any train.py checkpoint trained with the GPT's own
# tokenizer, --tokenizer, would do).
S5_DRAFT = "stage5_draft"
S5_DRAFT_CHECKPOINT = DRAFT_CHECKPOINT
S5_DRAFT_COMMAND = "python " + " ".join(S5_REFERENCE_RUNS["draft"])
S5_DRAFT_K = 4     # tokens the draft proposes per round

MAX_CHARS = {"stage1": 5000, "stage2": 1000, "stage34": s3_translate.MAX_CHARS, "stage5": 2000, "stage6": 500}
SST2_LABELS = ("negative", "positive")  # GLUE SST-2: label 0 is negative, 1 positive
SETTINGS = {"device": torch.device("cpu"),
            "checkpoints": {key: default_checkpoint(key) for key in MODELS} | {REAL_SST2: Path(MINILM_SST2_CHECKPOINT),
                                                                               CHAT: Path(SFT_CHECKPOINT),
                                                                               ADAPTER: Path(LORA_ADAPTER),
                                                                               S5_DRAFT: Path(S5_DRAFT_CHECKPOINT)}}
_loaded: dict = {}  # (model, checkpoint path) -> what its loader returned
log = logging.getLogger("demo")


def configure(device: str | torch.device = "cpu", **checkpoints: str | Path) -> None:
    """Set the device and any checkpoint paths (keys of MODELS, or REAL_SST2); models already loaded are forgotten."""
    SETTINGS["device"] = torch.device(device)
    SETTINGS["checkpoints"].update({key: Path(path) for key, path in checkpoints.items()})
    _loaded.clear()


def missing_checkpoint(key: str) -> str:
    """'' when the model's checkpoint exists; otherwise a short message with the command that trains it."""
    path = SETTINGS["checkpoints"][key]
    if path.is_file():
        return ""
    if key == REAL_SST2:   # gone since sst2_model() saw it
        return f"`{path}` was removed; submit again and the course's own BERT answers."
    if key == CHAT:
        steps = ", then ".join(f"`{c}`" for c in CHAT_COMMANDS)
        return (f"No instructed GPT yet: `{path}` does not exist. Train it from the repository root with {steps}. "
                f"This tab finds it on the next message, without a restart.")
    if key == ADAPTER:
        return (f"No English -> German adapter yet: `{path}` does not exist. Train it from the repository root with "
                f"`{ADAPTER_COMMAND}` (after the instructed GPT). The switch finds it on the next message.")
    if key == S5_DRAFT:
        return (f"No draft model for speculative decoding: `{path}` does not exist. Train a small GPT with the same "
                f"tokenizer, for instance `{S5_DRAFT_COMMAND}` (after the Stage 5 GPT), or start the demo with "
                f"--stage5-draft-checkpoint. The switch finds it on the next submit.")
    name = MODELS[key][0]
    steps = ", then ".join(f"`{c}`" for c in commands(key))
    real = (f" Or fine-tune real pre-trained weights, which this box prefers: `{REAL_SST2_COMMAND}` writes "
            f"`{SETTINGS['checkpoints'][REAL_SST2]}`." if key == "stage6_sst2" else "")
    return (f"No {name} yet: `{path}` does not exist. Train it from the repository root with {steps}.{real} "
            f"This tab finds it on the next submit, without a restart.")


def load(key: str, loader, variant: str = ""):
    """The model behind a tab, loaded by loader(path, device) on first use and kept (one per variant: float32 and
    int8 weights of the same checkpoint, say). A missing checkpoint is looked for again on every call, so a model
    trained while the demo runs is picked up."""
    path = SETTINGS["checkpoints"][key]
    if (key, path, variant) not in _loaded:
        if missing_checkpoint(key):
            raise UserError(missing_checkpoint(key))
        _loaded[key, path, variant] = loader(path, SETTINGS["device"])
    return _loaded[key, path, variant]


def guarded(n_outputs: int):
    """Make a tab function safe to call from the page: its last output is a message (Markdown). A UserError (bad
    input, a missing checkpoint) becomes that message; any other exception a one-line message, with its traceback in
    the log. The other outputs are cleared, and the server goes on serving. Works for generators (streamed outputs)."""
    def escaped(outputs: tuple) -> tuple:  # the message is Markdown: "<unk>" must show, not vanish as an HTML tag
        return outputs[:-1] + (html.escape(outputs[-1], quote=False),)

    def message(fn, e: Exception) -> tuple:
        if isinstance(e, UserError):
            return escaped((None,) * (n_outputs - 1) + (str(e)[:1].upper() + str(e)[1:],))
        log.exception(f"{fn.__name__} failed")
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return escaped((None,) * (n_outputs - 1) + (f"Unexpected error: {type(e).__name__}: {first_line}",))

    def wrap(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args):
                try:
                    for outputs in fn(*args):
                        yield escaped(outputs)
                except Exception as e:
                    yield message(fn, e)
            return stream

        @functools.wraps(fn)
        def call(*args):
            try:
                return escaped(fn(*args))
            except Exception as e:
                return message(fn, e)
        return call
    return wrap


def check_text(text: str | None, limit: int) -> str:
    if text is None or not text.strip():
        raise UserError("The text is empty: type something first.")
    if len(text) > limit:
        raise UserError(f"The text has {len(text):,} characters; this box takes at most {limit:,}.")
    return text


# ----------------------------------------------------------------------------- one function per tab

def load_stage1(path, device):
    model, vocab, ckpt = s1_evaluate.load_model(path, device)
    return model, vocab, s1_dataset_info(ckpt["dataset"])["classes"]


@guarded(2)
def stage1_classify(text: str):
    """-> ({class: probability}, message)."""
    text = check_text(text, MAX_CHARS["stage1"])
    model, vocab, classes = load("stage1", load_stage1)
    probs, known = s1_predict.classify(model, vocab, [text], SETTINGS["device"])
    if known[0] == 0:
        raise UserError("None of these words is in the model's vocabulary, so it has nothing to go on: try an "
                        "English film review.")
    return {c: float(p) for c, p in zip(classes, probs[0])}, ""


@guarded(2)
def stage2_continue(prompt: str, temperature: float, top_k: float, max_new: float):
    """-> (the prompt and its sampled continuation, message). top_k 0 = no top-k cut."""
    prompt = check_text(prompt, MAX_CHARS["stage2"])
    model, vocab = load("stage2", lambda path, device: s2_evaluate.load_model(path, device)[:2])
    ids = s2_generate.prompt_to_ids(vocab, prompt)  # characters the model never saw: a message that names them
    tokens = s2_generate.sample(model, ids, int(max_new), max(float(temperature), 1e-3), int(top_k) or None)
    return prompt + "".join(s2_generate.token_text(vocab, t) for t in tokens), ""


def translate_side(key: str, text: str):
    """One column of the translation tab: (translation, attention map, message)."""
    stage3 = key == "stage3"
    text = (s3_translate if stage3 else s4_translate).check_sentence(text or "")  # empty, too long: messages
    if stage3:
        model, src_vocab, tgt_vocab, _ = load(key, s3_evaluate.load_model)
        translate = functools.partial(s3_decoding.translate, model, src_vocab, tgt_vocab)
    else:  # one joint vocabulary for both languages
        model, src_vocab, _ = load(key, s4_evaluate.load_model)
        translate = functools.partial(s4_decoding.translate, model, src_vocab)
    unknown = src_vocab.unknown(text)
    if len(unknown) == len((s3_tokenize if stage3 else s4_tokenize)(text)):
        raise UserError("None of these words is in the model's source vocabulary: try a short English sentence.")
    [out] = translate([text], SETTINGS["device"], beam_size=5, with_attention=True)
    image = None
    if out["attn"] is not None:  # a Stage 3 model trained with --attention none has no map
        canvas = FigureCanvasAgg(s3_evaluate.attention_figure(out["src_tokens"], out["tgt_tokens"], out["attn"]))
        canvas.draw()                                                    # Agg: no display needed
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()         # (H, W, 3) uint8
    return out["text"], image, (f"Not in the vocabulary, read as <unk>: {', '.join(unknown)}" if unknown else "")


@guarded(3)
def stage3_translate(text: str):
    return translate_side("stage3", text)


@guarded(3)
def stage4_translate(text: str):
    return translate_side("stage4", text)


def stages34_translate(text: str):
    """-> Stage 3's (translation, map, message), then Stage 4's: each side answers, or says why not, on its own."""
    return stage3_translate(text) + stage4_translate(text)


S5_WEIGHTS = ("float32", "int8", "int4")


def load_stage5(weights: str):
    """The Stage 5 GPT, its tokenizer and its weights' bytes: float32 as trained, or quantized in memory when first
    asked for (int8 per row, stage5_gpt/quantize.py; int4 in groups of 64 or 32 inputs, quantize_int4.py)."""
    if weights not in S5_WEIGHTS:
        raise UserError(f"weights must be one of {', '.join(S5_WEIGHTS)}")
    if weights != "float32" and SETTINGS["device"].type != "cpu":
        raise UserError("the int8 and int4 kernels used here are the CPU's: start the demo with --device cpu")

    def loader(path, device):
        model, tok = s5_evaluate.load_model(path, device)[:2]
        if weights == "int8":
            model = s5_quantize_int8(model)
        elif weights == "int4":
            widths = sorted({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)})
            group = next((g for g in (64, 32) if all(w % g == 0 for w in widths)), None)
            if group is None:
                raise UserError(f"int4 weights come in groups of 32 or 64 inputs, and this model's layers take "
                                f"{widths}: choose float32 or int8")
            model = s5_quantize_int4(model, group)
        return model, tok, s5_model_bytes(model)
    return load("stage5", loader, weights)


def load_stage5_draft():
    """The draft GPT of speculative decoding, refused unless its tokenizer is the Stage 5 GPT's (the same ids)."""
    if missing := missing_checkpoint(S5_DRAFT):
        raise UserError(missing)

    def loader(path, device):   # -> (the draft, the fingerprint of the tokenizer it was trained with)
        draft, _, ckpt = s5_evaluate.load_model(path, device)
        return draft, ckpt["data"]["fingerprint"]

    draft, fingerprint = load(S5_DRAFT, loader)
    if fingerprint != s5_tokenizer_fingerprint(SETTINGS["checkpoints"]["stage5"].parent / "tokenizer.json"):
        raise UserError(f"the draft {SETTINGS['checkpoints'][S5_DRAFT]} has another tokenizer than the Stage 5 GPT: "
                        f"speculative decoding needs the same token ids in both")
    return draft


@guarded(2)
def stage5_generate(prompt: str, temperature: float, top_k: float, top_p: float, max_new: float,
                    weights: str = "float32", speculative: bool = False):
    """Yields (the prompt and the continuation so far, message): Gradio shows each as it comes. top_k 0 and top_p 1
    mean no cut; temperature 0 is greedy. `weights` picks float32, int8 or int4 weights of the same model;
    `speculative` lets a draft GPT propose S5_DRAFT_K tokens a round (the text comes out whole, once checked)."""
    prompt = check_text(prompt, MAX_CHARS["stage5"])
    model, tok, size = load_stage5(weights)
    ids = s5_generate.encode_prompt(tok, prompt)  # a character tokenizer names the characters it does not know
    t0, text, n, how = time.perf_counter(), "", 0, "KV cache"
    if speculative:
        draft = load_stage5_draft()
        window = min(model.cfg.block_size, draft.cfg.block_size) - 1     # room for at least one new token
        generator = torch.Generator(device=SETTINGS["device"]).manual_seed(random.randrange(2**31))
        new, stats = s5_speculative_generate(model, draft, ids[-window:], int(max_new), S5_DRAFT_K, float(temperature),
                                             int(top_k) or None, float(top_p) if top_p < 1 else None, generator)
        text, n = tok.decode(new), len(new)
        how = (f"speculative decoding, the draft proposing {S5_DRAFT_K} a round: "
               f"{stats['acceptance_rate']:.0%} of its tokens accepted, {stats['target_passes']} passes of this GPT")
    else:
        for text, n in s5_generate.stream_text(model, tok, ids, int(max_new), SETTINGS["device"], float(temperature),
                                               int(top_k) or None, float(top_p) if top_p < 1 else None,
                                               seed=random.randrange(2**31)):
            yield prompt + text, ""
    seconds = time.perf_counter() - t0
    note = f" (the prompt has {len(ids)} tokens; the model reads the last {model.cfg.block_size})" \
        if len(ids) > model.cfg.block_size else ""
    yield prompt + text, (f"{n} tokens in {seconds:.2f} s ({n / max(seconds, 1e-9):.0f} tokens/s, {how}; "
                          f"{weights} weights, {size / 2**20:.2f} MiB){note}")


@guarded(2)
def stage6_fill(text: str, top_k: float):
    """-> (a Markdown table: the top_k guesses for each [MASK] and the best filled-in text, message)."""
    text = check_text(text, MAX_CHARS["stage6"])
    model, tok = load("stage6_mlm", s6_fill_mask.load_mlm)
    ids = s6_fill_mask.encode_masked(tok, text, model.cfg.max_position)  # no [MASK], too many tokens: messages
    guesses = s6_fill_mask.fill_mask(model, ids, int(top_k), SETTINGS["device"])
    rows = [f"| {n} | {html.escape(tok.vocab[t]).replace('|', '&#124;')} | {p:.3f} |"
            for n, top in enumerate(guesses, start=1) for t, p in top]
    best = s6_fill_mask.best_guess(tok, ids, guesses)
    table = "| [MASK] | guess | probability |\n|---|---|---|\n" + "\n".join(rows)
    return f"**Best guess:** {html.escape(best)}\n\n{table}", ""


def sst2_model() -> str:
    """Which model answers the sentiment box: the real-weights classifier when its checkpoint exists (looked for on
    every call, like any missing checkpoint), else the course's own."""
    return REAL_SST2 if SETTINGS["checkpoints"][REAL_SST2].is_file() else "stage6_sst2"


@guarded(2)
def stage6_sentiment(text: str):
    """-> ({negative, positive: probability}, which model answered)."""
    text = check_text(text, MAX_CHARS["stage6"])
    key = sst2_model()
    predict = load(key, s6_predict.load_predictor)
    probs = predict([text])[0]
    answered = f"Answered by {SST2_ANSWERED_BY[key]} (`{SETTINGS['checkpoints'][key]}`)."
    return {label: float(p) for label, p in zip(SST2_LABELS, probs)}, answered


def page_notes() -> list[str]:
    """On every page load: each message box says which checkpoints are missing (the commands that train them). The
    sentiment box misses nothing while the real-weights classifier is there to answer."""
    return ["" if key == "stage6_sst2" and sst2_model() == REAL_SST2 else missing_checkpoint(key)
            for key in MODELS] + [missing_checkpoint(CHAT)]


def message_text(content) -> str:
    """A chat message's text as the page sends it back: Gradio 6 gives a list of parts ({"type": "text", "text": ...})
    for what the function returned as a string."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return content if isinstance(content, str) else str(content)


def load_adapted(path, device):
    """The instructed GPT with the adapter beside its weights (unmerged: the base weights stay as they are); refused
    in one line when the adapter was trained on another model."""
    if missing_checkpoint(CHAT):
        raise UserError(missing_checkpoint(CHAT))
    model, tok = s5_evaluate_chat.load_chat_model(SETTINGS["checkpoints"][CHAT], device)[:2]
    s5_load_adapter(model, path)
    return model, tok


def stage5_chat(message: str, history: list | None, temperature: float, top_p: float, max_new: float,
                adapter: bool = False):
    """Yields (the conversation with the reply so far, the input box's new text, message). The whole conversation
    is rendered with the chat template every turn; its oldest exchanges are dropped when it outgrows the context. Bad
    input leaves the conversation as it was and says why. With `adapter`, the English -> German LoRA adapter answers
    along with the model's own weights."""
    history = [{"role": m["role"], "content": message_text(m["content"])} for m in (history or [])
               if isinstance(m, dict)]
    try:
        message = check_text(message, MAX_CHARS["stage5"])
        if adapter:
            model, tok = load(ADAPTER, load_adapted)
        else:
            model, tok = load(CHAT, lambda path, device: s5_evaluate_chat.load_chat_model(path, device)[:2])
        asked = history + [{"role": "user", "content": message}]
        room = min(int(max_new), model.cfg.block_size // 2)   # the reply may take at most half of the context
        ids = s5_prompt_ids(tok, asked, model.cfg.block_size, room)             # too long: a message
        reply, t0 = "", time.perf_counter()
        for reply in s5_chat.stream_reply(model, tok, ids, room, float(temperature), None,
                                          float(top_p) if top_p < 1 else None, seed=random.randrange(2**31)):
            yield asked + [{"role": "assistant", "content": reply}], "", ""
        answered = asked + [{"role": "assistant", "content": reply or "(an empty answer)"}]
        with_adapter = ""
        if adapter:
            layers = s5_lora_layers(model)
            extra = sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in layers.values())
            with_adapter = f"; with the English -> German adapter ({len(layers)} layers, {extra:,} extra parameters)"
        yield answered, "", (f"{time.perf_counter() - t0:.2f} s; the model read {len(ids)} tokens of conversation"
                             + with_adapter)
    except UserError as e:
        yield history, message, html.escape(str(e)[:1].upper() + str(e)[1:], quote=False)
    except Exception as e:  # an unexpected failure: one line here, the traceback in the server's log
        log.exception("stage5_chat failed")
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        yield history, message, html.escape(f"Unexpected error: {type(e).__name__}: {first}", quote=False)


# ----------------------------------------------------------------------------- the page

def build_app():
    """The page: one tab per stage. Every component has an elem_id (scripts/demo_screenshots.py finds them by it)."""
    import gradio as gr

    def box(eid: str, label: str, limit: int, placeholder: str, lines: int = 2):
        return gr.Textbox(label=f"{label} (at most {limit:,} characters)", lines=lines, placeholder=placeholder,
                          elem_id=eid)

    def slider(eid: str, label: str, lo: float, hi: float, value: float, step: float):
        return gr.Slider(lo, hi, value=value, step=step, label=label, elem_id=eid)

    with gr.Blocks(title="my_llm demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:  # maps: hourly
        gr.Markdown("# my_llm: the course's trained models\nEach tab runs its stage's own code on the checkpoint that "
                    "stage's reference command trains (`python scripts/demo.py --help` lists them).")
        with gr.Tab("Stage 1: classify", elem_id="tab-stage1"):
            gr.Markdown("A bag-of-n-grams MLP trained on IMDb reviews: how negative or positive is a review?")
            s1_in = box("s1-input", "Review", MAX_CHARS["stage1"], "A gripping, beautifully acted film.", lines=4)
            s1_go = gr.Button("Classify", variant="primary", elem_id="s1-submit")
            s1_out, s1_msg = gr.Label(label="Class probabilities", elem_id="s1-output"), gr.Markdown(elem_id="s1-message")
            s1_go.click(stage1_classify, [s1_in], [s1_out, s1_msg])
        with gr.Tab("Stage 2: continue", elem_id="tab-stage2"):
            gr.Markdown("A character-level LSTM trained on Tiny Shakespeare continues your text, one character at a "
                        "time. It knows only the characters it was trained on.")
            s2_in = box("s2-input", "Text to continue", MAX_CHARS["stage2"], "ROMEO:")
            with gr.Row():
                s2_temp = slider("s2-temperature", "temperature", 0.1, 2.0, 0.8, 0.05)
                s2_topk = slider("s2-top-k", "top-k (0 = off)", 0, 100, 0, 1)
                s2_len = slider("s2-length", "new characters", 1, 1000, 300, 1)
            s2_go = gr.Button("Continue", variant="primary", elem_id="s2-submit")
            s2_out, s2_msg = gr.Textbox(label="Text", lines=8, elem_id="s2-output"), gr.Markdown(elem_id="s2-message")
            s2_go.click(stage2_continue, [s2_in, s2_temp, s2_topk, s2_len], [s2_out, s2_msg])
        with gr.Tab("Stages 3 and 4: translate", elem_id="tab-stage34"):
            gr.Markdown("English to French by Stage 3's recurrent encoder-decoder with attention and Stage 4's "
                        "Transformer, side by side (beam search, 5 beams).")
            s34_in = box("s34-input", "English sentence", MAX_CHARS["stage34"], "A man is riding a bike.", lines=1)
            s34_go = gr.Button("Translate", variant="primary", elem_id="s34-submit")
            outputs = []
            with gr.Row():
                for key, title, what in [("s3", "Stage 3: GRU encoder-decoder with attention",
                                          "attention weights at each output word"),
                                         ("s4", "Stage 4: Transformer", "cross-attention of the last decoder layer, "
                                                                        "averaged over heads")]:
                    with gr.Column():
                        gr.Markdown(f"### {title}")
                        outputs.append(gr.Textbox(label="Translation", elem_id=f"{key}-output"))
                        gr.Markdown(f"Attention map: {what} (rows) over the source words (columns).")
                        outputs += [gr.Image(show_label=False, type="numpy", format="png", interactive=False,
                                             elem_id=f"{key}-attn"), gr.Markdown(elem_id=f"{key}-message")]
            s34_go.click(stages34_translate, [s34_in], outputs)
        with gr.Tab("Stage 5: generate", elem_id="tab-stage5"):
            gr.Markdown("The GPT pre-trained on WikiText-2 writes a continuation, streamed token by token (KV cache).")
            s5_in = box("s5-input", "Prompt", MAX_CHARS["stage5"], "The history of the city")
            with gr.Row():
                s5_temp = slider("s5-temperature", "temperature (0 = greedy)", 0.0, 2.0, 0.8, 0.05)
                s5_topk = slider("s5-top-k", "top-k (0 = off)", 0, 200, 40, 1)
                s5_topp = slider("s5-top-p", "top-p (1 = off)", 0.05, 1.0, 0.95, 0.05)
                s5_len = slider("s5-length", "new tokens", 1, 300, 80, 1)
            s5_weights = gr.Radio(list(S5_WEIGHTS), value="float32", elem_id="s5-weights",
                                  label="weights (int8 and int4: the same model quantized, section 22 of the docs)")
            s5_spec = gr.Checkbox(value=False, elem_id="s5-speculative",
                                  label=f"speculative decoding: a smaller GPT with the same tokenizer proposes "
                                        f"{S5_DRAFT_K} tokens, this one checks them in one pass (section 22)")
            s5_go = gr.Button("Generate", variant="primary", elem_id="s5-submit")
            s5_out, s5_msg = gr.Textbox(label="Text", lines=8, elem_id="s5-output"), gr.Markdown(elem_id="s5-message")
            s5_go.click(stage5_generate, [s5_in, s5_temp, s5_topk, s5_topp, s5_len, s5_weights, s5_spec],
                        [s5_out, s5_msg])
        with gr.Tab("Stage 5: chat", elem_id="tab-stage5-chat"):
            gr.Markdown("The GPT instructed with the course's own tasks (translation to French, German to English, "
                        "sentiment, short everyday instructions) answers; the conversation so far is read again "
                        "every turn, within its context.")
            s5c_out = gr.Chatbot(label="Conversation", height=360, elem_id="s5c-output")
            s5c_in = box("s5c-input", "Message", MAX_CHARS["stage5"],
                         "Translate this English sentence into French: A man is riding a bike.")
            with gr.Row():
                s5c_temp = slider("s5c-temperature", "temperature (0 = greedy)", 0.0, 2.0, 0.0, 0.05)
                s5c_topp = slider("s5c-top-p", "top-p (1 = off)", 0.05, 1.0, 1.0, 0.05)
                s5c_len = slider("s5c-length", "longest reply (tokens)", 1, 256, 96, 1)
            s5c_adapter = gr.Checkbox(label="with the English -> German LoRA adapter (a few thin matrices beside the "
                                            "same weights; try: Translate this English sentence into German: ...)",
                                      value=False, elem_id="s5c-adapter")
            with gr.Row():
                s5c_go = gr.Button("Send", variant="primary", elem_id="s5c-submit")
                s5c_clear = gr.Button("New conversation", elem_id="s5c-clear")
            s5c_msg = gr.Markdown(elem_id="s5c-message")
            s5c_go.click(stage5_chat, [s5c_in, s5c_out, s5c_temp, s5c_topp, s5c_len, s5c_adapter],
                         [s5c_out, s5c_in, s5c_msg])
            s5c_clear.click(lambda: ([], ""), None, [s5c_out, s5c_msg])
        with gr.Tab("Stage 6: BERT", elem_id="tab-stage6"):
            gr.Markdown("The pre-trained BERT guesses the words hidden by `[MASK]` (lower-case text, as it was "
                        "trained on); a BERT fine-tuned on SST-2 tells a sentence's sentiment: all-MiniLM-L6-v2, "
                        "real pre-trained weights, when `" + MINILM_SST2_CHECKPOINT + "` exists, else the course's "
                        "own. The line under the answer says which one answered.")
            with gr.Row():
                with gr.Column():
                    s6m_in = box("s6-mask-input", "Text with [MASK]", MAX_CHARS["stage6"], "the movie was [MASK] .")
                    s6m_k = slider("s6-mask-top-k", "guesses per [MASK]", 1, 20, 5, 1)
                    s6m_go = gr.Button("Fill [MASK]", variant="primary", elem_id="s6-mask-submit")
                    s6m_out, s6m_msg = gr.Markdown(elem_id="s6-mask-output"), gr.Markdown(elem_id="s6-mask-message")
                with gr.Column():
                    s6s_in = box("s6-sst2-input", "Sentence", MAX_CHARS["stage6"], "a gripping , beautifully acted film .")
                    s6s_go = gr.Button("Sentiment", variant="primary", elem_id="s6-sst2-submit")
                    s6s_out = gr.Label(label="SST-2 sentiment", elem_id="s6-sst2-output")
                    s6s_msg = gr.Markdown(elem_id="s6-sst2-message")
            s6m_go.click(stage6_fill, [s6m_in, s6m_k], [s6m_out, s6m_msg])
            s6s_go.click(stage6_sentiment, [s6s_in], [s6s_out, s6s_msg])
        app.load(page_notes, None, [s1_msg, s2_msg, outputs[2], outputs[5], s5_msg, s6m_msg, s6s_msg, s5c_msg])
    return app


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A web demo of every stage's trained model (Gradio). Open the printed "
                                            "address in a browser.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from other machines)")
    p.add_argument("--port", type=port_number, default=7860, help="port to listen on")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where the models run")
    for key, (name, _) in MODELS.items():
        p.add_argument(f"--{key.replace('_', '-')}-checkpoint", dest=key, default=str(default_checkpoint(key)),
                       metavar="PATH", help=f"the {name}, made by: {commands(key)[-1]}")
    p.add_argument("--stage5-chat-checkpoint", dest=CHAT, default=SFT_CHECKPOINT, metavar="PATH",
                   help=f"the instructed GPT of the chat tab, made by: {CHAT_COMMANDS[0]}, then {CHAT_COMMANDS[1]}")
    p.add_argument("--stage5-chat-adapter-checkpoint", dest=ADAPTER, default=LORA_ADAPTER, metavar="PATH",
                   help=f"the LoRA adapter the chat tab can switch on, made by: {ADAPTER_COMMAND}")
    p.add_argument("--stage5-draft-checkpoint", dest=S5_DRAFT, default=S5_DRAFT_CHECKPOINT, metavar="PATH",
                   help=f"a smaller GPT with the Stage 5 GPT's tokenizer, the draft of speculative decoding in the "
                        f"generate tab, made by, for instance: {S5_DRAFT_COMMAND}")
    p.add_argument("--stage6-sst2-real-checkpoint", dest=REAL_SST2, default=MINILM_SST2_CHECKPOINT, metavar="PATH",
                   help=f"real pre-trained weights fine-tuned on SST-2, which the sentiment box prefers when the file "
                        f"exists, made by: {REAL_SST2_COMMAND}")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    defaults = {key: str(default_checkpoint(key)) for key in MODELS} | {REAL_SST2: MINILM_SST2_CHECKPOINT,
                                                                        CHAT: SFT_CHECKPOINT, ADAPTER: LORA_ADAPTER,
                                                                        S5_DRAFT: S5_DRAFT_CHECKPOINT}
    for key, default in defaults.items():  # a path given by hand must exist; a default one may come later
        if getattr(args, key) != default and not Path(getattr(args, key)).is_file():
            raise UserError(f"--{key.replace('_', '-')}-checkpoint {getattr(args, key)}: no such file")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs gradio: pip install -r requirements-demo.txt") from None
    configure(get_device(args.device), **{key: getattr(args, key) for key in defaults})
    get_logger("demo")
    for key in MODELS:
        log.info(f"{key}: {SETTINGS['checkpoints'][key]}" + (" (missing: its tab says how to train it)"
                                                            if missing_checkpoint(key) else ""))
    log.info(f"{REAL_SST2}: {SETTINGS['checkpoints'][REAL_SST2]} (" + ("the sentiment box answers with it)"
             if sst2_model() == REAL_SST2 else f"missing: the course's own BERT answers; {REAL_SST2_COMMAND})"))
    try:
        build_app().launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False)
    except OSError as e:  # the port is taken, or the host is not an address of this machine
        raise UserError(f"cannot serve on {args.host}:{args.port}: {str(e).splitlines()[0]}") from None


if __name__ == "__main__":
    run_cli(main)
