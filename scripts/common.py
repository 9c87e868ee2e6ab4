"""The only code the stages share: device, seeding, logging, data directory, checkpoints, result files.

Everything here is plumbing that every stage needs in exactly the same form. Anything that
teaches something (models, data pipelines, training loops) lives in the stage folders instead,
so that each stage reads on its own.
"""
from __future__ import annotations

import argparse
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

REPO_ROOT = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """A problem the user can fix (bad flag, missing data, bad checkpoint).

    Scripts catch it in `run_cli` and print its message as one line, with no traceback.
    """


def run_cli(main) -> None:
    """Call `main()`: a UserError becomes a one-line message and exit code 2, Ctrl-C a quiet exit 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


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


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`.

    os.replace is atomic, so a run killed mid-write leaves the previous checkpoint intact,
    never a half-written one. Weights that hold NaN or inf (a run that diverged) are refused, so they
    never replace the last good checkpoint either.
    """
    path = Path(path)
    weights = state.get("model")
    if isinstance(weights, dict) and any(torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()
                                         for t in weights.values()):
        raise UserError(f"not saving {path}: the model's weights hold NaN or inf (training diverged), so the previous "
                        f"{path.name} is kept; try a lower --lr")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, stage: str | None = None) -> dict:
    """Load a checkpoint safely (weights_only=True); any problem becomes a one-line UserError."""
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
    return ckpt


# ----------------------------------------------------------------------------- result files

def git_commit() -> str:
    """HEAD, with "-dirty" when tracked code differs from it. Result files and READMEs (what runs and
    scripts/results_table.py write) do not count: a reference run may follow another's uncommitted result."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude,glob)stage*/results/**", ":(exclude,glob)**/README*.md"], cwd=REPO_ROOT,
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


def note_command(state: dict, script: str, argv: list[str] | None = None) -> None:
    """Append this invocation's command line to state["commands"], which every checkpoint carries: a run that was
    stopped and resumed still knows the command that started it (and --resume continues that run exactly)."""
    state.setdefault("commands", []).append(command_line(script, argv))


def write_result(path: str | Path, *, stage: str, dataset: str, split: str, metrics: dict, headline: str,
                 train_seconds: float, device: torch.device | str, params: int, command: str | list[str],
                 extra: dict | None = None) -> dict:
    """Write a run's result file: the one schema every stage uses, and the source of every README number.

    `headline` names the entry of `metrics` that the README results table shows. `command` is the command line, or
    the list note_command kept: its first entry is the command, the later ones (resumes) go to "resumed_with".
    """
    commands = [command] if isinstance(command, str) else list(command)
    if headline not in metrics:
        raise ValueError(f"headline metric {headline!r} is not among the metrics {list(metrics)}")
    result = {
        "stage": stage,
        "dataset": dataset,
        "split": split,
        "metrics": metrics,
        "headline_metric": headline,
        "train_seconds": round(float(train_seconds), 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "params": int(params),
        "command": commands[0],
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(commands) > 1:
        result["resumed_with"] = commands[1:]
    result.update(extra or {})
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
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
