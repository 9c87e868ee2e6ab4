"""Stage 2's reference runs (stage2_rnn_lstm/reference_runs.py): every published result file is declared, every
declaration parses with its script's own parse_args and names one run, the published files record the declared
command and no path of the machine that ran them, and the checkpoints other scripts read chain to the runs that
write them.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from scripts.common import REPO_ROOT, WHERE_FLAGS, reference_command, reference_run_name, resolved_config
from stage2_rnn_lstm import benchmark, classify, evaluate, generate, predict, train
from stage2_rnn_lstm.reference_runs import CLASSIFIER_CHECKPOINT, LM_CHECKPOINT, REFERENCE_RUNS

RESULTS = REPO_ROOT / "stage2_rnn_lstm" / "results"
PARSERS = {"stage2_rnn_lstm/train.py": train.parse_args, "stage2_rnn_lstm/classify.py": classify.parse_args,
           "stage2_rnn_lstm/benchmark.py": benchmark.parse_args}


def test_the_declaration_imports_nothing():
    tree = ast.parse((REPO_ROOT / "stage2_rnn_lstm" / "reference_runs.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_every_published_file_is_declared():
    assert sorted(p.stem for p in RESULTS.glob("*.json")) == sorted(REFERENCE_RUNS)


@pytest.mark.parametrize("name", sorted(REFERENCE_RUNS))
def test_each_declared_run_parses_and_names_itself(name):
    script, *flags = REFERENCE_RUNS[name]
    assert (REPO_ROOT / script).is_file() and script in PARSERS
    where = {"--" + f.replace("_", "-") for f in WHERE_FLAGS}
    assert not [f for f in flags if f.split("=")[0] in where], "a reference run names no where-flags"
    args = PARSERS[script](flags)
    assert reference_run_name(REFERENCE_RUNS, script, PARSERS[script], args) == name   # and no other run before it


def strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("name", sorted(REFERENCE_RUNS))
def test_published_files_record_the_declared_run(name):
    r = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    assert list(r)[:2] == ["stage", "run"] and r["run"] == name
    assert r["command"] == reference_command(REFERENCE_RUNS[name])
    assert not [s for s in strings(r) if s.startswith(("/", "~")) or ":\\" in s or " /" in s], "an absolute path"
    script, *flags = REFERENCE_RUNS[name]
    declared = resolved_config(PARSERS[script](flags))
    recorded = r.get("hparams", r.get("config"))
    # what the run recorded is what the declared command resolves to (flags newer than the run keep their defaults)
    assert {k: declared[k] for k in recorded} == recorded


def test_checkpoints_chain_to_the_runs_that_write_them():
    """evaluate.py, generate.py (and the demo) read the character LSTM's best.pt; predict.py (and the capstone)
    the SST-2 classifier's: each default is the folder that the declared run writes."""
    lm = train.parse_args(REFERENCE_RUNS["tiny_shakespeare_lstm"][1:])
    assert f"{lm.out_dir}/best.pt" == LM_CHECKPOINT
    assert evaluate.parse_args([]).checkpoint == generate.parse_args([]).checkpoint == LM_CHECKPOINT
    sst2 = classify.parse_args(REFERENCE_RUNS["sst2_lstm"][1:])
    assert f"{sst2.out_dir}/best.pt" == CLASSIFIER_CHECKPOINT
    assert predict.parse_args([]).checkpoint == CLASSIFIER_CHECKPOINT
    assert predict.load_predictor.__defaults__[0] == CLASSIFIER_CHECKPOINT


def test_runs_write_under_runs_by_default():
    """No script writes into the committed results/ unless told to: publishing is its own step."""
    for name, (script, *flags) in REFERENCE_RUNS.items():
        args = PARSERS[script](flags)
        out = Path(args.json if script.endswith("benchmark.py") else args.out_dir)
        assert out.parts[:2] == ("runs", "stage2_rnn_lstm"), name
        if not script.endswith("benchmark.py"):
            assert args.result is None   # main() writes <out-dir>/result.json
