"""Stage 4's reference runs (stage4_transformer/reference_runs.py): every published result file is declared, each
declaration parses with its script's own parse_args, the published files record the declared command and its resolved
configuration with no path of the machine that made them, and the translator checkpoint the other scripts read by
default is the one the en -> fr reference run writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts.common import WHERE_FLAGS, reference_command, reference_run_name, resolved_config
from stage4_transformer import benchmark, classify, evaluate, train, translate
from stage4_transformer.reference_runs import REFERENCE_RUNS, TRANSLATOR_CHECKPOINT

RESULTS = Path(__file__).resolve().parents[1] / "stage4_transformer" / "results"
SCRIPTS = {"stage4_transformer/train.py": train, "stage4_transformer/classify.py": classify,
           "stage4_transformer/benchmark.py": benchmark}


def test_every_published_file_is_declared_and_every_declaration_published():
    assert sorted(p.stem for p in RESULTS.glob("*.json")) == sorted(REFERENCE_RUNS)


@pytest.mark.parametrize("name", REFERENCE_RUNS)
def test_declaration_parses_and_names_no_where_flag(name):
    script, *flags = REFERENCE_RUNS[name]
    assert script in SCRIPTS and (RESULTS.parent.parent / script).is_file()
    SCRIPTS[script].parse_args(flags)
    assert not {f"--{w.replace('_', '-')}" for w in WHERE_FLAGS} & set(flags)
    args = SCRIPTS[script].parse_args(flags)  # the declaration is found again from its own settings
    assert reference_run_name(REFERENCE_RUNS, script, SCRIPTS[script].parse_args, args) == name


def strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("name", REFERENCE_RUNS)
def test_published_file_records_the_declared_run(name):
    r = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    script, *flags = REFERENCE_RUNS[name]
    assert r["run"] == name and r["command"] == reference_command(REFERENCE_RUNS[name])
    declared = resolved_config(SCRIPTS[script].parse_args(flags))
    assert r.get("hparams", r.get("config")) == declared  # the full resolved configuration, where-flags left out
    assert not [s for s in strings(r) if os.path.isabs(s) or s.startswith(("/", "~"))]


def test_reordered_flags_still_match():
    flags = ["--lr", "0.001", "--batch-tokens", "2048", "--average-last", "5", "--time-budget", "60", "--epochs", "30",
             "--schedule", "cosine", "--dropout", "0.2", "--out-dir", "/tmp/x", "--device", "cpu"]
    assert reference_run_name(REFERENCE_RUNS, "stage4_transformer/train.py", train.parse_args,
                              train.parse_args(flags)) == "multi30k_en_fr"
    assert reference_run_name(REFERENCE_RUNS, "stage4_transformer/train.py", train.parse_args,
                              train.parse_args(flags + ["--seed", "1"])) is None


def test_translator_checkpoint_is_where_the_reference_run_writes():
    args = train.parse_args(REFERENCE_RUNS["multi30k_en_fr"][1:])
    assert f"{args.out_dir}/best.pt" == TRANSLATOR_CHECKPOINT
    assert evaluate.parse_args([]).checkpoint == TRANSLATOR_CHECKPOINT
    assert translate.parse_args(["A dog."]).checkpoint == TRANSLATOR_CHECKPOINT
