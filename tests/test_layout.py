"""The shape every stage keeps: modules that import one another in one direction only, training scripts whose main()
reads as one page, and one classifier contract (load_predictor in predict.py)."""
from __future__ import annotations

import ast
import importlib
import inspect

import pytest

from conftest import REPO_ROOT
from scripts.common import STAGES

TRAINING_SCRIPTS = ["stage1_mlp/train.py", "stage2_rnn_lstm/train.py", "stage2_rnn_lstm/classify.py",
                    "stage3_attention_seq2seq/train.py", "stage4_transformer/train.py",
                    "stage4_transformer/classify.py", "stage5_gpt/train.py", "stage5_gpt/finetune.py",
                    "stage6_bert/pretrain.py", "stage6_bert/finetune.py"]
CLASSIFIER_STAGES = ["stage1_mlp", "stage2_rnn_lstm", "stage4_transformer", "stage5_gpt", "stage6_bert"]


def stage_imports(stage: str) -> dict[str, set[str]]:
    """module -> the modules of the same stage it imports (anywhere in the file, functions included)."""
    graph = {}
    for path in sorted((REPO_ROOT / stage).glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == stage:  # from stage1_mlp import data, model
                    found |= {a.name for a in node.names}
                elif node.module.startswith(f"{stage}."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(f"{stage}.")}
        graph[path.stem] = found - {path.stem}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph`, as a list of modules, or None."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None
    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_in_a_circle(stage):
    assert cycle(stage_imports(stage)) is None


def test_the_circle_finder_finds_circles():
    assert cycle({"data": {"tokenizer"}, "tokenizer": {"data"}}) == ["data", "tokenizer", "data"]
    assert cycle({"train": {"data", "model"}, "data": {"tokenizer"}, "model": set()}) is None


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_training_main_reads_as_one_page(script):
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    lines = len(inspect.getsource(module.main).splitlines())
    assert lines <= 130, f"{script}: main() is {lines} lines; move plumbing into functions (the loop stays)"


@pytest.mark.parametrize("stage", CLASSIFIER_STAGES)
def test_every_classifier_has_load_predictor_in_predict_py(stage):
    predict = importlib.import_module(f"{stage}.predict")
    params = list(inspect.signature(predict.load_predictor).parameters)
    assert params[:2] == ["checkpoint", "device"]
