"""The instruction mixture: the course's real data sets turned into (instruction, answer) pairs for sft.py.

    examples = load_examples(data_dir, "train")   # {"en_fr": [...], "de_en": [...], "sst2": [...], "general": [...]}
    examples["en_fr"][0]  ->  {"task": "en_fr", "prompt": "Translate into French:\nTwo young ...", "answer": "Deux ..."}
    mixture(examples, {"en_fr": 1, "de_en": 1, "sst2": 0.2, "general": 3}, rng)   # one round of training examples

Supervised fine-tuning teaches a model the *shape* of a conversation: an instruction, then an answer that ends. The
tasks here are ones the course already scores with its own metrics, so the instructed GPT can be put next to the
specialist models of earlier stages:

| task | from | train | val (choosing the checkpoint) | test (reported) |
|---|---|---|---|---|
| en_fr | Multi30k | train (29,000) | val (1,014) | test2016 (1,000), sacreBLEU as Stages 3 and 4 |
| de_en | Multi30k | train | val | test2016, lowercased sacreBLEU |
| sst2 | SST-2 | train, less the held-out sentences and their phrases | 500 whole train sentences | dev (872), accuracy |
| general | instruction-data.json | first 85 % (935) | last 5 % (55) | the 10 % between (110) |
| en_de | Multi30k | train | val | test2016, sacreBLEU |

English -> German (en_de) is left out of the default mixture on purpose: the LoRA lesson adapts the instructed model to
a task it never saw (`sft.py --mix en_de=1 --lora-rank 8`).
`general` is a small set of everyday instructions (spelling, grammar, conversions, short facts) from the book
"Build a Large Language Model (From Scratch)", split as the book splits it; it teaches the model to follow an
instruction worded freely, not only the three fixed prompts.

How much of each task a round holds is a weight (sft.py's --mix): weight 1 takes every example once, 0.2 a fifth of
them (a new random fifth every round), 3 each example three times. The mixture matters: SST-2's 67,000 phrases would
otherwise drown 935 general instructions, and a small model spends its capacity where the examples are.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from scripts.common import UserError
from stage5_gpt.corpus import fetch_files, load_multi30k
from stage5_gpt.data import load_sst2, sentence_split

TASKS = ("en_fr", "de_en", "sst2", "general", "en_de")
SPLITS = ("train", "val", "test")
LANGUAGES = {"en": "English", "fr": "French", "de": "German"}
TRANSLATIONS = {"en_fr": ("en", "fr"), "de_en": ("de", "en"), "en_de": ("en", "de")}
MULTI30K_SPLIT = {"train": "train", "val": "val", "test": "test2016"}
SENTIMENT = ("negative", "positive")   # SST-2 label -> the answer the model writes
SST2_VAL_SENTENCES = 500               # whole training sentences held out, as finetune.py does
INSTRUCTIONS_FILE = "instructions/instruction-data.json"
INSTRUCTIONS_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/"
                    "28c65cdfbc3338e2e040016eea4b7fdf556e4d57/ch07/01_main-chapter-code/instruction-data.json")


def translation_prompt(text: str, src: str, tgt: str) -> str:
    return f"Translate this {LANGUAGES[src]} sentence into {LANGUAGES[tgt]}:\n{text}"


def sentiment_prompt(text: str) -> str:
    return f"Is the sentiment of this movie review positive or negative?\n{text}"


def general_prompt(row: dict) -> str:
    """The instruction, and its input (when it has one) after a blank line."""
    return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")


def load_examples(data_dir: str | Path, split: str, tasks=TASKS) -> dict[str, list[dict]]:
    """task -> its examples of one split, each {"task", "prompt", "answer"}; the SST-2 ones also carry "label"."""
    if split not in SPLITS:
        raise UserError(f"no split {split!r}: use one of {', '.join(SPLITS)}")
    out = {}
    for task in tasks:
        if task in TRANSLATIONS:
            src, tgt = TRANSLATIONS[task]
            pairs = zip(load_multi30k(data_dir, MULTI30K_SPLIT[split], src),
                        load_multi30k(data_dir, MULTI30K_SPLIT[split], tgt))
            out[task] = [{"task": task, "prompt": translation_prompt(s, src, tgt), "answer": t} for s, t in pairs]
        elif task == "sst2":
            out[task] = sst2_examples(data_dir, split)
        elif task == "general":
            rows = general_rows(data_dir, split)
            out[task] = [{"task": task, "prompt": general_prompt(r), "answer": r["output"]} for r in rows]
        else:
            raise UserError(f"unknown task {task!r}: the tasks are {', '.join(TASKS)}")
    return out


def sst2_examples(data_dir: str | Path, split: str) -> list[dict]:
    """SST-2 as questions. Test is dev (the figure every stage reports); val is SST2_VAL_SENTENCES whole training
    sentences, whose phrases leave train (data.sentence_split), so that choosing on val is like choosing on dev."""
    texts, labels = load_sst2(data_dir, "dev" if split == "test" else "train")
    if split != "test":
        n_val = min(SST2_VAL_SENTENCES, len(texts) // 5)   # a fifth of a tiny test set
        train_rows, val_rows = sentence_split(texts, n_val, random.Random(0))
        rows = val_rows if split == "val" else train_rows
        texts, labels = [texts[i] for i in rows], [labels[i] for i in rows]
    return [{"task": "sst2", "prompt": sentiment_prompt(t), "answer": SENTIMENT[y], "label": y}
            for t, y in zip(texts, labels)]


def general_rows(data_dir: str | Path, split: str) -> list[dict]:
    """The book's split of instruction-data.json, in file order: first 85 % train, next 10 % test, last 5 % val."""
    path = Path(data_dir) / INSTRUCTIONS_FILE
    if not path.is_file():
        fetch_files("instructions", path.parent, {path.name: INSTRUCTIONS_URL})
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str) for r in rows):
            raise ValueError("every row needs the text fields instruction and output")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected a JSON list of objects with "
                        f"instruction, input and output; see {path.parent / 'SOURCE.md'})") from None
    n_train, n_test = int(len(rows) * 0.85), int(len(rows) * 0.10)
    cuts = {"train": (0, n_train), "test": (n_train, n_train + n_test), "val": (n_train + n_test, len(rows))}
    start, end = cuts[split]
    return rows[start:end]


def parse_mix(text: str) -> dict[str, float]:
    """"en_fr=1,de_en=1,sst2=0.2,general=3" -> {task: weight}; a task left out gets 0. One line for any mistake."""
    weights = dict.fromkeys(TASKS, 0.0)
    for item in filter(None, (x.strip() for x in text.split(","))):
        task, sep, value = item.partition("=")
        if not sep or task.strip() not in TASKS:
            raise UserError(f"--mix {text!r}: write task=weight pairs, the tasks being {', '.join(TASKS)}")
        try:
            weights[task.strip()] = float(value)
        except ValueError:
            raise UserError(f"--mix: the weight of {task.strip()} must be a number, got {value!r}") from None
    if any(w < 0 or w != w for w in weights.values()):
        raise UserError(f"--mix {text!r}: a weight cannot be negative")
    if not any(weights.values()):
        raise UserError(f"--mix {text!r}: every weight is zero; give at least one task a positive weight")
    return weights


def mixture(examples: dict[str, list], weights: dict[str, float], rng: random.Random) -> list:
    """One round of training examples: each task's examples repeated int(w) times plus a random (w - int(w)) share
    of them, all shuffled together. The same rng state gives the same round (what an exact --resume needs)."""
    out = []
    for task in TASKS:
        items, w = examples.get(task, []), weights.get(task, 0.0)
        if not items or w <= 0:
            continue
        out += items * int(w)
        out += rng.sample(items, round((w - int(w)) * len(items)))
    rng.shuffle(out)
    return out
