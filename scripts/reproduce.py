"""Re-run the reference runs behind the README's numbers, exactly as their stages declare them, and put each new
figure next to the published one.

    python scripts/reproduce.py --all --dry-run            # the plan: every command, in order, and its recorded time
    python scripts/reproduce.py --stage 1                  # re-run Stage 1's reference runs (about 2 minutes)
    python scripts/reproduce.py --stage 6 --only glue_rte  # one result file (and the pre-training it reads)
    python scripts/reproduce.py --stage 1 --quick          # --quick on every command: a smoke test of the pipeline

Each stage declares its reference runs once, in <stage>/reference_runs.py: the name of the published file
(<stage>/results/<name>.json) and the command that writes it, the same command the file records. This script runs
those commands one after the other, with the same Python, from the repo root. A training script scores its best
checkpoint on the test (or dev) split itself and writes that figure into its result file, so the declared commands
are the whole reproduction; evaluate.py is not run separately.

Only where the outputs go changes: --result and --out-dir point into runs/reproduce/<stage>/ (replaced where the
declared command would use its defaults), so the committed result files and your own checkpoints under runs/<stage>/
are never touched. A run that reads another run's checkpoint (a GLUE fine-tune reads the pre-training's best.pt, its
--checkpoint default) runs after that run and reads the new checkpoint. To publish a reproduced figure, see
scripts/publish.py.

Running is the default, because that is what the script is for and it cannot overwrite anything but its own earlier
output; the plan (with the time the recorded runs took) is printed first, so an unexpected one can be stopped with
Ctrl-C. --dry-run prints the plan and stops.

Side files, the result files without a headline metric (benchmark speeds, tokenizer figures), are listed and not
re-run: they measure a machine's speed or a tokenizer, not a trained model.

At the end a table shows, per result file: the headline metric recorded and new, the difference, and both training
times; it also goes to runs/reproduce/summary.json (which keeps the latest reproduction of every result file). Each
run's output is in runs/reproduce/<stage>/<name>.log. New numbers differ from recorded ones when the hardware, a time
budget (--time-budget stops training after N minutes, however far it got) or the code since the recorded commit
differ; the table says which, and the exit code is still 0. It is 1 when a run failed, 2 for a bad flag, 130 after
Ctrl-C.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/reproduce.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import (REPO_ROOT, UserError, all_reference_runs, parse_declared, reference_command,
                            resolve_data_dir, run_cli, write_json)

@dataclass
class Run:
    """One declared reference run, its published result file, and how reproduce.py writes it again."""
    result: str                   # the published file, relative to the repo root: "stage1_mlp/results/imdb.json"
    recorded: dict                # its contents
    argv: list[str] = field(default_factory=list)  # the declared command: [script, *flags]
    after: str | None = None      # the result file of the run whose checkpoint this one reads (it runs first)
    needs: str | None = None      # a checkpoint that no declared run writes: it must exist before this run starts
    commands: list[list[str]] = field(default_factory=list)  # [script, *args] for each command, outputs redirected
    new_result: Path | None = None  # runs/reproduce/<stage>/<name>.json
    out_dir: Path | None = None     # runs/reproduce/<stage>/<name>/: checkpoints, vocabulary, the run's own log
    log: Path | None = None         # runs/reproduce/<stage>/<name>.log: everything the commands printed

    @property
    def stage(self) -> str:
        return self.result.split("/")[0]

    @property
    def name(self) -> str:
        return Path(self.result).stem


# ----------------------------------------------------------------------------- reading the declarations

def load_runs(root: Path) -> tuple[dict[str, Run], dict[str, str]]:
    """Every declared run whose published file has a headline metric, by path; and the declared side files without
    one (benchmarks, tokenizer figures), with their command."""
    runs, side = {}, {}
    for key, argv in all_reference_runs(root).items():
        path = root / key
        if not path.is_file():
            raise UserError(f"{key} is declared in {key.split('/')[0]}/reference_runs.py but not published yet; run "
                            f"`{reference_command(argv)}` and publish it (scripts/publish.py)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {key}: {e}") from None
        if "headline_metric" in data:
            runs[key] = Run(key, data, argv)
        else:
            side[key] = f"its command: {reference_command(argv)}"
    return runs, side


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag` set to `value`: replaced where the command gives it (once), appended where it does not."""
    out, i, done = [], 0, False
    while i < len(args):
        a = args[i]
        if a == flag or a.startswith(flag + "="):
            if not done:
                out += [flag, value]
                done = True
            i += 2 if a == flag else 1
            continue
        out.append(a)
        i += 1
    return out if done else out + [flag, value]


# ----------------------------------------------------------------------------- the plan

def select(runs: dict[str, Run], side: dict[str, str], stages: list[str], only: list[str]) -> list[str]:
    """The result files that --stage / --all and --only pick, in stage and file-name order."""
    pool = [k for k in runs if not stages or runs[k].stage in stages]
    if not only:
        return pool
    chosen = []
    for name in only:
        norm = name.removesuffix(".json")
        matches = [k for k in pool if k.removesuffix(".json") == norm or runs[k].name == norm]
        if not matches:
            sides = [k for k in side if k.removesuffix(".json") == norm or Path(k).stem == norm]
            if sides:
                raise UserError(f"--only {name}: {sides[0]} is a side file with no headline metric; "
                                f"reproduce.py re-runs only result files with one")
            where = f" in {', '.join(stages)}" if stages else ""
            raise UserError(f"--only {name}: no result file of that name{where}; choose from "
                            + ", ".join(sorted({runs[k].name for k in pool})))
        if len(matches) > 1:
            raise UserError(f"--only {name} matches {' and '.join(matches)}; add --stage or give the file's path")
        chosen += [m for m in matches if m not in chosen]
    return [k for k in pool if k in chosen]


def checkpoint_source(run: Run, runs: dict[str, Run]) -> tuple[str | None, str | None]:
    """(the result file whose run writes the checkpoint `run` reads, the checkpoint's path as `run` names it).

    A run reads a checkpoint when its script has a --checkpoint flag (its default is the checkpoint the stage's
    producer run writes, by construction). (None, None) for a run that reads none; (None, path) when no declared run
    writes that checkpoint (its out-dir, as its script resolves it, is not the checkpoint's folder).
    """
    path = getattr(parse_declared(run.argv), "checkpoint", None)
    if not path:
        return None, None
    folder = os.path.normpath(Path(path).parent)
    for key, other in runs.items():
        out_dir = getattr(parse_declared(other.argv), "out_dir", None)
        if key != run.result and out_dir and os.path.normpath(out_dir) == folder:
            return key, path
    return None, path


def shown(path: Path, root: Path) -> str:
    """A path as a command from the repo root would write it: relative inside the repo, absolute outside."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def plan(selected: list[str], runs: dict[str, Run], out_root: Path, root: Path, data_dir: Path | None,
         quick: bool) -> list[Run]:
    """The runs to do, each after the run whose checkpoint it reads (added when not selected), with its commands."""
    order: list[Run] = []

    def visit(key: str) -> None:
        run = runs[key]
        if run in order:
            return
        run.after, checkpoint = checkpoint_source(run, runs)
        run.needs = None if run.after else checkpoint
        if run.after:
            visit(run.after)
        order.append(run)

    for key in selected:
        visit(key)
    for run in order:
        run.out_dir = out_root / run.stage / run.name
        run.new_result = out_root / run.stage / f"{run.name}.json"
        run.log = out_root / run.stage / f"{run.name}.log"
        script, *args = run.argv
        if not (root / script).is_file():
            raise UserError(f"{run.result}: its command runs {script}, which does not exist")
        args = set_flag(args, "--result", shown(run.new_result, root))
        args = set_flag(args, "--out-dir", shown(run.out_dir, root))
        if run.after:  # read the checkpoint this reproduction wrote (best.pt), not an older one
            producer = runs[run.after]
            name = Path(checkpoint_source(run, runs)[1]).name
            args = set_flag(args, "--checkpoint", shown(out_root / producer.stage / producer.name / name, root))
        if data_dir is not None:
            args = set_flag(args, "--data-dir", str(data_dir))
        if quick and "--quick" not in args:
            args.append("--quick")
        run.commands = [[script, *args]]
    return order


def changed_files(commit: str, stage: str, root: Path) -> list[str] | None:
    """The stage's code files and scripts/common.py that differ now (working tree) from the commit a result records;
    None when that cannot be known (no git, an unknown commit, or a run from uncommitted code)."""
    if not commit or commit == "unknown" or commit.endswith("-dirty"):
        return None
    try:
        r = subprocess.run(["git", "diff", "--name-only", commit, "--", f"{stage}/*.py", "scripts/common.py"],
                           cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.split() if r.returncode == 0 else None


def describe_changes(files: list[str] | None, commit: str) -> str:
    if files is None:
        return f"code changes since the recorded commit ({commit or 'none recorded'}): unknown"
    if not files:
        return f"code unchanged since {commit[:7]}"
    return f"code changed since {commit[:7]}: {', '.join(files)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 5400 \
        else f"{seconds / 3600:.1f} h"


def recorded_seconds(run: Run) -> float:
    """What the recorded run took end to end (data preparation and the final evaluation included), else its training."""
    return run.recorded.get("wall_seconds") or run.recorded.get("train_seconds") or 0.0


def hardware(result: dict) -> str:
    return f"{result.get('device', '?')}, {result.get('threads', '?')} threads"


def print_plan(order: list[Run], side: dict[str, str], root: Path, out_root: Path, data_dir: Path | None,
               quick: bool, codes: dict[str, list[str] | None]) -> None:
    stages = sorted({r.stage for r in order})
    total = sum(recorded_seconds(r) for r in order)
    machines = ", ".join(sorted({hardware(r.recorded) for r in order}))
    print(f"reproduce: {len(order)} run{'s' * (len(order) != 1)} in {len(stages)} stage{'s' * (len(stages) != 1)}; "
          f"data: {data_dir or resolve_data_dir(None)}; outputs: {shown(out_root, root)}/")
    if quick:
        print("--quick: tiny runs on small slices to test the pipeline; their numbers are not comparable with the "
              "recorded ones")
    else:
        print(f"recorded time: {duration(total)} on {machines} (whole runs, as recorded; this machine may be faster "
              f"or slower)")
    for i, run in enumerate(order, 1):
        r = run.recorded
        metric = r["headline_metric"]
        commit = r.get("git_commit", "unknown")
        notes = [f"{metric} {r['metrics'][metric]:.4f}", duration(recorded_seconds(run))]
        if run.after:
            notes.append(f"after {Path(run.after).name} (reads its checkpoint)")
        if run.needs:
            notes.append(f"reads {run.needs}, which no recorded run writes: it must exist")
        print(f"\n{i:2d}. {run.result}: " + ", ".join(notes))
        print(f"    {describe_changes(codes[run.result], commit)}")
        for script, *args in run.commands:
            print("    $ " + shlex.join(["python", script, *args]))
    skipped = sorted(k for k in side if k.split("/")[0] in stages)
    if skipped:
        print("\nnot re-run: side files with no headline metric (speeds of this machine, tokenizer figures, baselines)")
        for key in skipped:
            print(f"    {key} ({side[key]})")


# ----------------------------------------------------------------------------- running

def stream(cmd: list[str], cwd: Path, prefix: str, log) -> tuple[int, str]:
    """Run `cmd`, copying each line it prints to our stdout (after `prefix`) and to `log`.

    Returns its exit code and its last non-empty line (a failed script's one-line `error:`). Ctrl-C reaches the child
    too (same process group): it saves its checkpoint and exits; we wait for that before passing the Ctrl-C on.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines arrive as they are printed, not in 8 KB blocks
    last = ""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1) as proc:
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                print(prefix + line, end="", flush=True)
                last = line.strip() or last
        except KeyboardInterrupt:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # in case only we got it (kill -INT): the child saves and stops
            for line in proc.stdout:
                log.write(line)
                print(prefix + line, end="", flush=True)
            proc.wait()
            raise
        return proc.wait(), last


def run_one(run: Run, root: Path) -> dict:
    """Run a result file's commands from a clean run folder; the comparison row, or a failed one with the reason."""
    shutil.rmtree(run.out_dir, ignore_errors=True)  # start from nothing: no cached tokenizer, no old last.pt
    run.new_result.unlink(missing_ok=True)          # so an old result file is never taken for the new one
    run.log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(run.log, "w", encoding="utf-8") as log:
        for script, *args in run.commands:
            line = shlex.join(["python", script, *args])
            log.write(f"$ {line}\n")
            print(f"\n[{run.stage}/{run.name}] $ {line}", flush=True)
            code, last = stream([sys.executable, script, *args], root, f"[{run.stage}/{run.name}] ", log)
            if code != 0:
                status = "interrupted" if code == 130 else "failed"
                return row(run, root, status=status, reason=f"exit {code}: {last[:200]} (log: {shown(run.log, root)})")
    if not run.new_result.is_file():
        return row(run, root, status="failed", reason=f"it finished but wrote no {shown(run.new_result, root)} "
                                                      f"(log: {shown(run.log, root)})")
    new = json.loads(run.new_result.read_text(encoding="utf-8"))
    return row(run, root, new=new, seconds=time.monotonic() - t0)


def row(run: Run, root: Path, *, new: dict | None = None, status: str = "ok", reason: str = "",
        seconds: float | None = None) -> dict:
    """One line of the table: the headline metric recorded and new, the difference, both training times."""
    r = run.recorded
    metric = r["headline_metric"]
    recorded = r["metrics"][metric]
    value = None if new is None else new.get("metrics", {}).get(metric)
    out = {"result": run.result, "metric": metric, "recorded": recorded, "new": value,
           "difference": None, "relative_difference": None,
           "recorded_train_seconds": r.get("train_seconds"), "new_train_seconds": None,
           "recorded_hardware": hardware(r), "new_hardware": None,
           "recorded_commit": r.get("git_commit"),
           "code_changed_since": changed_files(r.get("git_commit", ""), run.stage, root),  # None: unknown
           "time_budget": any(a.split("=")[0] == "--time-budget" for c in run.commands for a in c),
           "status": status, "reason": reason, "new_result": shown(run.new_result, root),
           "log": shown(run.log, root), "commands": [shlex.join(["python", *c]) for c in run.commands],
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if new is not None:
        out.update(new_train_seconds=new.get("train_seconds"), new_hardware=hardware(new), quick=bool(new.get("quick")),
                   new_wall_seconds=round(seconds, 1) if seconds is not None else None,
                   recorded_wall_seconds=r.get("wall_seconds"), new_commit=new.get("git_commit"))
        if isinstance(value, (int, float)):
            out["difference"] = round(value - recorded, 6)
            out["relative_difference"] = round((value - recorded) / abs(recorded), 6) if recorded else None
        else:
            out.update(status="failed", reason=f"the new result file has no {metric!r} metric")
    return out


def print_table(rows: list[dict]) -> None:
    header = ["result file", "metric", "recorded", "new", "difference", "train time (recorded -> new)", "note"]
    lines = []
    for r in rows:
        new = f"{r['new']:.4f}" if isinstance(r["new"], (int, float)) else r["status"]
        diff = ""
        if r["difference"] is not None:
            diff = f"{r['difference']:+.4f}"
            if r["relative_difference"] is not None:
                diff += f" ({r['relative_difference']:+.1%})"
        times = f"{duration(r['recorded_train_seconds'])} -> {duration(r['new_train_seconds'])}" \
            if r["status"] == "ok" else duration(r["recorded_train_seconds"])
        notes = []
        if r.get("quick"):
            notes.append("--quick")
        if r["new_hardware"] and r["new_hardware"] != r["recorded_hardware"]:
            notes.append(f"{r['new_hardware']} (recorded: {r['recorded_hardware']})")
        if r["time_budget"]:
            notes.append("time budget")
        if r["code_changed_since"]:
            notes.append(f"code changed since {str(r['recorded_commit'])[:7]} ({len(r['code_changed_since'])} files)")
        lines.append([r["result"], r["metric"], f"{r['recorded']:.4f}", new, diff, times, "; ".join(notes)])
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    right = {2, 3, 4}  # numbers line up on the right
    for cells in [header, *lines]:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        print("  ".join(padded).rstrip())


def write_summary(path: Path, rows: list[dict], root: Path) -> None:
    """Merge `rows` into the summary JSON, which keeps the latest reproduction of every result file."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        summary = {}
    runs = summary.get("runs", {})
    runs.update({r["result"]: r for r in rows})
    summary = {"written_by": "python scripts/reproduce.py", "runs": dict(sorted(runs.items()))}
    write_json(path, summary)
    print(f"\nsummary: {shown(path, root)}; new result files and logs in {shown(path.parent, root)}/<stage>/")


# ----------------------------------------------------------------------------- the command line

def stage_folder(text: str, root: Path) -> str:
    """'1' or 'stage1_mlp' -> 'stage1_mlp'."""
    folders = sorted(p.name for p in root.glob("stage*_*") if p.is_dir())
    found = [f for f in folders if f == text or (text.isdigit() and f.startswith(f"stage{text}_"))]
    if not found:
        raise UserError(f"--stage {text}: no such stage; choose from 1-{len(folders)} or "
                        + ", ".join(folders))
    return found[0]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Re-run the reference runs each stage declares (stage*/reference_runs.py) and compare the new "
                    "figures with the published ones. Outputs go to --out-dir; the committed result files are never touched.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stage", nargs="+", action="extend", default=[], metavar="N",
                       help="the stages to reproduce: numbers (--stage 1 6) or folder names; repeatable")
    which.add_argument("--all", action="store_true", help="every stage")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="only this result file (glue_rte, or stage6_bert/results/glue_rte.json), plus the run whose "
                        "checkpoint it reads; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands, their order and the recorded time, and run nothing")
    p.add_argument("--quick", action="store_true",
                   help="add --quick to every command: tiny runs that test the pipeline, not the numbers")
    p.add_argument("--data-dir", default=None,
                   help="passed to every command (default: what each script uses: $MY_LLM_DATA, else "
                        "~/.cache/my_llm/data)")
    p.add_argument("--out-dir", default=None,
                   help="where the new result files, logs, run folders and summary.json go (default: runs/reproduce "
                        "in the repo)")
    args = p.parse_args(argv)
    if not (args.stage or args.all or args.only):
        p.error("say what to reproduce: --stage N, --only NAME or --all (add --dry-run to see the plan first)")
    return args


def main(argv=None, root: Path = REPO_ROOT) -> None:
    """`root` is the repository whose result files are reproduced (the tests pass a small one of their own)."""
    args = parse_args(argv)
    stages = [stage_folder(s, root) for s in args.stage]
    data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else None
    out_root = Path(args.out_dir).expanduser().resolve() if args.out_dir else root / "runs" / "reproduce"
    runs, side = load_runs(root)
    selected = select(runs, side, stages, args.only)
    if not selected:
        raise UserError("no result files with a headline metric in " + ", ".join(stages or ["any stage"]))
    order = plan(selected, runs, out_root, root, data_dir, args.quick)
    codes = {run.result: changed_files(run.recorded.get("git_commit", ""), run.stage, root) for run in order}
    print_plan(order, side, root, out_root, data_dir, args.quick, codes)
    if args.dry_run:
        return
    missing = [f"{run.result} reads {run.needs}" for run in order if run.needs and not (root / run.needs).is_file()]
    if missing:
        raise UserError("; ".join(missing) + ", which does not exist and which no recorded run writes; train it "
                        "first (see the stage README)")

    rows: list[dict] = []
    not_done: set[str] = set()
    try:
        for run in order:
            if run.after in not_done:
                rows.append(row(run, root, status="skipped", reason=f"it reads the checkpoint of {run.after}, "
                                                                    f"which did not finish"))
            else:
                rows.append(run_one(run, root))
            if rows[-1]["status"] != "ok":
                not_done.add(run.result)
    except KeyboardInterrupt:
        rows.append(row(run, root, status="interrupted", reason="Ctrl-C"))
        print()
        print_table(rows)
        write_summary(out_root / "summary.json", rows, root)
        raise
    print()
    print_table(rows)
    write_summary(out_root / "summary.json", rows, root)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} runs did not finish: "
              + "; ".join(f"{r['result']} ({r['status']}: {r['reason']})" for r in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
