"""Search a stage's hyperparameters: run its training script many times with Optuna, one trial after another.

    python scripts/sweep.py stage5_gpt/train.py --objective select.loss --sampler tpe --trials 20 \\
        --param lr=loguniform:3e-4:3e-3 --param dropout=choice:0,0.1 --pruner median \\
        -- --time-budget 5 --select-frac 0.05 --pos rope
    python scripts/sweep.py stage5_gpt/train.py --space space.json --objective select.loss -- --select-frac 0.05
    tensorboard --logdir runs/sweeps/stage5_gpt_train     # every trial's curves side by side

The script comes first, then what to search (--param NAME=DISTRIBUTION, or a --space JSON file of the same), then,
after `--`, the flags every trial gets unchanged. A trial is one ordinary run of the script, in its own process and its
own folder (runs/sweeps/<name>/trial_<n>/), so its checkpoints, log, TensorBoard curves and result file are exactly
those of a run you start by hand; the sweep only chooses flags and reads the run's metrics.jsonl, one line per
evaluation, while the run goes on. A trial's objective is the best of its evaluations (for a loss, that of the
best.pt the run keeps). Every trial keeps the script's own --seed, so trials differ by the searched flags only. A trial
whose process fails is marked failed and the sweep goes on, unless three fail in a row (then the command is wrong).

How the next trial's flags are chosen (--sampler):
- grid tries every combination of the listed values (choice:..., and int:a:b:step, whose values can be listed). It is
  exhaustive and easy to read, but the cost multiplies with each parameter (4 values of 3 parameters: 64 runs), and it
  spends most of them on the parameters that turn out not to matter. A continuous range has no list: use random/tpe.
- random draws each parameter independently. For the same number of runs it tries many more distinct values of each
  parameter than a grid does, which is why it usually beats a grid when only a few parameters matter (Bergstra &
  Bengio, 2012).
- tpe (Tree-structured Parzen Estimator) starts like random (10 trials), then models which values gave good and bad
  results so far and draws more often where the good ones were: the trials learn from each other.
A learning rate is searched on a log scale (loguniform:3e-4:3e-3): 3e-4 to 1e-3 matters as much as 1e-3 to 3e-3.

Pruning (--pruner) stops a trial that is clearly losing, to spend the time on others. After every evaluation the sweep
reports the trial's objective at that step to Optuna; median stops a trial whose best value so far is worse than the
median of the earlier trials at the same step (after --pruner-startup-trials complete trials and
--pruner-warmup-steps steps); halving (successive halving) keeps only the best fraction of trials at each of a growing
series of steps. A stopped trial gets SIGTERM: the script saves last.pt and exits, and the trial is marked pruned.
Steps must mean the same in every trial (the same --eval-interval and batch size) for the comparison to be fair.

Selection never looks at a reported split. The figure a README reports (test, dev, or val where a data set has no
test split) is only an honest estimate of how the model does on unseen text if nothing was chosen by looking at it.
Twenty trials compared on that split, and the best one kept, make its figure optimistic: the search has fitted the
split. So the objective must name a split the result file does not report: for Stage 5 on Tiny Shakespeare, which
reports val, pass --select-frac 0.05 to the trials (the last 5 % of the training text becomes a "select" split that
replaces val during training) and use --objective select.loss. The sweep refuses test and dev, a split the stage's
published results report for the same data set, and (checked again on every finished trial) the split the trial's
own result.json reports.

The study lives in SQLite, runs/sweeps/<name>/study.db. An interrupted sweep (Ctrl-C, SIGTERM, kill -9)
continues where it stopped when the same command runs again: a trial cut off mid-run is marked failed and its flags
queued to run again, so the finished trials still reach --trials (raise --trials to extend a finished sweep). Running
a different search (script, space, objective, direction, fixed flags, sampler, --quick) against the same study is an
error: choose another --name. At the end (also after Ctrl-C), a table of the trials, the best trial's command ready to
paste and the budget used are printed and written to runs/sweeps/<name>/sweep.json, with plots beside it: the
optimisation history, parameter importance (PED-ANOVA: how much each parameter decides whether a trial lands among
the best; a rough guide after few trials) and one slice per parameter. Exit code: 0, 2 for bad input, 130 after
Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/sweep.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import (REPO_ROOT, UserError, all_reference_runs, parse_declared, portable, positive_float,
                            positive_int, run_cli, write_json)

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "halving")
NEVER_SELECT_ON = ("test", "dev")  # splits only ever reported; val joins them where a script reports val
MINIMIZE = ("loss", "ppl", "perplexity", "error")  # an objective metric with one of these in its name goes down
MAXIMIZE = ("accuracy", "acc", "bleu", "f1", "mcc", "pearson", "spearman", "auc", "exact_match")
SET_BY_THE_SWEEP = ("out_dir", "data_dir", "result", "resume", "quick")  # never searched, never fixed after --
POLL_SECONDS = 0.5        # how often a running trial's metrics.jsonl is read
STOP_GRACE_SECONDS = 60   # after SIGTERM, how long a trial may take to save last.pt before it is killed
FAILS_IN_A_ROW = 3        # this many failed trials in a row stop the sweep: the command, not the luck, is wrong


class TrialFailed(Exception):
    """The trial's process failed (or ran past --timeout): the trial is marked failed and the sweep goes on."""


# ----------------------------------------------------------------------------- the search space

@dataclass
class Param:
    """One searched flag and the distribution its values come from."""
    name: str                  # the script's argument as its parser stores it: "n_embd" (flag --n-embd)
    kind: str                  # loguniform, uniform, int or choice
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1              # int only
    choices: tuple = ()        # choice only: ints, floats, strings, booleans
    false_flags: list[str] = field(default_factory=list)  # what choice False becomes: ["--no-bias"], or nothing

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def spec(self) -> str:
        """The distribution in the --param syntax, normalised: 3e-4 and 0.0003 give the same text."""
        if self.kind == "choice":
            return "choice:" + ",".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        step = f":{self.step}" if self.kind == "int" and self.step != 1 else ""
        return f"{self.kind}:{self.low}:{self.high}{step}"

    def grid(self) -> list | None:
        """Every value, where the values can be listed (choice, int); None for a continuous range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step))
        return None

    def suggest(self, trial):
        """Ask Optuna's sampler for this parameter's value in `trial`."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step)
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")

    def flags(self, value) -> list[str]:
        """The command-line words for `value`: ["--lr", "0.001"]; a boolean choice is ["--bias"] or false_flags."""
        if isinstance(value, bool):
            return [self.flag] if value else list(self.false_flags)
        return [self.flag, str(value)]


def parse_value(text: str):
    """A choice value: an int, else a float, else true/false, else the text itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_distribution(name: str, spec) -> Param:
    """"loguniform:a:b", "uniform:a:b", "int:a:b[:step]", "choice:v1,v2,..." (or a JSON list) -> a Param."""
    name = name.strip().lstrip("-").replace("-", "_")
    where = f"--param {name}={spec}"
    if isinstance(spec, list):  # a --space file may list the choices
        spec = "choice:" + ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in spec)
    if not name or not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"{where}: expected NAME=KIND:..., with KIND one of loguniform:a:b, uniform:a:b, "
                        f"int:a:b[:step], choice:v1,v2,...")
    kind, _, rest = spec.partition(":")
    if kind == "choice":
        choices = tuple(parse_value(v.strip()) for v in rest.split(",") if v.strip())
        if len(choices) < 2 or len({repr(c) for c in choices}) < len(choices):
            raise UserError(f"{where}: a choice needs two different values or more (a single value is a fixed "
                            f"flag: put it after --)")
        return Param(name, "choice", choices=choices)
    parts = rest.split(":")
    if kind in ("loguniform", "uniform"):
        if len(parts) != 2:
            raise UserError(f"{where}: expected {kind}:LOW:HIGH")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise UserError(f"{where}: {parts[0]!r} and {parts[1]!r} must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise UserError(f"{where}: LOW must be below HIGH (got {low} and {high})")
        if kind == "loguniform" and low <= 0:
            raise UserError(f"{where}: a log scale needs LOW > 0 (got {low}); use uniform for a range from 0")
        return Param(name, kind, low, high)
    if kind == "int":
        if len(parts) not in (2, 3):
            raise UserError(f"{where}: expected int:LOW:HIGH or int:LOW:HIGH:STEP")
        try:
            low, high, step = int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        except ValueError:
            raise UserError(f"{where}: LOW, HIGH and STEP must be whole numbers") from None
        if low >= high or step <= 0 or (high - low) % step:
            raise UserError(f"{where}: need LOW < HIGH, STEP > 0 and HIGH - LOW a multiple of STEP")
        return Param(name, "int", low, high, step)
    raise UserError(f"{where}: unknown distribution {kind!r}; use loguniform, uniform, int or choice")


def read_space(space_file: str | None, param_args: list[str]) -> dict[str, Param]:
    """The search space: the --space JSON file, then each --param (which replaces the file's entry of that name)."""
    space: dict[str, Param] = {}
    if space_file:
        try:
            entries = json.loads(Path(space_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--space {space_file}: no such file") from None
        except json.JSONDecodeError as e:
            raise UserError(f"--space {space_file}: not JSON ({e})") from None
        if not isinstance(entries, dict):
            raise UserError(f'--space {space_file}: expected an object such as {{"lr": "loguniform:1e-4:3e-3"}}')
        for name, spec in entries.items():
            p = parse_distribution(name, spec)
            space[p.name] = p
    seen = set()
    for text in param_args:
        name, eq, spec = text.partition("=")
        if not eq:
            raise UserError(f"--param {text}: expected NAME=DISTRIBUTION, e.g. lr=loguniform:3e-4:3e-3")
        p = parse_distribution(name, spec)
        if p.name in seen:
            raise UserError(f"--param {p.name} is given twice")
        seen.add(p.name)
        space[p.name] = p
    if not space:
        raise UserError("nothing to search: give --param NAME=DISTRIBUTION (or --space FILE.json)")
    return space


# ----------------------------------------------------------------------------- the script and its parser

def resolve_script(text: str) -> str:
    """The training script as a path from the repo root ("stage5_gpt/train.py"), which is how it is imported."""
    path = Path(text).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not path.is_file() and (REPO_ROOT / text).is_file():
        path = (REPO_ROOT / text).resolve()
    if not path.is_file():
        raise UserError(f"script not found: {text} (give a training script such as stage5_gpt/train.py)")
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        raise UserError(f"{text} is outside the repository {REPO_ROOT}; the sweep runs the course's own "
                        f"scripts") from None


def try_parse(script: str, argv: list[str], what: str) -> argparse.Namespace:
    """`script`'s own parse_args on `argv`; its argparse error (printed, then SystemExit) becomes one UserError line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse_declared([script, *argv])
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if "error:" in line] or ["(no message)"]
        raise UserError(f"{what}: {script} refuses it: {lines[-1].split('error:', 1)[1].strip()}") from None
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot read the flags of {script}: {e} (a training script exposes parse_args)") from None


def check_flags(script: str, space: dict[str, Param], fixed: list[str], extra: list[str]) -> argparse.Namespace:
    """Every searched name is one of the script's flags, and the script's own parser accepts the fixed flags with
    each end of every range (every choice): an unknown flag or a refused value stops the sweep before any trial."""
    for flag in ("--out-dir", "--result", "--resume", "--data-dir", "--quick"):
        if any(a == flag or a.startswith(flag + "=") for a in fixed):
            raise UserError(f"{flag} after --: " + ("give it to the sweep, before --, which passes it to every trial"
                                                    if flag in ("--data-dir", "--quick") else
                                                    "the sweep gives every trial its own folder, trial_<n>/"))
    ns = try_parse(script, [*fixed, *extra], "the fixed flags after --")
    if "out_dir" not in vars(ns):
        raise UserError(f"{script} has no --out-dir flag: the sweep runs training scripts, which all have one")
    for p in space.values():
        if p.name not in vars(ns):
            raise UserError(f"--param {p.name}: {script} has no flag {p.flag} (see `python {script} --help`)")
        if p.name in SET_BY_THE_SWEEP:
            raise UserError(f"--param {p.name}: the sweep sets {p.flag} itself; it cannot be searched")
        if any(a == p.flag or a.startswith(p.flag + "=") for a in fixed):
            raise UserError(f"{p.flag} is both searched (--param) and fixed (after --): keep one")
        if p.kind == "choice" and any(isinstance(c, bool) for c in p.choices):
            if not all(isinstance(c, bool) for c in p.choices):
                raise UserError(f"--param {p.name}: mix of true/false and other values")
            with contextlib.suppress(UserError):  # --[no-]bias has a --no- form; a store_true flag is left out
                try_parse(script, [*fixed, *extra, "--no-" + p.flag[2:]], "")
                p.false_flags = ["--no-" + p.flag[2:]]
        for value in p.grid() if p.kind == "choice" else (p.low, p.high):
            try_parse(script, [*fixed, *extra, *p.flags(value)], f"--param {p.name}={p.spec()} ({p.flag} {value})")
    return ns


def parse_objective(text: str, direction: str | None) -> tuple[str, str, str]:
    """"select.loss" -> ("select", "loss", direction), the direction inferred from the metric's name if not given."""
    split, dot, metric = text.partition(".")
    if not (split and dot and metric):
        raise UserError(f"--objective {text}: expected SPLIT.METRIC as metrics.jsonl has them, e.g. select.loss")
    if direction is None:
        words = metric.lower().split("_")
        if any(w in MINIMIZE for w in words):
            direction = "minimize"
        elif any(w in MAXIMIZE for w in words):
            direction = "maximize"
        else:
            raise UserError(f"--objective {text}: say whether {metric!r} should go up or down (--direction maximize "
                            f"or minimize)")
    return split, metric, direction


def select_frac_hint(script: str, ns: argparse.Namespace, metric: str) -> str:
    if "select_frac" in vars(ns):
        return (f"hold out a selection split with --select-frac 0.05 (after --) and use --objective "
                f"select.{metric}")
    return f"{script} has no --select-frac yet to hold out a selection split from the training data"


def refuse_reported_split(split: str, metric: str, script: str, ns: argparse.Namespace) -> None:
    """Before any trial: an objective on test or dev, or on a split the stage's published result files report for the
    same data set (the script's reference runs), is refused. Each finished trial's result.json is checked again."""
    if split in NEVER_SELECT_ON:
        raise UserError(f"--objective {split}.{metric}: {split} is a split the course reports; selection must never "
                        f"look at it ({select_frac_hint(script, ns, metric)})")
    if split == "select" and getattr(ns, "select_frac", None) == 0:
        raise UserError(f"--objective {split}.{metric}: the trials hold out no select split; add --select-frac 0.05 "
                        f"after --")
    for key, argv in all_reference_runs().items():
        path = REPO_ROOT / key
        if argv[0] != script or not path.is_file():
            continue
        if getattr(parse_declared(argv), "dataset", None) != getattr(ns, "dataset", None):
            continue
        if json.loads(path.read_text(encoding="utf-8")).get("split") == split:
            raise UserError(f"--objective {split}.{metric}: {script} reports the {split} split ({key}), and selection "
                            f"must never look at a reported split; {select_frac_hint(script, ns, metric)}")


# ----------------------------------------------------------------------------- the study

def is_counted(t) -> bool:
    """Finished trials count towards --trials; a trial cut off by Ctrl-C or kill -9 does not (it runs again)."""
    import optuna
    return t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or \
        (t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs)


def open_study(folder: Path, name: str, search: dict, make_sampler, pruner):
    """Create the study in <folder>/study.db, or load it to continue. A study of a different search is refused;
    trials left RUNNING by a killed sweep are marked failed and their flags queued to run again."""
    import optuna
    from optuna.trial import TrialState

    db = folder / "study.db"
    storage = f"sqlite:///{db}"
    names = optuna.get_all_study_names(storage)
    n_before = 0
    if names and name not in names:
        raise UserError(f"{db} holds the study {names[0]!r}, not {name!r}: use --name {names[0]}, or another --out-dir")
    if name in names:
        # a plain sampler for the repairs: telling a grid study its last point failed would ask it to stop
        old = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        stored = old.user_attrs.get("search")
        if stored is None and not old.trials:  # created by a sweep that stopped before it wrote its search
            old.set_user_attr("search", stored := search)
        if stored != search:
            differ = [k for k in search if (stored or {}).get(k) != search[k]]
            raise UserError(f"{db} holds a different search (its {', '.join(differ)} differ"
                            + (f": {stored[differ[0]]!r} there, {search[differ[0]]!r} here" if stored else "")
                            + f"); start a new study with --name, or delete {folder} to start over")
        for t in old.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            old.tell(t.number, state=TrialState.FAIL)
            if t.params:
                old.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            print(f"trial {t.number} was cut off by the last sweep: marked failed, its flags queued to run again")
        n_before = len(old.trials)
    # seeded by the trial count, so that a continued random or TPE search does not draw the first trials again
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(n_before), pruner=pruner,
                                direction=search["direction"], load_if_exists=True)
    if not n_before and "search" not in study.user_attrs:
        study.set_user_attr("search", search)
    return study


def make_sampler(kind: str, space: dict[str, Param], seed: int):
    """-> a function of the trial count so far that builds the sampler (see open_study)."""
    import optuna

    if kind == "grid":
        continuous = [p.name for p in space.values() if p.grid() is None]
        if continuous:
            raise UserError(f"--sampler grid needs values it can list, but {', '.join(continuous)} "
                            f"{'is' if len(continuous) == 1 else 'are'} continuous; use choice:... or int:a:b:step, "
                            f"or --sampler random / tpe")
        return lambda n: optuna.samplers.GridSampler({p.name: p.grid() for p in space.values()}, seed=seed + n)
    if kind == "random":
        return lambda n: optuna.samplers.RandomSampler(seed=seed + n)
    return lambda n: optuna.samplers.TPESampler(seed=seed + n)


def make_pruner(kind: str, startup_trials: int, warmup_steps: int):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------- one trial

@dataclass
class Sweep:
    """What every trial needs: the script, the space, the fixed flags and the objective."""
    script: str
    space: dict[str, Param]
    fixed: list[str]          # after --, as typed
    extra: list[str]          # --data-dir and --quick, when the sweep was given them
    split: str
    metric: str
    direction: str
    folder: Path              # runs/sweeps/<name>
    timeout: float | None
    hint: str                 # what to do when the objective is on a reported split

    def command(self, params: dict, out_dir: Path | None = None) -> list[str]:
        """[script, searched flags, fixed flags, --data-dir/--quick, --out-dir] for a trial with `params`."""
        searched = [w for name, p in self.space.items() if name in params for w in p.flags(params[name])]
        where = ["--out-dir", shown(out_dir)] if out_dir else []
        return [self.script, *searched, *self.fixed, *self.extra, *where]

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def shown(path: Path) -> str:
    """A path as a command from the repo root would write it: relative inside the repo (also when runs/ is a link to
    a folder elsewhere), absolute outside."""
    for candidate in (path.absolute(), path.resolve()):
        try:
            return candidate.relative_to(REPO_ROOT).as_posix()
        except ValueError:
            pass
    return str(path)


def new_evaluations(path: Path, seen: int) -> tuple[list[dict], int]:
    """The whole lines of metrics.jsonl after the first `seen` (a line still being written waits for the next read)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    except FileNotFoundError:
        return [], seen
    return [json.loads(line) for line in lines[seen:] if line.strip()], len(lines)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Ask a trial to stop (a training script saves last.pt and exits on SIGTERM or SIGINT); kill it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    | " + line for line in lines[-n:])


def failed(trial, why: str, log: Path) -> TrialFailed:
    trial.set_user_attr("error", why)
    print(f"trial {trial.number} failed: {why}\n{tail(log)}", flush=True)
    return TrialFailed(why)


def run_trial(trial, sw: Sweep) -> float:
    """The objective: run the script with this trial's flags, report each new evaluation of the objective's split to
    Optuna while it runs, stop it if Optuna prunes it; -> the best value of its evaluations (for a loss, that of the
    checkpoint the run keeps)."""
    import optuna

    params = {name: p.suggest(trial) for name, p in sw.space.items()}
    out_dir = sw.folder / f"trial_{trial.number}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a trial folder left by an older study of this name
    out_dir.mkdir(parents=True)
    cmd = sw.command(params, out_dir)
    trial.set_user_attr("command", portable(shlex.join(["python", *cmd])))
    trial.set_user_attr("out_dir", portable(str(out_dir)))
    log = out_dir / "output.log"
    print(f"\ntrial {trial.number}: {show_params(params)}  (output: {shown(log)})", flush=True)
    objective, values, seen, ended_by, t0 = f"{sw.split}.{sw.metric}", [], 0, None, time.monotonic()
    with open(log, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            while ended_by is None:
                done = proc.poll() is not None  # read the file once more after the process ends: its last lines
                lines, seen = new_evaluations(out_dir / "metrics.jsonl", seen)
                for line in (x for x in lines if x.get("split") == sw.split):
                    if sw.metric not in line:
                        keys = ", ".join(k for k in line if k not in ("step", "split", "seconds"))
                        raise UserError(f"--objective {objective}: the {sw.split} evaluations in "
                                        f"{shown(out_dir / 'metrics.jsonl')} have no {sw.metric!r} (they have: {keys})")
                    values.append(float(line[sw.metric]))
                    trial.report(values[-1], line["step"])
                    best = min(values) if sw.direction == "minimize" else max(values)
                    print(f"trial {trial.number} | step {line['step']} | {objective} {values[-1]:.4f} | best "
                          f"{best:.4f}", flush=True)
                    if trial.should_prune():
                        ended_by = f"pruned at step {line['step']}"
                        break
                if ended_by is None and done:
                    ended_by = "done"
                elif ended_by is None and sw.timeout and time.monotonic() - t0 > sw.timeout:
                    ended_by = "timeout"
                elif ended_by is None:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # Ctrl-C: the trial saves last.pt and stops; a continued sweep runs it again
            stop(proc, signal.SIGINT)
            trial.set_user_attr("interrupted", True)
            trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            raise
        finally:
            stop(proc)  # pruned, timed out, or an error of ours: SIGTERM, and a kill if it does not stop
    seconds = time.monotonic() - t0
    if ended_by.startswith("pruned"):
        print(f"trial {trial.number} {ended_by} after {seconds:.0f} s: {objective} {values[-1]:.4f}", flush=True)
        raise optuna.TrialPruned()
    if ended_by == "timeout":
        raise failed(trial, f"it ran past --timeout {sw.timeout:g} s and was stopped", log)
    if proc.returncode != 0:
        last = next((line for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "")
        raise failed(trial, f"exit code {proc.returncode}: {last.strip()[:200]}", log)
    if not values:
        splits = sorted({x.get("split") for x in new_evaluations(out_dir / "metrics.jsonl", 0)[0]})
        raise UserError(f"--objective {objective}: trial {trial.number} logged no {sw.split} evaluations in "
                        f"{shown(out_dir / 'metrics.jsonl')} (its splits: {', '.join(map(str, splits)) or 'none'})"
                        + (f"; {sw.hint}" if sw.split == "select" else ""))
    result = out_dir / "result.json"
    if not result.is_file():
        raise failed(trial, f"it finished but wrote no {shown(result)}", log)
    reported = json.loads(result.read_text(encoding="utf-8")).get("split")
    if reported == sw.split:
        raise UserError(f"--objective {objective}: {sw.script} reports the {reported} split (trial {trial.number}'s "
                        f"result.json), and selection must never look at a reported split; {sw.hint}")
    if "reported_split" not in trial.study.user_attrs:
        trial.study.set_user_attr("reported_split", reported)
    value = min(values) if sw.direction == "minimize" else max(values)
    print(f"trial {trial.number} complete in {seconds:.0f} s: best {objective} {value:.4f}", flush=True)
    return value


# ----------------------------------------------------------------------------- the report

def show_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def state_of(t) -> str:
    """complete, pruned, failed (the run failed), interrupted (cut off; queued again), running or queued."""
    name = t.state.name
    if name == "FAIL":
        return "failed" if "error" in t.user_attrs else "interrupted"
    return {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "queued"}[name]


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        params = t.params or t.system_attrs.get("fixed_params", {})  # a queued trial: the flags it will run with
        rows.append({"number": t.number, "state": state_of(t), "params": params,
                     "objective": t.value if t.state.name == "COMPLETE" else None,
                     "last_reported": last, "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     "out_dir": t.user_attrs.get("out_dir"), "error": t.user_attrs.get("error"),
                     "retry_of": t.user_attrs.get("retry_of")})
    return rows


def print_table(rows: list[dict], objective: str) -> None:
    header = ["trial", "state", objective, "seconds", "params"]
    lines = []
    for r in rows:
        value = f"{r['objective']:.4f}" if r["objective"] is not None else \
            f"({r['last_reported']:.4f} @ {r['last_step']})" if r["state"] == "pruned" and r["last_reported"] else ""
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else ""
        lines.append([str(r["number"]), r["state"], value, seconds, show_params(r["params"])])
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    for cells in [header, *lines]:
        padded = [c.rjust(w) if i in (0, 2, 3) else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        print("  ".join(padded).rstrip())


def figure(size=(6, 3.8)):
    from matplotlib.figure import Figure  # a bare Figure: no display needed
    fig = Figure(figsize=size)
    return fig, fig.subplots()


def plot_history(path: Path, rows: list[dict], sw: Sweep) -> None:
    """The objective of each trial in order, the best so far, and the pruned trials at their last reported value."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = figure()
    done = [r for r in rows if r["objective"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_reported"] is not None]
    ax.plot([r["number"] for r in done], [r["objective"] for r in done], "o", label="complete trial")
    if pruned:
        ax.plot([r["number"] for r in pruned], [r["last_reported"] for r in pruned], "x", color="grey",
                label="pruned (last reported value)")
    best, xs, ys = None, [], []
    for r in done:
        best = r["objective"] if best is None or sw.better(r["objective"], best) else best
        xs.append(r["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{sw.split}.{sw.metric} ({sw.direction})")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{sw.script}: optimisation history")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def param_importance(study, sw: Sweep) -> tuple[dict | None, str]:
    """How much each parameter decides whether a trial lands among the best (PED-ANOVA: it compares the spread of
    each parameter's values in the best trials with that in all of them; it needs no extra package and suits few
    trials), or None and why not."""
    import optuna

    n = sum(t.state.name == "COMPLETE" for t in study.trials)
    if len(sw.space) < 2:
        return None, "skipped: one parameter, nothing to compare it with"
    if n < 2:
        return None, f"skipped: {n} complete trial{'s' * (n != 1)}, 2 at least are needed"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ImportError, RuntimeError, ValueError, ZeroDivisionError) as e:
        return None, f"not computed: {e}"
    return ({k: round(float(v), 4) for k, v in imp.items()},
            f"PED-ANOVA over {n} complete trials" + (" (few trials: a rough guide)" if n < 10 else ""))


def plot_importance(path: Path, importance: dict, note: str) -> None:
    fig, ax = figure((6, 1.2 + 0.5 * len(importance)))
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(note)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_slice(path: Path, p: Param, rows: list[dict], sw: Sweep) -> None:
    """The objective against one parameter's value, every complete trial a point (a log axis for loguniform)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = figure((5, 3.6))
    done = [r for r in rows if r["objective"] is not None and p.name in r["params"]]
    xs = [r["params"][p.name] for r in done]
    if p.kind == "choice":  # categories, in the order the choice lists them
        labels = [str(c) for c in p.choices]
        xs = [labels.index(str(x)) for x in xs]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    elif p.kind == "loguniform":  # the whole range searched, on a log axis: one sees where the trials went
        ax.set_xscale("log")
        ax.set_xlim(p.low / 1.1, p.high * 1.1)
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(p.low - 0.05 * (p.high - p.low), p.high + 0.05 * (p.high - p.low))
    ax.scatter(xs, [r["objective"] for r in done], c=[r["number"] for r in done], cmap="viridis")
    ax.set_xlabel(f"{p.flag} ({p.spec()})")
    ax.set_ylabel(f"{sw.split}.{sw.metric}")
    ax.set_title("colour: trial number (later = lighter)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def trial_commits(rows: list[dict]) -> list[str]:
    """The git commits the trials' runs recorded in their result files (one, when the sweep ran on one version of the
    code): what the sweep measured, whatever version of sweep.py wrote the summary."""
    commits = set()
    for r in rows:
        path = REPO_ROOT / (r["out_dir"] or "-") / "result.json"   # a queued trial has no folder yet
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            commits.add(json.loads(path.read_text(encoding="utf-8")).get("git_commit"))
    return sorted(c for c in commits if c)


def report(study, sw: Sweep, search: dict, wall: float, command: str) -> dict:
    """Print the table, the best command and the budget; write sweep.json and the plots. -> what sweep.json holds.
    `command` is the sweep's own command line, recorded so that anyone can run the same search again."""
    rows = trial_rows(study)
    objective = f"{sw.split}.{sw.metric}"
    print()
    print_table(rows, objective)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = None
    if complete:
        t = study.best_trial
        best = {"number": t.number, "objective": t.value, "params": t.params,
                "command": portable(shlex.join(["python", *sw.command(t.params)])), "out_dir": t.user_attrs["out_dir"]}
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    trial_seconds = round(sum(r["seconds"] or 0 for r in rows), 1)
    starts = [t.datetime_start for t in study.trials if t.datetime_start]
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete]
    study_wall = round((max(ends) - min(starts)).total_seconds(), 1) if starts and ends else None
    plots = {"history": "history.png"}
    plot_history(sw.folder / "history.png", rows, sw)
    importance, note = param_importance(study, sw)
    if importance:
        plots["importance"] = "importance.png"
        plot_importance(sw.folder / "importance.png", importance, note)
    for p in sw.space.values():
        plots[f"slice_{p.name}"] = f"slice_{p.name}.png"
        plot_slice(sw.folder / f"slice_{p.name}.png", p, rows, sw)
    summary = {"written_by": "python scripts/sweep.py", "command": portable(command), "git_commit": trial_commits(rows),
               "date": max(ends).astimezone().isoformat(timespec="seconds") if ends else None,
               "study": shown(sw.folder / "study.db"), "study_name": study.study_name, "search": search,
               "reported_split": study.user_attrs.get("reported_split"), "best": best,
               "budget": {"trials": counts, "trial_seconds": trial_seconds, "this_run_seconds": round(wall, 1),
                          "first_trial_start_to_last_end_seconds": study_wall},
               "importance": importance, "importance_note": note, "plots": plots, "trials": rows}
    write_json(sw.folder / "sweep.json", summary)
    print(f"\ntrials: {', '.join(f'{n} {s}' for s, n in counts.items())}; {trial_seconds / 60:.1f} min in trials "
          f"(this run: {wall / 60:.1f} min)")
    print("parameter importance: " + (", ".join(f"{k} {v:.2f}" for k, v in importance.items()) + f" ({note})"
                                       if importance else note))
    if best:
        print(f"best: trial {best['number']}, {objective} {best['objective']:.4f}, {show_params(best['params'])}\n"
              f"  its run: {best['out_dir']}\n  to train it again: {best['command']}")
    print(f"table, plots: {shown(sw.folder)}/sweep.json, *.png; curves: tensorboard --logdir {shown(sw.folder)}")
    return summary


# ----------------------------------------------------------------------------- the command line

EPILOG = """distributions (--param NAME=DIST, or {"NAME": "DIST"} in a --space JSON file; NAME is the script's flag,
lr for --lr, n_embd or n-embd for --n-embd):
  loguniform:3e-4:3e-3   a float drawn on a log scale (learning rates, weight decay)
  uniform:0:0.2          a float drawn evenly
  int:2:6  int:64:256:64 a whole number, optionally on a step
  choice:0,0.1,0.2       one of the values (numbers, words, true/false for an on/off flag)

examples:
  python scripts/sweep.py stage5_gpt/train.py --objective select.loss --sampler tpe --trials 20 \\
      --param lr=loguniform:3e-4:3e-3 --param dropout=choice:0,0.1 --pruner median \\
      -- --time-budget 5 --select-frac 0.05 --pos rope
  python scripts/sweep.py stage5_gpt/train.py --sampler grid --param n_layer=int:2:6:2 \\
      --param pos=choice:learned,rope --objective select.loss -- --select-frac 0.05 --time-budget 5

how it runs:
  Each trial is `python SCRIPT <searched flags> <fixed flags> --out-dir <DIR>/trial_<n>`, one at a time. The sweep
  reads the trial's metrics.jsonl while it runs; with a pruner, a trial whose objective so far is worse than the
  earlier trials' at the same step gets SIGTERM (it saves last.pt and stops) and is marked pruned. A trial that fails
  is marked failed and the sweep goes on (3 failures in a row stop it).
selection never looks at a reported split:
  the objective is refused when its split is test or dev, one that the stage's published results report for the
  same data set, or the one a trial's result.json reports. Where a script reports val (Stage 5 on Tiny Shakespeare),
  pass --select-frac 0.05 after -- and use --objective select.loss.
outputs and resuming:
  <DIR>/study.db (Optuna, SQLite), trial_<n>/ (each run's own folder), sweep.json (the trials, the best trial's
  command to paste, the budget used) and history.png, importance.png, slice_<param>.png. Running the same command
  again continues an interrupted sweep (Ctrl-C, kill -9): cut-off trials run again. A different search on the same
  study is refused: choose another --name. Exit code 0, 2 for bad input, 130 after Ctrl-C.
The docstring of scripts/sweep.py explains grid vs random vs TPE, pruning, and why the reported split is off-limits."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags, and the fixed flags after `--` (passed to every trial as they are)."""
    fixed = []
    if "--" in argv:
        i = argv.index("--")
        argv, fixed = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="scripts/sweep.py", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s SCRIPT --objective SPLIT.METRIC --param NAME=DIST ... [options] "
                                      "[-- FIXED FLAGS]",
                                description="Search a training script's hyperparameters with Optuna: each trial is "
                                            "one run of the script, with the searched flags, then the fixed flags "
                                            "given after --.")
    p.add_argument("script", help="the training script, from the repo root: stage5_gpt/train.py")
    p.add_argument("--param", action="append", default=[], metavar="NAME=DIST",
                   help="a flag to search and its distribution (below); repeatable")
    p.add_argument("--space", metavar="FILE.json", help='the search space as JSON: {"lr": "loguniform:1e-4:3e-3", '
                                                        '"dropout": [0, 0.1]}; --param adds to it or replaces entries')
    p.add_argument("--objective", required=True, metavar="SPLIT.METRIC",
                   help="what to optimise, as the trials' metrics.jsonl has it: select.loss, select.accuracy. The "
                        "best value over a trial's evaluations counts. Never a split the course reports (test, dev, "
                        "or val where the result file reports val: use --select-frac)")
    p.add_argument("--direction", choices=["minimize", "maximize"], default=None,
                   help="default: minimize a loss or perplexity, maximize accuracy, bleu, f1, mcc, ...")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="grid: every combination of listed values; random; tpe: learns from earlier trials "
                        "(default: %(default)s)")
    p.add_argument("--trials", type=positive_int, default=None, metavar="N",
                   help="finished trials to reach, counting those of an interrupted sweep (default: 20; grid: the "
                        "whole grid, and never more)")
    p.add_argument("--pruner", choices=PRUNERS, default="none",
                   help="stop losing trials early: median, halving (successive halving) or none (default)")
    p.add_argument("--pruner-startup-trials", type=int, default=5, metavar="N",
                   help="median: prune nothing until this many trials have completed (default: %(default)s)")
    p.add_argument("--pruner-warmup-steps", type=int, default=0, metavar="STEP",
                   help="median: never prune a trial before this step (default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="seconds a trial may run before it is stopped and marked failed (default: no limit; the "
                        "scripts' own --time-budget is the way to give every trial the same training time)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seeds the sampler; the trials keep the script's own --seed")
    p.add_argument("--name", default=None, help="the study's name (default: from the script, stage5_gpt_train)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="folder of the study (study.db), the trials (trial_<n>/), sweep.json and the plots "
                        "(default: runs/sweeps/<name>)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="passed to every trial")
    p.add_argument("--quick", action="store_true", help="pass --quick to every trial: tiny runs, for CI")
    return p.parse_args(argv), fixed


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, fixed = parse_args(argv)
    command = shlex.join(["python", "scripts/sweep.py", *argv])
    script = resolve_script(args.script)
    name = args.name or f"{Path(script).parent.name}_{Path(script).stem}"
    folder = Path(args.out_dir).expanduser().resolve() if args.out_dir else REPO_ROOT / "runs" / "sweeps" / name
    space = read_space(args.space, args.param)
    split, metric, direction = parse_objective(args.objective, args.direction)
    extra = (["--data-dir", str(Path(args.data_dir).expanduser().resolve())] if args.data_dir else []) \
        + (["--quick"] if args.quick else [])

    # ---- everything that can be wrong is found before the first trial starts
    ns = check_flags(script, space, fixed, extra)
    refuse_reported_split(split, metric, script, ns)
    sampler = make_sampler(args.sampler, space, args.seed)
    n_trials = args.trials or 20
    if args.sampler == "grid":
        size = math.prod(len(p.grid()) for p in space.values())
        if args.trials and args.trials > size:
            print(f"--trials {args.trials}: the grid has {size} points, so {size} trials")
        n_trials = min(args.trials or size, size)
    search = {"script": script, "space": {n: p.spec() for n, p in space.items()}, "objective": f"{split}.{metric}",
              "direction": direction, "fixed": fixed, "sampler": args.sampler, "quick": args.quick}
    sw = Sweep(script, space, fixed, extra, split, metric, direction, folder, args.timeout,
               select_frac_hint(script, ns, metric))

    # ---- the study: created, or loaded to continue (one sweep at a time per study)
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own lines, failures included
    folder.mkdir(parents=True, exist_ok=True)
    with hold_lock(folder):  # released however main() ends
        study = open_study(folder, name, search, sampler,
                           make_pruner(args.pruner, args.pruner_startup_trials, args.pruner_warmup_steps))
        done = sum(map(is_counted, study.trials))
        print(f"study {name} ({shown(folder / 'study.db')}): {done} of {n_trials} trials done; objective "
              f"{split}.{metric} ({direction}), sampler {args.sampler}, pruner {args.pruner}")

        # ---- the trials, one at a time; SIGTERM is handled like Ctrl-C: the running trial stops cleanly
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        t0, ran, in_a_row = time.monotonic(), [], 0
        try:
            while done < n_trials:
                study.optimize(lambda trial: run_trial(trial, sw), n_trials=1, catch=(TrialFailed,),
                               callbacks=[lambda study, trial: ran.append(trial)])
                in_a_row = in_a_row + 1 if ran[-1].state.name == "FAIL" else 0
                if in_a_row >= FAILS_IN_A_ROW:
                    raise UserError(f"{in_a_row} trials in a row failed, the last (trial {ran[-1].number}) with: "
                                    f"{ran[-1].user_attrs.get('error')}; see its output.log")
                done = sum(map(is_counted, study.trials))
        except UserError as e:
            if not any(map(is_counted, study.trials)):  # a wrong objective: let the corrected command start afresh
                optuna.delete_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")
                raise UserError(f"{e} (the study, which had no finished trial, was removed)") from None
            report(study, sw, search, time.monotonic() - t0, command)
            raise
        except KeyboardInterrupt:
            report(study, sw, search, time.monotonic() - t0, command)
            print("\ninterrupted: run the same command again to continue the sweep", file=sys.stderr)
            raise
        report(study, sw, search, time.monotonic() - t0, command)


def hold_lock(folder: Path):
    """An exclusive lock on <folder>/sweep.lock for as long as this sweep runs (the system drops it when the process
    dies, even by kill -9): two sweeps on one study would each take the other's running trials for cut-off ones."""
    f = open(folder / "sweep.lock", "w")
    try:
        import fcntl
    except ImportError:  # Windows: no lock; run one sweep per study at a time
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError(f"another sweep is running on {shown(folder)}; wait for it, or use another --name") from None
    return f


if __name__ == "__main__":
    run_cli(main)
