"""Check that this machine is ready for the course: Python and packages, the device, the data sets, each stage's model.

    python scripts/verify_installation.py
    python scripts/verify_installation.py --data-dir /path/to/data --device cpu

Each line starts with a mark: ✓ fine, ! a warning (the course still runs, but read the advice), ✗ a problem that
stops the course, with what to do about it. The exit code is 0 when nothing essential failed, 1 otherwise.

Missing data is a warning, never a failure: every stage's loader downloads its data set into the data directory the
first time it is needed (with internet access), so a fresh install with an empty data directory is a working install.

The model check builds each stage's model at a tiny size from the stage's own code, and runs one forward and one
backward pass on a random batch on the chosen device. It proves the stages import and run here; the test suite
(`pytest`) is what proves they compute the right thing.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/verify_installation.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

# No torch, numpy or scripts.common up here: this script must also run, and say what to do, where they are missing.
# They are imported once the package check has found them.

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_PYTHON = (3, 10)

# ----------------------------------------------------------------------------- packages

# Every requirement of requirements.txt (the minimum versions are read from there), with the module to import and what
# the course uses it for. Essential: the stages' scripts need it; otherwise only the tests or the notebooks do, and a
# missing one is a warning. nbformat, nbclient and ipykernel are what runs a notebook; `pip install jupyter` gets them.
PACKAGES = {
    # distribution: (module, what for, essential)
    "torch": ("torch", "every model and training loop", True),
    "numpy": ("numpy", "arrays, token-id files, seeding", True),
    "matplotlib": ("matplotlib", "the loss curves and plots every run writes", True),
    "tqdm": ("tqdm", "progress bars", True),
    "datasets": ("datasets", "downloading a data set that is not in the data directory", True),
    "sacrebleu": ("sacrebleu", "BLEU scores in Stages 3 and 4", True),
    "regex": ("regex", "GPT-2's pre-tokeniser in Stage 5 (\\p{L}, \\p{N})", True),
    "jupyter": (None, "the notebooks", False),
    "nbformat": ("nbformat", "the notebooks", False),
    "nbclient": ("nbclient", "the notebooks", False),
    "ipykernel": ("ipykernel", "the notebooks' Python kernel", False),
    "pytest": ("pytest", "the test suite", False),
    "transformers": ("transformers", "the parity tests against Hugging Face (Stages 5 and 6)", False),
    "safetensors": ("safetensors", "Stage 6's real pre-trained weights (model.safetensors)", True),
    "tensorboard": ("tensorboard", "the curves every training script logs (tensorboard --logdir runs)", True),
    "optuna": ("optuna", "the hyperparameter search, scripts/sweep.py", False),
    "scipy": ("scipy", "the metric tests only (reference Pearson and Spearman)", False),
    "scikit-learn": ("sklearn", "the metric tests only (reference Matthews correlation and F1)", False),
    "peft": ("peft", "the LoRA test only (Stage 5's LoRA against Hugging Face's)", False),
}
INSTALLED_WITH = {"nbformat": "jupyter", "nbclient": "jupyter", "ipykernel": "jupyter"}  # what to pip install
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def read_requirements(path: Path = REPO_ROOT / "requirements.txt") -> dict[str, str]:
    """{distribution: minimum version} from requirements.txt's `name>=version` lines (one place to bump a version)."""
    minimums = {}
    if not path.is_file():
        return minimums
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][^\s;,#]*))?", line)
        if match and not line.lstrip().startswith("#"):
            minimums[match.group(1).lower()] = match.group(2) or ""
    return minimums


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the leading numbers are enough to compare with a lower bound."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def pip_command(dist: str, minimum: str, upgrade: bool = False) -> str:
    spec = f'"{dist}>={minimum}"' if minimum else dist
    command = f"pip install {'-U ' if upgrade else ''}{spec}"
    if dist == "torch":  # a plain torch pulls gigabytes of CUDA libraries on Linux (README, Quick start)
        command += f" (on a CPU-only Linux machine add --index-url {CPU_TORCH_INDEX})"
    return command


def check_python() -> list[tuple[str, str]]:
    version = platform.python_version()
    needed = ".".join(map(str, MIN_PYTHON))
    if sys.version_info[:2] < MIN_PYTHON:
        return [("fail", f"Python {version} is too old: the course needs Python {needed} or newer "
                         f"(install a newer Python and make a fresh virtual environment with it)")]
    return [("ok", f"Python {version} (needs >= {needed}) at {sys.executable}")]


def check_packages() -> list[tuple[str, str]]:
    """One line per package: installed version against requirements.txt, or the pip command that fixes it."""
    minimums = read_requirements()
    # a requirement added to requirements.txt but not described above is still checked, as essential
    packages = {**PACKAGES, **{d: (d, "listed in requirements.txt", True) for d in minimums if d not in PACKAGES}}
    lines, missing = [], 0
    for dist, (module, purpose, essential) in packages.items():
        minimum = minimums.get(dist, "")
        target = INSTALLED_WITH.get(dist, dist)
        try:
            version = importlib.metadata.version(dist)
            # find_spec looks the module up without running it: importing datasets or transformers takes seconds
            if module is not None and importlib.util.find_spec(module) is None:
                raise importlib.metadata.PackageNotFoundError(dist)
        except importlib.metadata.PackageNotFoundError:
            missing += 1
            fix = pip_command(target, minimums.get(target, ""))
            if essential:
                lines.append(("fail", f"{dist} is not installed; the course needs it for {purpose}: {fix}"))
            else:
                lines.append(("warn", f"{dist} is not installed; it is used only for {purpose}, and the stages run "
                                      f"without it: {fix}"))
            continue
        if minimum and version_tuple(version) < version_tuple(minimum):
            lines.append(("warn", f"{dist} {version} is older than the {minimum} the course was tested with "
                                  f"(used for {purpose}); if something fails: {pip_command(dist, minimum, True)}"))
        else:
            lines.append(("ok", f"{dist} {version}" + (f" (>= {minimum})" if minimum else "")))
    if missing > 1:
        lines.append(("note", "pip install -r requirements.txt installs them all (see README, Quick start)"))
    return lines


def import_core() -> list[tuple[str, str]]:
    """Import torch and numpy for real: an installed but broken build (a missing shared library, a numpy that torch
    was not built against) only shows itself here."""
    lines = []
    for module in ("numpy", "torch"):
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, OSError from a missing .so, ...: all mean the same to the user
            lines.append(("fail", f"{module} is installed but does not import ({one_line(e)}); reinstall it: "
                                  f"pip install --force-reinstall {module}"))
    return lines


# ----------------------------------------------------------------------------- device

def check_device(name: str) -> tuple[list[tuple[str, str]], object]:
    """What scripts.common.get_device picks (what every train.py does with --device), and what torch can see.
    Returns the lines and the device, or None when the asked-for device is not there."""
    import torch

    from scripts.common import UserError, get_device

    lines = []
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    seen = [f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}",
            f"Apple MPS {'yes' if has_mps else 'no'}"]
    try:
        device = get_device(name)
    except UserError as e:
        return [("fail", str(e))], None
    threads = f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    if os.environ.get("OMP_NUM_THREADS"):
        threads += f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    lines.append(("ok", f"device {device} (--device {name}); {', '.join(seen)}; {threads}"))
    if torch.version.cuda and not torch.cuda.is_available():
        lines.append(("warn", f"torch {torch.__version__} is a CUDA {torch.version.cuda} build, but no CUDA GPU is "
                              f"visible: it runs on the CPU, but the CPU-only build is far smaller "
                              f"(pip install torch --index-url {CPU_TORCH_INDEX}; see README, Quick start)"))
    return lines, device


# ----------------------------------------------------------------------------- data

# The files each stage's loader reads (tests/test_verify_installation.py checks this against the loaders' own tables),
# which stage reads them, and where a missing copy comes from. The README's Data section describes the formats.
MULTI30K_FILES = [f"{split}.{lang}.gz" for split in ("train", "val", "test_2016_flickr", "test_2017_flickr")
                  for lang in ("en", "de", "fr")]
GLUE_FILES = ["train.tsv.gz", "dev.tsv.gz", "test.tsv.gz"]
DATASETS = [
    # (name, folder, files, who reads it, where a missing copy comes from)
    ("IMDb", "imdb", ["train.csv.gz", "test.csv.gz"], "stage1_mlp (its default)",
     "Hugging Face stanfordnlp/imdb"),
    ("IMDb unlabelled", "imdb", ["unsup.csv.gz"], "stage6_bert pretrain.py, stage5_gpt --dataset course_mix",
     "Hugging Face stanfordnlp/imdb"),
    ("SST-2 (GLUE)", "glue/sst2", GLUE_FILES,
     "stage1_mlp --dataset sst2, stage5_gpt finetune.py, stage6_bert finetune.py --task sst2",
     "Hugging Face nyu-mll/glue (sst2)"),
    ("AG News", "ag_news", ["train.csv.gz", "test.csv.gz"], "stage1_mlp --dataset ag_news",
     "Hugging Face fancyzhx/ag_news"),
    ("Tiny Shakespeare", "tiny_shakespeare", ["input.txt.gz"], "stage2_rnn_lstm and stage5_gpt (their default)",
     "karpathy/char-rnn on GitHub"),
    ("WikiText-2", "wikitext-2", ["wiki.train.tokens.gz", "wiki.valid.tokens.gz", "wiki.test.tokens.gz"],
     "stage2_rnn_lstm and stage5_gpt --dataset wikitext2 (and course_mix), stage6_bert pretrain.py",
     "Hugging Face Salesforce/wikitext (wikitext-2-v1)"),
    ("Multi30k", "multi30k", MULTI30K_FILES, "stage3_attention_seq2seq and stage4_transformer (their default), "
     "stage5_gpt --dataset course_mix and sft.py", "github.com/multi30k/dataset"),
    ("Tatoeba eng-fra", "tatoeba_eng_fra", ["fra.txt.gz"], "stage3_attention_seq2seq --dataset tatoeba",
     "d2l.ai (fra-eng.zip)"),
    ("Instructions", "instructions", ["instruction-data.json"], "stage5_gpt sft.py (the general instructions)",
     "rasbt/LLMs-from-scratch on GitHub"),
] + [(f"GLUE {name}", f"glue/{task}", GLUE_FILES, f"stage6_bert finetune.py --task {task}",
      f"Hugging Face nyu-mll/glue ({task})")
     for task, name in [("cola", "CoLA"), ("mrpc", "MRPC"), ("rte", "RTE"), ("stsb", "STS-B"), ("wnli", "WNLI")]]
GZIP_MAGIC = b"\x1f\x8b"


def data_dir_source(flag: str | None) -> str:
    if flag:
        return "from --data-dir"
    if os.environ.get("MY_LLM_DATA"):
        return "from $MY_LLM_DATA"
    return "the default; set --data-dir or MY_LLM_DATA to use another"


def check_data(data_dir: Path) -> list[tuple[str, str]]:
    """Which data sets are complete in the data directory. Only warnings: a loader downloads what is missing.

    A file counts when it is there, not empty, and starts like a gzip file: a download that stopped half-way, an HTML
    error page or a Git LFS pointer saved under the right name would otherwise only fail later, inside a loader."""
    lines = []
    if data_dir.exists() and not data_dir.is_dir():
        return [("warn", f"{data_dir} is a file, not a folder: point --data-dir or MY_LLM_DATA at a folder")]
    if not data_dir.is_dir():
        lines.append(("warn", f"{data_dir} does not exist yet: a loader creates it when it first downloads a data set"))
    elif not os.access(data_dir, os.W_OK):
        lines.append(("warn", f"{data_dir} is read-only: a missing data set cannot be downloaded into it "
                              f"(point --data-dir or MY_LLM_DATA at a folder you can write to)"))
    for name, folder, files, used_by, source in DATASETS:
        missing, broken = [], []
        for file in files:
            path = data_dir / folder / file
            if not path.is_file():
                missing.append(file)
            elif not (looks_like_gzip(path) if file.endswith(".gz") else path.stat().st_size > 0):
                broken.append(file)
        if broken:
            fmt = "gzip" if broken[0].endswith(".gz") else "in its format"
            lines.append(("warn", f"{name}: {', '.join(broken)} in {data_dir / folder} is empty or not {fmt} "
                                  f"(a broken download?); delete it and it is downloaded again from {source} on first use; "
                                  f"used by {used_by}"))
        elif not missing:
            lines.append(("ok", f"{name} ({folder}/{files[0] if len(files) == 1 else f', {len(files)} files'}), "
                                f"used by {used_by}"))
        else:
            what = "missing" if len(missing) == len(files) else f"incomplete, without {', '.join(missing)}"
            lines.append(("warn", f"{name} ({folder}/) {what}; used by {used_by}; downloaded from {source} on first "
                                  f"use (needs internet), or copy the files into {data_dir / folder}"))
    return lines


def looks_like_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


# ----------------------------------------------------------------------------- models

# Each check builds one stage's model at a tiny size, from the stage's own config and class, and returns the model, its
# main output and a loss to backpropagate. The imports are inside the functions: a stage that does not import (a
# missing package, a half-edited file) fails its own line and the other stages still run.
V, B, T = 32, 4, 8  # vocabulary, batch, sequence length: small enough to take milliseconds


def run_stage1(device):
    import torch
    import torch.nn.functional as F

    from stage1_mlp.model import BagOfNgramsMLP, MLPConfig
    model = BagOfNgramsMLP(MLPConfig(vocab_size=V, n_classes=2, emb_dim=8, hidden_dim=8)).to(device)
    lengths = torch.tensor([3, 5, 4, 6])                                  # n-grams per text
    ids = torch.randint(V, (int(lengths.sum()),), device=device)          # (N,) the texts' n-gram ids, end to end
    offsets = (torch.cumsum(lengths, 0) - lengths).to(device)             # (B,) where each text starts
    logits = model(ids, offsets)                                          # (B, 2)
    return model, logits, F.cross_entropy(logits, torch.randint(2, (B,), device=device))


def run_stage2(device):
    import torch

    from stage2_rnn_lstm.model import LMConfig, RNNLanguageModel
    model = RNNLanguageModel(LMConfig(vocab_size=V, model_type="lstm", emb_dim=8, hidden_dim=8, n_layers=1)).to(device)
    idx = torch.randint(V, (B, T + 1), device=device)
    logits, loss, _ = model(idx[:, :-1], targets=idx[:, 1:])              # (B, T, V): the scratch LSTM
    return model, logits, loss


def run_stage3(device):
    import torch

    from stage3_attention_seq2seq.model import Seq2Seq, Seq2SeqConfig
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=V, tgt_vocab_size=V, emb_dim=8, hidden_dim=8,
                                  attention="bahdanau")).to(device)
    src = torch.randint(1, V, (B, T), device=device)                      # (B, S), no pad (id 0) ...
    src_len = torch.tensor([T, T - 2, T - 3, 2])                          # (B,) real tokens per sentence
    src[torch.arange(T, device=device) >= src_len.to(device)[:, None]] = 0  # ... except after each sentence's end
    tgt = torch.randint(1, V, (B, T + 1), device=device)
    logits, loss, _ = model(src, src_len, tgt[:, :-1], tgt[:, 1:])        # (B, T, V)
    return model, logits, loss


def run_stage4(device):
    import torch

    from stage4_transformer.model import Transformer, TransformerConfig
    model = Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=8, n_heads=2, n_enc_layers=1,
                                          n_dec_layers=1, d_ff=16, max_len=2 * T)).to(device)
    src = torch.randint(1, V, (B, T), device=device)
    tgt = torch.randint(1, V, (B, T + 1), device=device)
    logits, loss = model(src, tgt[:, :-1], tgt[:, 1:])                    # (B, T, V)
    return model, logits, loss


def run_stage5(device):
    import torch

    from stage5_gpt.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=8)).to(device)
    idx = torch.randint(V, (B, T + 1), device=device)
    logits, loss = model(idx[:, :-1], idx[:, 1:])                         # (B, T, V)
    return model, logits, loss


def run_stage6(device):
    import torch

    from stage6_bert.model import BertConfig, BertPretrain
    model = BertPretrain(BertConfig(vocab_size=V, max_position=T, hidden=8, n_layer=1, n_head=2)).to(device)
    input_ids = torch.randint(1, V, (B, T), device=device)                # no [PAD] (id 0): every token is real
    mlm_labels = torch.full((B, T), -100, device=device)
    mlm_labels[:, 2] = input_ids[:, 2]                                    # one target per row, as if it was masked
    out = model(input_ids, mlm_labels=mlm_labels, nsp_labels=torch.randint(2, (B,), device=device))
    return model, out.mlm_logits, out.loss                                # mlm_logits (B masked positions, V)


MODEL_CHECKS = [
    # (stage, build + forward, the tests that show the full story when it fails)
    ("stage1_mlp", run_stage1, "tests/test_stage1_parity.py"),
    ("stage2_rnn_lstm", run_stage2, "tests/test_stage2_model.py"),
    ("stage3_attention_seq2seq", run_stage3, "tests/test_stage3_model.py"),
    ("stage4_transformer", run_stage4, "tests/test_stage4_model.py"),
    ("stage5_gpt", run_stage5, "tests/test_stage5_model.py"),
    ("stage6_bert", run_stage6, "tests/test_stage6_model.py"),
]
STAGES = {stage for stage, _, _ in MODEL_CHECKS}


def check_model(stage: str, run, tests: str, device) -> tuple[str, str]:
    """One stage: build, forward, backward; the output's shape and the parameter count, or one line of advice."""
    import torch

    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        model, output, loss = run(device)  # in training mode, as built: dropout on, as in a training step
        loss.backward()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss is {loss.item()}")
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or not all(torch.isfinite(g).all() for g in grads):
            raise FloatingPointError("the backward pass gave no gradients, or non-finite ones")
    except Exception as e:  # any failure is one line for this stage; the other stages still run
        return "fail", f"{stage}: {one_line(e)} -- {model_advice(e, device, tests)}"
    params = sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once
    seconds = time.perf_counter() - start
    return "ok", (f"{stage}: {type(model).__name__}, output {tuple(output.shape)}, {params:,} parameters, "
                  f"loss {loss.item():.2f}, forward + backward in {seconds:.2f} s")


def model_advice(e: Exception, device, tests: str) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] not in STAGES:
        return "a package is missing: pip install -r requirements.txt"
    if isinstance(e, (ImportError, SyntaxError)):
        return "the stage's code does not import: is the checkout complete (git status)?"
    if str(device) != "cpu":
        return f"try --device cpu; if that passes, the {device} set-up (driver, torch build) is the problem"
    return f"the stage's code or your torch does not work here; run `pytest {tests}` for the full error"


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# ----------------------------------------------------------------------------- the report

def marks() -> dict[str, str]:
    """✓ ! ✗ where the console can print them; OK WARN FAIL where it cannot (a Windows code page, say)."""
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
        return {"ok": "✓", "warn": "!", "fail": "✗", "note": " "}
    except (UnicodeEncodeError, LookupError):
        return {"ok": "OK  ", "warn": "WARN", "fail": "FAIL", "note": "    "}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Check Python and packages, the device, the data sets and every stage's "
                                            "model; print what to do about each problem found.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help="folder with the data sets (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the models run; auto picks cuda, then mps, then cpu (as train.py does)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Print the report; return the exit code: 1 when an essential check failed, else 0."""
    args = parse_args(argv)
    mark = marks()
    counts = {"ok": 0, "warn": 0, "fail": 0, "note": 0}  # a note is advice, not a check: not in the summary

    def show(status: str, text: str) -> None:
        counts[status] += 1
        print(f"  {mark[status]} {text}", flush=True)

    def section(title: str, lines: list[tuple[str, str]]) -> None:
        print(f"\n{title}")
        for status, text in lines:
            show(status, text)

    print(f"my_llm installation check ({REPO_ROOT})")
    section("Python and packages", check_python() + check_packages())
    core = import_core() if all(importlib.util.find_spec(m) for m in ("numpy", "torch")) else None
    if core is None or core:
        section("Device, data, models", (core or []) + [
            ("note", "skipped: they need torch and numpy, which are missing or broken (see above)")])
    else:
        device_lines, device = check_device(args.device)
        section("Device", device_lines)

        from scripts.common import resolve_data_dir
        data_dir = resolve_data_dir(args.data_dir)
        section(f"Data in {data_dir} ({data_dir_source(args.data_dir)})", check_data(data_dir))

        if device is None:
            section("Models", [("note", "skipped: no device to run them on (see Device above)")])
        else:
            print(f"\nModels (one forward + backward pass of each stage's model, tiny size, random batch, on {device})")
            for stage, run, tests in MODEL_CHECKS:  # one line as each finishes
                show(*check_model(stage, run, tests, device))

    print(f"\nSummary: {counts['ok']} passed, {counts['warn']} warning{'' if counts['warn'] == 1 else 's'}, "
          f"{counts['fail']} failed.")
    if counts["fail"]:
        print(f"Not ready: fix the lines marked {mark['fail'].strip()} above, then run this check again.")
        return 1
    if counts["warn"]:
        print(f"Ready. The warnings ({mark['warn'].strip()}) do not stop the course: missing data sets are downloaded "
              f"on first use, and the other warnings say what they affect.")
    else:
        print("Ready: everything is in place.")
    return 0


if __name__ == "__main__":
    # Not run_cli: it lives in scripts.common, which needs torch, and this script must run where torch is missing.
    # Every problem is a line of the report, so there is no UserError to catch.
    sys.exit(main())
