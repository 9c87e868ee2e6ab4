"""Score an instructed GPT on the course's own tasks, with the course's own metrics, from the answers it writes.

    python stage5_gpt/evaluate_chat.py                          # the SFT reference run's best.pt (SFT_CHECKPOINT)
    python stage5_gpt/evaluate_chat.py --beam-size 5            # translations with beam search too, as Stages 3 and 4
    python stage5_gpt/evaluate_chat.py --limit 100 --json       # the first 100 test examples of each task

Every question goes through the chat template (chat_template.render) exactly as in training, and the model answers
until it writes <|end|>. The answers are then scored like the specialist models of earlier stages:

- en_fr and de_en: sacreBLEU on Multi30k test2016 (cased, and lowercased as Stage 3 also reports), greedy and, with
  --beam-size, beam search with the length penalty of Stage 4 (((5 + length) / 6) ** alpha). Its trivial baseline:
  copying the source sentence unchanged (names and numbers match, so it is not 0).
- sst2: accuracy on SST-2 dev from the word the model answers ("positive" or "negative"; anything else counts as
  wrong and is reported as unparsed). Its trivial baseline: always the majority class.
- general: the mean loss per answer token on the 110 test instructions (teacher forcing: the model reads the true
  answer and is scored on each next token), next to the same for --base, the pre-trained model before fine-tuning,
  given the same template; and the share of answers that end (<|end|>) within 128 new tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/evaluate_chat.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import sacrebleu
import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import get_device, positive_int, resolve_data_dir, run_cli
from stage5_gpt.batching import Request, generate_batch
from stage5_gpt.chat_template import END, SPECIAL_TOKENS, check_template, prompt_ids, render, reply_text
from stage5_gpt.evaluate import load_model
from stage5_gpt.instructions import SENTIMENT, TASKS, TRANSLATIONS, load_examples
from stage5_gpt.model import GPT, KVCache
from stage5_gpt.reference_runs import BASE_CHECKPOINT, SFT_CHECKPOINT

MAX_NEW = {"en_fr": 80, "de_en": 80, "en_de": 80, "sst2": 8, "general": 128}   # new tokens an answer may take, per task
SAMPLES = 3                                                           # answers per task kept in the result


def load_chat_model(checkpoint: str | Path, device) -> tuple[GPT, object, dict]:
    """A GPT whose tokenizer has the chat template's tokens -> (model in eval mode, tokenizer, checkpoint)."""
    model, tok, ckpt = load_model(checkpoint, device)
    check_template(tok, where=f"the tokenizer of {checkpoint}")
    return model, tok, ckpt


def encode_example(tok, example: dict, block_size: int) -> tuple[list[int], list[int]] | None:
    """An (instruction, answer) pair -> (inputs, targets) for teacher forcing: targets are the next tokens where they
    belong to the answer, -100 (ignored) elsewhere. None when the rendered pair does not fit the context."""
    ids, learn = render(tok, [{"role": "user", "content": example["prompt"]},
                              {"role": "assistant", "content": example["answer"]}])
    if len(ids) - 1 > block_size:
        return None
    return ids[:-1], [t if keep else -100 for t, keep in zip(ids[1:], learn[1:])]


def pad_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) inputs and targets; the padding's targets are -100, so it is never learned or scored."""
    T = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (inp, tgt) in enumerate(pairs):
        x[i, :len(inp)], y[i, :len(tgt)] = torch.tensor(inp), torch.tensor(tgt)
    return x.to(device), y.to(device)


@torch.no_grad()
def answer_loss(model: GPT, pairs: list, pad_id: int, device, batch_size: int = 32) -> float:
    """Mean cross-entropy per answer token over encoded pairs (encode_example), every answer token counted once."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        x, y = pad_batch([pairs[i] for i in order[start:start + batch_size]], pad_id, device)
        logits, _ = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100,
                                 reduction="sum").item()
        count += int((y != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def greedy_ids(model: GPT, prompt: list[int], end_id: int, max_new_tokens: int) -> list[int]:
    """The most likely token at every step, until <|end|> (kept) or max_new_tokens."""
    device = model.wte.weight.device
    out = []
    for next_id in model.generate_stream(torch.tensor([prompt], device=device), max_new_tokens, temperature=0):
        out.append(int(next_id[0]))
        if out[-1] == end_id:
            break
    return out


def length_penalty(length: int, alpha: float) -> float:
    """Stage 4's (GNMT's) normalisation: without it, beam search prefers short answers (fewer log-probs summed)."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_ids(model: GPT, prompt: list[int], end_id: int, max_new_tokens: int, beam_size: int = 5,
             alpha: float = 0.6) -> list[int]:
    """Beam search over one prompt with the KV cache: the K best partial answers (by summed log-probability) are
    kept; each step extends each of them by every token and keeps the K best extensions, the cache rows following
    their parents (KVCache.reorder). An answer that ends (<|end|>) leaves the beam with its length-normalised score;
    the search stops when K answers have ended (or at max_new_tokens), and the best of them wins."""
    device, K = model.wte.weight.device, beam_size
    cache = KVCache(model.cfg.n_layer, model.cfg.block_size)
    hidden = model.hidden_states(torch.tensor([prompt], device=device), cache)        # (1, T, C)
    logp = F.log_softmax(model.lm_head(hidden[:, -1]).float(), dim=-1).expand(K, -1)  # (K, V): K copies
    cache.reorder(torch.zeros(K, dtype=torch.long, device=device))
    scores = torch.full((K,), float("-inf"), device=device)
    scores[0] = 0.0                                                                    # one live beam at first
    beams: list[list[int]] = [[] for _ in range(K)]
    finished: list[tuple[float, list[int]]] = []
    for t in range(max_new_tokens):
        V = logp.shape[-1]
        top, idx = (scores[:, None] + logp).view(-1).topk(2 * K)                      # the 2K best extensions
        rows, tokens, kept = [], [], []
        for s, i in zip(top.tolist(), idx.tolist()):
            if s == float("-inf"):
                break
            b, tok = divmod(i, V)
            if tok == end_id:
                finished.append((s / length_penalty(t + 1, alpha), beams[b] + [tok]))
            elif len(rows) < K:
                rows, tokens, kept = rows + [b], tokens + [tok], kept + [s]
        if len(finished) >= K or not rows:
            break
        beams = [beams[b] + [tok] for b, tok in zip(rows, tokens)]
        scores = torch.tensor(kept, device=device)
        if t == max_new_tokens - 1:  # out of room: the open answers compete as they are
            finished += [(s / length_penalty(t + 1, alpha), beam) for s, beam in zip(kept, beams)]
            break
        cache.reorder(torch.tensor(rows, device=device))
        hidden = model.hidden_states(torch.tensor(tokens, device=device)[:, None], cache)  # (K', 1, C)
        logp = F.log_softmax(model.lm_head(hidden[:, -1]).float(), dim=-1)
    return max(finished, key=lambda f: f[0])[1] if finished else []


def answer(model: GPT, tok, question: str, max_new_tokens: int, beam_size: int = 1) -> tuple[str, bool] | None:
    """One question through the template -> (the model's answer, whether it ended with <|end|>); None when the
    question alone fills the model's context."""
    ids = prompt_ids(tok, [{"role": "user", "content": question}])
    room = min(max_new_tokens, model.cfg.block_size - len(ids))
    if room <= 0:
        return None
    end = tok.token_to_id(END)
    new = greedy_ids(model, ids, end, room) if beam_size == 1 else beam_ids(model, ids, end, room, beam_size)
    return reply_text(tok, new)


@torch.no_grad()
def answers_greedy(model: GPT, tok, questions: list[str], max_new_tokens: int,
                   batch_size: int = 32) -> list[tuple[str, bool] | None]:
    """answer(..., beam_size=1) for many questions at once: batches of similar length decoded together
    (batching.generate_batch: left padding, each row its own positions), each row stopping at a template token as
    reply_text would. The same answers as one at a time, up to float rounding in near-ties; much faster on a CPU,
    where one row alone leaves most of each matrix multiply's time to overhead."""
    prompts = [prompt_ids(tok, [{"role": "user", "content": q}]) for q in questions]
    stops = tuple(tok.token_to_id(t) for t in SPECIAL_TOKENS)               # where reply_text ends a reply
    out: list[tuple[str, bool] | None] = [None] * len(questions)
    fits = sorted((i for i, p in enumerate(prompts) if len(p) < model.cfg.block_size), key=lambda i: len(prompts[i]))
    for start in range(0, len(fits), batch_size):
        rows = fits[start:start + batch_size]
        requests = [Request(prompts[i], min(max_new_tokens, model.cfg.block_size - len(prompts[i])), stop_ids=stops)
                    for i in rows]
        for i, handle in zip(rows, generate_batch(model, requests)):
            out[i] = reply_text(tok, handle.tokens)
    return out


def sentiment_of(text: str) -> int | None:
    """The label an answer gives: 1 for "positive...", 0 for "negative...", None for anything else."""
    words = text.strip().lower().split()
    first = words[0].strip(".,!:;") if words else ""
    return SENTIMENT.index(first) if first in SENTIMENT else None


def bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> float:
    return round(sacrebleu.metrics.BLEU(lowercase=lowercase).corpus_score(hypotheses, [references]).score, 2)


def score(model: GPT, tok, examples: dict[str, list[dict]], beam_size: int = 1, base: GPT | None = None,
          log=print) -> tuple[dict, dict]:
    """The test examples of each task -> (metrics, samples). Metrics hold each task's figures and their trivial
    baselines; samples, the first answers of each task next to their reference."""
    metrics, samples = {}, {}
    pad = tok.token_to_id(END)
    for task, items in examples.items():
        if not items:
            continue
        decodings = [1] + ([beam_size] if beam_size > 1 and task in TRANSLATIONS else [])
        answers = {}
        for k in decodings:
            if k == 1:   # greedy: many questions per forward pass
                answers[k] = answers_greedy(model, tok, [ex["prompt"] for ex in items], MAX_NEW[task])
                continue
            bar = tqdm(items, desc=f"{task} (beam {k})", leave=False, disable=None)
            answers[k] = [answer(model, tok, ex["prompt"], MAX_NEW[task], k) for ex in bar]
        # a question longer than the context gets no answer: scored as an empty one, and counted
        metrics[f"{task}_too_long"] = sum(a is None for a in answers[1])
        answers = {k: [("", False) if a is None else a for a in outs] for k, outs in answers.items()}
        greedy = answers[1]
        samples[task] = [{"prompt": ex["prompt"], "reference": ex["answer"], "answer": a}
                         for ex, (a, _) in zip(items[:SAMPLES], greedy)]
        metrics[f"{task}_ended"] = round(sum(ended for _, ended in greedy) / len(items), 4)
        if task in TRANSLATIONS:
            refs = [ex["answer"] for ex in items]
            source = [ex["prompt"].split("\n", 1)[1] for ex in items]
            for k, outs in answers.items():
                name = "greedy" if k == 1 else f"beam{k}"
                metrics[f"{task}_bleu_{name}"] = bleu([a for a, _ in outs], refs)
                metrics[f"{task}_bleu_lc_{name}"] = bleu([a for a, _ in outs], refs, lowercase=True)
            metrics[f"{task}_bleu_copy_source"] = bleu(source, refs)        # the trivial baseline
            metrics[f"{task}_bleu_lc_copy_source"] = bleu(source, refs, lowercase=True)
        elif task == "sst2":
            labels = [ex["label"] for ex in items]
            said = [sentiment_of(a) for a, _ in greedy]
            metrics["sst2_accuracy"] = round(sum(p == y for p, y in zip(said, labels)) / len(labels), 4)
            metrics["sst2_unparsed"] = round(sum(p is None for p in said) / len(labels), 4)
            metrics["sst2_majority"] = round(max(labels.count(0), labels.count(1)) / len(labels), 4)
        elif task == "general":
            pairs = [p for p in (encode_example(tok, ex, model.cfg.block_size) for ex in items) if p is not None]
            metrics["general_answer_loss"] = round(answer_loss(model, pairs, pad, model.wte.weight.device), 4)
            if base is not None:
                metrics["general_answer_loss_base"] = round(answer_loss(base, pairs, pad, base.wte.weight.device), 4)
        log(f"{task}: " + " | ".join(f"{k} {v}" for k, v in metrics.items() if k.startswith(task)))
    return metrics, samples


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score an instructed GPT on the course's tasks (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=SFT_CHECKPOINT, help="the instructed GPT (sft.py's best.pt)")
    p.add_argument("--base", default=None, metavar="CHECKPOINT",
                   help=f"also score the general instructions' answer tokens with this model (the pre-trained one "
                        f"before fine-tuning, e.g. {BASE_CHECKPOINT})")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--beam-size", type=positive_int, default=1, help="translations: beam search too (1: greedy only)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N test examples of each task")
    p.add_argument("--data-dir", default=None, help="default: $MY_LLM_DATA, else ~/.cache/my_llm/data")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print the metrics and samples as JSON")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, tok, _ = load_chat_model(args.checkpoint, device)
    base = load_chat_model(args.base, device)[0] if args.base else None
    examples = load_examples(resolve_data_dir(args.data_dir), "test", args.tasks)
    examples = {t: items[:args.limit] for t, items in examples.items()}
    metrics, samples = score(model, tok, examples, args.beam_size, base,
                             log=(lambda _: None) if args.json else print)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "metrics": metrics, "samples": samples}, indent=1,
                         ensure_ascii=False))
    else:
        for task, rows in samples.items():
            for s in rows:
                print(f"[{task}] {s['prompt']!r}\n    answer:    {s['answer']}\n    reference: {s['reference']}")


if __name__ == "__main__":
    run_cli(main)
