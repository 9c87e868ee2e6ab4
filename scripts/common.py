"""The only code the stages share: arguments, device, seeding, logging, data directory, atomic files,
checkpoints, mixed precision and processes, reference runs and result files.

Everything here is plumbing that several stages need in exactly the same form. Anything that
teaches something (models, data pipelines, training loops) lives in the stage folders instead,
so that each stage reads on its own.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from scripts.declarations import (all_reference_runs, all_reference_sweeps, reference_command,  # noqa: F401
                                  stage_declarations)

REPO_ROOT = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """A problem the user can fix (bad flag, missing data, bad checkpoint).

    Scripts catch it in `run_cli` and print its message as one line, with no traceback.
    """


def run_cli(main) -> None:
    """Call `main()`: a UserError becomes a one-line message and exit code 2, Ctrl-C a quiet exit 130, and a
    distributed run that lost one of its processes one line and exit code 1 (lost_process)."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        line = lost_process(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)


def lost_process(error: RuntimeError) -> str | None:
    """The one line for a collective (all-reduce, broadcast, ...) that failed because another process of a torchrun
    run died (its connection closed) or stopped answering (--dist-timeout ran out), or None for any other error,
    whose traceback stays. gloo's errors name its own source file; NCCL's are DistBackendErrors."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(error)
    if "gloo" not in text and not isinstance(error, getattr(dist, "DistBackendError", ())):
        return None
    reason = text.split("] ", 1)[-1].split(". ")[0].strip().rstrip(".")   # gloo: "[file.cc:78] Timed out ..."
    return (f"process {dist.get_rank()} of {dist.get_world_size()} lost the others ({reason}): another process died "
            f"or did not answer within --dist-timeout; continue the run with --resume")


# ----------------------------------------------------------------------------- arguments

def add_common_args(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float,
                    out_dir: str) -> None:
    """The flags every stage's train.py shares, with the stage's own defaults."""
    p.add_argument("--data-dir", default=None,
                   help="folder with the data sets (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--out-dir", default=out_dir, help="where checkpoints, the vocabulary and the log go")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto picks cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=1337, help="seed for python, numpy and torch")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="maximum number of passes over the data")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many optimizer steps in total (a checkpoint is saved)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="examples per step")
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.pt exactly")
    p.add_argument("--quick", action="store_true", help="a tiny run on small slices, for smoke tests and CI")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="log curves for TensorBoard in the run folder (`tensorboard --logdir runs`)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def probability(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def parse_with_quick_defaults(p: argparse.ArgumentParser, argv: list[str] | None, quick: dict) -> argparse.Namespace:
    """Parse `argv`; under --quick, parse again with `quick` as the defaults (e.g. {"lr": 1e-2, "epochs": 1}).

    A flag the user typed always wins, because argparse itself decides what was given: abbreviations such as
    `--n-emb 96` for `--n-embd` count, which a search of argv for "--n-embd" would miss.
    """
    args = p.parse_args(argv)
    if getattr(args, "quick", False) and quick:
        p.set_defaults(**quick)
        args = p.parse_args(argv)
    return args


KEPT_UNLESS_GIVEN = ("time_budget",)   # resumable, but part of the run's schedule: left out, the run's own value holds


def merge_resumed_args(args: argparse.Namespace, saved: dict, resumable: tuple[str, ...]) -> argparse.Namespace:
    """The settings of a resumed run: those it started with (`saved`, from its checkpoint), except the flags in
    `resumable` (where outputs go, which device, --max-steps ...), which this command line sets. A flag newer than
    the checkpoint keeps this command line's value, and so does --[no-]tensorboard, which changes nothing computed.
    --time-budget is resumable (a longer budget stretches the schedule), but a resume command without it keeps the
    run's budget: otherwise the learning rate would quietly start following the steps instead of the clock."""
    resumable = (*resumable, "tensorboard")
    given = {k: getattr(args, k) for k in resumable if hasattr(args, k)
             and not (k in KEPT_UNLESS_GIVEN and getattr(args, k) is None and saved.get(k) is not None)}
    return argparse.Namespace(**{**vars(args), **saved, **given})


# ----------------------------------------------------------------------------- device, seed, logging

def get_device(name: str = "auto") -> torch.device:
    """auto = cuda -> mps -> cpu. Asking for a device that is not there is a UserError."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU (try --device auto or cpu)")
    if name == "mps" and not has_mps:
        raise UserError("--device mps was asked for, but this torch build has no Apple MPS (try --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def catch_stop_signals():
    """Ctrl-C (SIGINT) and SIGTERM no longer kill a training run: they set stop["by"] to the signal's name, and the
    loop checks the flag between steps, saves last.pt and exits, so --resume loses nothing. Returns (stop, restore);
    call restore() when the loop ends, to leave the caller (a shell, a notebook kernel) as it was."""
    stop = {"by": None}

    def request_stop(signum, frame):
        stop["by"] = signal.Signals(signum).name
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return stop, restore


def get_logger(name: str, log_file: str | Path | None = None) -> logging.Logger:
    """One format on the console and in the run's log file (appended, so a resumed run keeps its history)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s | %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as e:  # --out-dir inside a file, or a folder we may not write to
            raise UserError(f"cannot write the log {log_file}: {e.strerror or e} (check --out-dir)") from None
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


# ----------------------------------------------------------------------------- data directory

def resolve_data_dir(arg: str | None = None) -> Path:
    """--data-dir, else $MY_LLM_DATA, else a per-user cache folder (where downloads land)."""
    if arg:
        return Path(arg).expanduser()
    if os.environ.get("MY_LLM_DATA"):
        return Path(os.environ["MY_LLM_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "my_llm" / "data"


# ----------------------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    """Every random number generator a training step touches, in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def atomic_write(path: str | Path, write) -> None:
    """Call `write(f)` on a temporary file beside `path` (opened "wb"), then rename it over `path`.

    os.replace is atomic, so a process killed mid-write leaves the previous file intact, never a half-written one.
    Every file the course writes goes through here; the temporary name is <name>.tmp<pid>.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON, atomically (the course stores everything but tensors as JSON, never pickle)."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class RunTracker:
    """What a run reports while it trains, for people and for programs.

    - TensorBoard event files in the run folder: `tensorboard --logdir runs` shows every run of every stage side by
      side. `train(step, loss=..., lr=...)` logs under train/, `evaluation(step, "val", loss=...)` under val/.
    - metrics.jsonl in the run folder, one JSON line per evaluation, {"step": 326, "split": "val", "loss": 1.83,
      "seconds": 81.2}: scripts/sweep.py reads it while the run goes on, to stop a hopeless trial early, without the
      training scripts knowing anything about the search.

    Only the process that writes checkpoints reports (master=False makes every call do nothing). A run resumed from
    step s forgets what it reported after s (TensorBoard's purge_step, and the same for the JSON lines): a crash after
    the last checkpoint leaves no duplicate points, and the resumed curves continue exactly where last.pt stopped.
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, master: bool = True, step: int = 0):
        self.jsonl = Path(out_dir) / "metrics.jsonl" if master else None
        self.writer = None
        if not master:
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if step and self.jsonl.is_file():  # resumed: keep the evaluations up to the checkpoint's step
            kept = [line for line in self.jsonl.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            atomic_write_text(self.jsonl, "".join(line + "\n" for line in kept))
        elif not step:
            self.jsonl.unlink(missing_ok=True)  # a fresh run in a used folder starts a fresh file
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("TensorBoard logging needs the tensorboard package: `pip install tensorboard`, "
                                "or turn it off with --no-tensorboard") from None
            self.writer = SummaryWriter(log_dir=str(out_dir), purge_step=step + 1 if step else None, flush_secs=30)

    def train(self, step: int, **scalars: float) -> None:
        """Per-step training figures (loss, lr, grad_norm, tokens_per_second, ...): TensorBoard only."""
        if self.writer:
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", float(value), step)

    def evaluation(self, step: int, split: str, seconds: float | None = None, **metrics: float) -> None:
        """One evaluation of `split` at `step`, `seconds` into training: a line of metrics.jsonl, and TensorBoard
        scalars under <split>/."""
        if self.jsonl is None:
            return
        line = {"step": step, "split": split} | {k: round(float(v), 6) for k, v in metrics.items()}
        if seconds is not None:
            line["seconds"] = round(seconds, 1)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if self.writer:
            for name, value in metrics.items():
                self.writer.add_scalar(f"{split}/{name}", float(value), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a checkpoint atomically (see atomic_write): a run killed mid-write keeps its previous checkpoint.

    Weights that hold NaN or inf (a run that diverged) are refused, so they never replace the last good checkpoint.
    """
    path = Path(path)
    weights = state.get("model")
    if isinstance(weights, dict) and any(torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()
                                         for t in weights.values()):
        raise UserError(f"not saving {path}: the model's weights hold NaN or inf (training diverged), so the previous "
                        f"{path.name} is kept; try a lower --lr")
    atomic_write(path, lambda f: torch.save(state, f))


# What a checkpoint holds, the same words in every stage: its "kind". A script that reads a checkpoint names the kind
# it needs, and a wrong one is a one-line error instead of a confusing shape mismatch.
KINDS = ("classifier", "language_model", "translator", "masked_lm", "lora_adapter")
# the spellings checkpoints used before KINDS: still read
_OLD_KINDS = {"sst2_classifier": "classifier", "finetune": "classifier", "pretrain": "masked_lm"}


def load_checkpoint(path: str | Path, stage: str | None = None, kind: str | None = None) -> dict:
    """Load a checkpoint safely (weights_only=True); any problem becomes a one-line UserError.

    `stage` and `kind` (one of KINDS), when given, must match what the checkpoint says it holds.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: it is corrupt or not a checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path} is not a my_llm checkpoint (no model/config inside)")
    if stage is not None and ckpt.get("stage") != stage:
        raise UserError(f"{path} was written by {ckpt.get('stage', 'an unknown stage')}, not {stage}")
    if "kind" in ckpt:
        ckpt["kind"] = _OLD_KINDS.get(ckpt["kind"], ckpt["kind"])
    if kind is not None and ckpt.get("kind", kind) != kind:  # checkpoints older than kinds are taken on trust
        what = ckpt["kind"].replace("_", " ")
        raise UserError(f"{path} holds a {what}, not a {kind.replace('_', ' ')}")
    return ckpt


def restore_training(ckpt: dict, model, optimizer, scaler, batch_gen: torch.Generator, log) -> dict:
    """Put a step-based run back where last.pt stopped it (Stages 5 and 6): weights, optimizer, loss scaler, the
    generator that draws the batches, and rank 0's random-number generators, so a one-process run resumes exactly,
    dropout included. Returns the run's saved training state."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    batch_gen.set_state(ckpt["batch_generator"])
    set_rng_state(ckpt["rng"])
    log.info(f"resumed at step {ckpt['state']['step']}")
    return ckpt["state"]


# ----------------------------------------------------------------------------- mixed precision, several processes

def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and slower than fp32.
    PyTorch has no public test for this, so the private helpers are read with a fallback of False."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def autocast_for(device: torch.device, enabled: bool, cpu_bf16: bool = False):
    """Mixed precision -> (context manager, GradScaler or None).

    On CUDA (--amp): bf16 where the GPU has it (no loss scaling needed), else fp16 with a scaler. On a CPU only when
    asked (--cpu-bf16): the matrix products run in bf16 while the weights, the optimizer and the loss stay fp32.
    Opt-in, so that the fp32 reference commands keep reproducing their numbers exactly.
    """
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return torch.autocast("cuda", dtype=dtype), scaler
    if cpu_bf16 and device.type == "cpu":
        if not cpu_has_native_bf16():
            raise UserError("--cpu-bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); leave the flag out")
        return torch.autocast("cpu", dtype=torch.bfloat16), None
    return contextlib.nullcontext(), None


# While rank 0 prepares the data (a tokenizer may train for many minutes) the other processes wait at a barrier of a
# group of their own whose timeout is long: --dist-timeout is for a training step that stopped answering.
SETUP_TIMEOUT = dt.timedelta(hours=24)
_setup_group = None


def add_dist_timeout_arg(p: argparse.ArgumentParser) -> None:
    """--dist-timeout, for the scripts torchrun starts: how long a collective waits for a silent process."""
    p.add_argument("--dist-timeout", type=positive_float, default=300.0,
                   help="under torchrun: seconds a process waits for another in a training step (an all-reduce) "
                        "before it stops with one line, when another process hangs (one that dies is noticed at "
                        "once); longer than the slowest step with its validation (default: 300)")


def setup_distributed(device_name: str, batch_size: int, accum_steps: int = 1,
                      timeout: float = 300.0) -> tuple[int, int, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE set): one process per device, gloo on CPU, nccl on GPU -> (rank, world, device).
    Every collective fails after `timeout` seconds without an answer (lost_process turns that into one line).
    Without torchrun: (0, 1, the device asked for)."""
    import torch.distributed as dist

    global _setup_group

    if "RANK" not in os.environ:
        return 0, 1, get_device(device_name)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    device = get_device(device_name)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"{world} processes on {torch.cuda.device_count()} GPU(s): start at most one per GPU "
                            f"(--nproc_per_node), or use --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=dt.timedelta(seconds=timeout))
    _setup_group = dist.new_group(backend="gloo", timeout=SETUP_TIMEOUT)
    if batch_size % (world * accum_steps):
        raise UserError(f"--batch-size {batch_size} must divide evenly over {world} processes x "
                        f"{accum_steps} accumulation steps")
    if device.type == "cpu":  # the processes share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    return rank, world, device


def end_distributed(world: int) -> None:
    """Under torchrun, at the end of a run that every process finished: wait until all have arrived, then close the
    process groups. The barrier keeps one process from tearing down its connections while another still finishes
    its last collective (a checkpoint's gather); without torchrun, nothing."""
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wait_for_rank0() -> None:
    """Under torchrun: every process waits here until rank 0 has arrived too (it prepares the data first)."""
    import torch.distributed as dist

    dist.barrier(group=_setup_group)


# ----------------------------------------------------------------------------- reference runs and result files
#
# Each stage declares the runs behind the figures it publishes once, in <stage>/reference_runs.py:
#
#     REFERENCE_RUNS = {"sst2": ["stage1_mlp/train.py", "--dataset", "sst2", "--lr", "1e-3"], ...}
#
# A run's name is the file it publishes: <stage>/results/<name>.json, with its plots beside it. Every run writes its
# result file into its own --out-dir under runs/ (never into the committed tree); when a script finishes, it asks
# reference_run_name() whether its settings are one of the declared runs, and if so the result file records that
# name and the declared command. `python scripts/publish.py <out-dir>/result.json` then copies it into
# <stage>/results/, the explicit step that changes a published figure.

STAGES = ("stage1_mlp", "stage2_rnn_lstm", "stage3_attention_seq2seq", "stage4_transformer", "stage5_gpt",
          "stage6_bert")
# Flags that say where a run reads and writes and on which device, not what it computes: they are not part of
# the configuration a reference run is matched on (and a published file never records their local values).
WHERE_FLAGS = ("out_dir", "data_dir", "result", "json", "device", "resume", "tensorboard")


def resolved_config(args: argparse.Namespace, ignore: tuple[str, ...] = ()) -> dict:
    """Every setting of a parsed command line except WHERE_FLAGS (and `ignore`): what makes the run what it is."""
    return {k: v for k, v in vars(args).items() if k not in WHERE_FLAGS and k not in ignore}


def reference_run_name(runs: dict[str, list[str]], script: str, parse_args, args: argparse.Namespace,
                       ignore: tuple[str, ...] = ()) -> str | None:
    """The name of the declared run (in `runs`, a stage's REFERENCE_RUNS) whose command `script`'s `parse_args`
    resolves to the same configuration as `args`, or None: the run is an experiment, not a reference run.

    Matching resolved settings, not text, means flag order, `--lr 0.001` for `--lr 1e-3` and a typed default all
    still count as the reference run."""
    mine = resolved_config(args, ignore)
    for name, argv in runs.items():
        if argv[0] == script and resolved_config(parse_args(list(argv[1:])), ignore) == mine:
            return name
    return None


def parse_declared(argv: list[str]) -> argparse.Namespace:
    """A declared run's flags as its own script parses them (every script in REFERENCE_RUNS exposes parse_args),
    with every default filled in: where the run writes (out_dir), which checkpoint it reads, and so on."""
    import importlib

    module = importlib.import_module(argv[0].removesuffix(".py").replace("/", "."))
    return module.parse_args(list(argv[1:]))


def portable(text: str) -> str:
    """`text` (a path or a command line) with the machine's own paths taken out: the repository's folder becomes
    relative to the repo root, the data directory named by $MY_LLM_DATA becomes "$MY_LLM_DATA" and the home folder
    "~" (the default data cache is ~/.cache/my_llm/data), so that what a result file records can be pasted on any
    machine."""
    data = os.environ.get("MY_LLM_DATA")
    if data:
        text = text.replace(str(Path(data).expanduser().resolve()), "$MY_LLM_DATA")
    text = text.replace(f"{REPO_ROOT}{os.sep}", "").replace(str(REPO_ROOT), ".")
    return text.replace(str(Path.home()), "~") if str(Path.home()) not in ("/", "") else text


def git_commit() -> str:
    """HEAD, with "-dirty" when tracked code (.py files, requirements, pyproject.toml) differs from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py",
                                "requirements*.txt", "pyproject.toml"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that reproduces this run, as typed from the repo root.

    `argv` is what main() was given (None = the process's own arguments), so a run started from a
    notebook or a test records its real flags, not the Jupyter kernel's.
    """
    return shlex.join(["python", script] + list(sys.argv[1:] if argv is None else argv))


def provenance(runs: dict[str, list[str]], script: str, parse_args, args: argparse.Namespace,
               argv: list[str] | None) -> dict:
    """What a measurement's result file records about where it came from: the declared run it is ("run", only when
    its settings resolve to one of `runs`, a stage's REFERENCE_RUNS), the command to paste (the declared one, else
    the one typed), the commit and the date. A script puts it after its own figures: result = figures | provenance."""
    run = reference_run_name(runs, script, parse_args, args)
    return ({"run": run} if run else {}) | {
        "command": portable(reference_command(runs[run]) if run else command_line(script, argv)),
        "git_commit": git_commit(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def note_command(state: dict, script: str, argv: list[str] | None = None) -> None:
    """Append this invocation's command line to state["commands"], which every checkpoint carries: a run that was
    stopped and resumed still knows the command that started it (and --resume continues that run exactly)."""
    state.setdefault("commands", []).append(command_line(script, argv))


def write_result(path: str | Path, *, stage: str, dataset: str, split: str, metrics: dict, headline: str | None,
                 train_seconds: float, device: torch.device | str, params: int, command: str | list[str],
                 run: str | None = None, declared: list[str] | None = None, extra: dict | None = None) -> dict:
    """Write a run's result file: the one schema every stage uses, and the source of every README number.

    `headline` names the entry of `metrics` that the README results table shows. None for a file of several tasks'
    figures (stage6_bert/baselines.py: metrics {task: {metric: value}}), which has no single headline: it records no
    "headline_metric", so it is a side file, not a row of that table (results_table.py, reproduce.py), and its
    figures have a table of their own. `command` is the command line, or the list note_command kept: its first entry
    is the command, the later ones (resumes) go to "resumed_with".
    `run` is the reference run this is (reference_run_name), and `declared` its flags: the file then records the
    declared command, the one to paste. Every command is recorded portable() (no absolute paths of this machine).
    """
    commands = [command] if isinstance(command, str) else list(command)
    if headline is not None and headline not in metrics:
        raise ValueError(f"headline metric {headline!r} is not among the metrics {list(metrics)}")
    if declared is not None:
        commands[0] = reference_command(declared)
    result = {"stage": stage} | ({"run": run} if run else {}) | {
        "dataset": dataset,
        "split": split,
        "metrics": metrics,
    } | ({"headline_metric": headline} if headline is not None else {}) | {
        "train_seconds": round(float(train_seconds), 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "params": int(params),
        "command": portable(commands[0]),
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(commands) > 1:
        result["resumed_with"] = [portable(c) for c in commands[1:]]
    result.update(extra or {})
    try:
        write_json(path, result)
    except OSError as e:  # the run itself is safe in its checkpoints; say where the figure could not go
        raise UserError(f"cannot write the result file {path}: {e.strerror or e}; the trained model is in the "
                        f"run's checkpoints, and the metrics were {json.dumps(metrics)}") from None
    return result


def plot_curves(path: str | Path, panels: dict[str, dict[str, tuple[list, list]]], title: str = "") -> None:
    """One subplot per panel; each panel maps a line label to (x values, y values).

    Drawn on a bare matplotlib Figure: no display is needed, and a notebook's own plotting is left alone.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
