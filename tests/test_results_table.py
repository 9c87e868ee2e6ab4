"""Every README results table says what the result files say, and the Chinese README keeps up with the English one.

CI runs `python scripts/results_table.py --check`; the first test runs the same check through the module, so a plain
`pytest` also fails when someone types a number into a README or forgets `--write` after a run. The tests after it
show, on a tiny repository in a temporary folder, that the check catches a changed number and that `--write` fixes it.

README.zh-CN.md is a translation of README.md. Its results table is generated, so it cannot fall behind; its prose can,
so the last tests compare the two: the same sections, the same commands, and a link from each to the other.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from scripts import results_table
from scripts.results_table import END, START

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGLISH, CHINESE = REPO_ROOT / "README.md", REPO_ROOT / "README.zh-CN.md"


# ---------------------------------------------------------------------------------------------------------------------
# The results tables


def test_readme_tables_match_result_files():
    assert CHINESE in results_table.readmes(), "README.zh-CN.md is not among the READMEs the generator fills"
    stale = [str(path.relative_to(REPO_ROOT)) for path in results_table.stale_readmes()]
    assert not stale, (f"results table out of date in {', '.join(stale)}: the README disagrees with "
                       "stage*/results/*.json; run: python scripts/results_table.py --write")


# One result file of a made-up stage, in the schema scripts/common.py `write_result` writes (the fields the table uses).
DEMO_RESULT = {"stage": "stage9_demo", "dataset": "demo", "split": "test", "headline_metric": "accuracy",
               "metrics": {"accuracy": 0.8125, "loss": 0.41}, "train_seconds": 42.0, "params": 1_234_567,
               "device": "cpu", "threads": 2, "command": "python stage9_demo/train.py"}
DEMO_README = f"# Demo\n\nBefore the table.\n\n{START}\n{END}\n\nAfter the table.\n"


def demo_repo(root: Path) -> dict[str, Path]:
    """A repository with one stage, one result file, a side file that is not a row, and three READMEs with markers."""
    results = root / "stage9_demo" / "results"
    results.mkdir(parents=True)
    (results / "demo.json").write_text(json.dumps(DEMO_RESULT), encoding="utf-8")
    (results / "benchmark.json").write_text(json.dumps({"tokens_per_second": 1000.0}), encoding="utf-8")
    paths = {"top": root / "README.md", "zh": root / "README.zh-CN.md", "stage": root / "stage9_demo" / "README.md"}
    for path in paths.values():
        path.write_text(DEMO_README, encoding="utf-8")
    return paths


def write_result(root: Path, accuracy: float) -> None:
    """What a new training run does: rewrite the result file with its own number."""
    result = dict(DEMO_RESULT, metrics={"accuracy": accuracy, "loss": 0.41})
    (root / "stage9_demo" / "results" / "demo.json").write_text(json.dumps(result), encoding="utf-8")


def test_write_fills_every_readme_and_check_passes(tmp_path, capsys):
    paths = demo_repo(tmp_path)
    assert results_table.main(["--write"], root=tmp_path) == 0
    assert capsys.readouterr().out.split("\n") == ["updated README.md", "updated README.zh-CN.md",
                                                   "updated stage9_demo/README.md", ""]
    top = paths["top"].read_text(encoding="utf-8")
    assert "| stage9_demo | demo | test | accuracy | [0.8125](stage9_demo/results/demo.json) | 42 s | 1.2M " \
           "| cpu, 2 threads | `python stage9_demo/train.py` |" in top
    assert "tokens_per_second" not in top and top.count("| stage9_demo |") == 1   # the side file is not a row
    assert paths["zh"].read_text(encoding="utf-8") == top                         # the translation: the same table
    assert "[0.8125](results/demo.json)" in paths["stage"].read_text(encoding="utf-8")  # links from the stage folder
    assert top.startswith("# Demo\n\nBefore the table.\n\n") and top.endswith(f"{END}\n\nAfter the table.\n")
    assert results_table.main(["--check"], root=tmp_path) == 0


def test_check_catches_a_changed_number_and_write_fixes_it(tmp_path, capsys):
    paths = demo_repo(tmp_path)
    results_table.main(["--write"], root=tmp_path)
    write_result(tmp_path, 0.8750)   # a new run, and nobody ran --write
    capsys.readouterr()

    assert results_table.main(["--check"], root=tmp_path) == 1
    assert ("results table out of date in README.md, README.zh-CN.md, stage9_demo/README.md; "
            "run: python scripts/results_table.py --write") in capsys.readouterr().err

    assert results_table.main(["--write"], root=tmp_path) == 0
    assert results_table.main(["--check"], root=tmp_path) == 0
    for path in paths.values():
        text = path.read_text(encoding="utf-8")
        assert "[0.8750](" in text and "0.8125" not in text, path
        assert text.startswith("# Demo\n\nBefore the table.\n\n") and text.endswith("\n\nAfter the table.\n")


def test_check_catches_a_number_typed_into_one_readme(tmp_path):
    paths = demo_repo(tmp_path)
    results_table.main(["--write"], root=tmp_path)
    typed = paths["zh"].read_text(encoding="utf-8").replace("[0.8125]", "[0.9125]")
    paths["zh"].write_text(typed, encoding="utf-8")

    assert results_table.stale_readmes(tmp_path) == [paths["zh"]]
    assert results_table.main(["--check"], root=tmp_path) == 1
    results_table.main(["--write"], root=tmp_path)
    assert "[0.8125](" in paths["zh"].read_text(encoding="utf-8")
    assert results_table.stale_readmes(tmp_path) == []


def test_a_translation_without_markers_is_an_error(tmp_path):
    paths = demo_repo(tmp_path)
    paths["zh"].write_text("# Demo\n\nNo table here.\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="README.zh-CN.md has no results markers"):
        results_table.main(["--check"], root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Stage 6's GLUE table: the constant predictor, the course's BERT and real weights, per task

def glue_file(metrics: dict, **fields) -> str:
    """A fine-tuning result file, as finetune.py writes it (the fields the GLUE table reads)."""
    return json.dumps({"stage": "stage6_bert", "headline_metric": next(iter(metrics)), "metrics": metrics,
                       "train_seconds": 1.0, "params": 1, "device": "cpu", "threads": 2, "dataset": "GLUE",
                       "split": "dev", "command": "python stage6_bert/finetune.py", **fields})


def glue_repo(root: Path) -> dict[str, Path]:
    """Stage 6 with the baselines of two tasks, the course's MRPC and CoLA, MRPC from random weights with two seeds,
    MRPC pre-trained with sentence pairs, real weights on MRPC with three seeds,
    no real weights on CoLA yet, and its two READMEs with the glue markers (and none of the results table)."""
    results = root / "stage6_bert" / "results"
    results.mkdir(parents=True)
    baselines = {"mrpc": {"f1": 0.8122, "accuracy": 0.6838}, "cola": {"matthews_corr": 0.0, "accuracy": 0.6913},
                 "stsb": {"pearson": None, "spearman": None, "mse": 2.3636}}
    (results / "glue_baselines.json").write_text(json.dumps({"stage": "stage6_bert", "metrics": baselines}))
    (results / "glue_mrpc.json").write_text(glue_file({"f1": 0.8122, "accuracy": 0.6838}))
    (results / "glue_cola.json").write_text(glue_file({"matthews_corr": 0.0, "accuracy": 0.6913}))
    for name, f1, accuracy in [("", 0.90, 0.85), ("_seed2", 0.88, 0.83), ("_seed3", 0.89, 0.81)]:
        (results / f"glue_mrpc_minilm{name}.json").write_text(glue_file({"f1": f1, "accuracy": accuracy}))
    for name, f1, accuracy in [("", 0.71, 0.61), ("_seed2", 0.69, 0.59)]:   # from random weights, two seeds
        (results / f"glue_mrpc_pairs_scratch{name}.json").write_text(glue_file({"f1": f1, "accuracy": accuracy}))
    (results / "glue_mrpc_pairs.json").write_text(glue_file({"f1": 0.83, "accuracy": 0.74}))
    readme = f"# Stage 6\n\nGLUE:\n\n{results_table.GLUE_START}\n{results_table.GLUE_END}\n\nAfter.\n"
    paths = {"en": root / "stage6_bert" / "README.md", "zh": root / "stage6_bert" / "README.zh-CN.md"}
    for path in paths.values():
        path.write_text(readme, encoding="utf-8")
    (root / "README.md").write_text(f"{START}\n{END}\n", encoding="utf-8")   # the top README: the results table
    return paths


def row(text: str, task: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_glue_table_shows_each_model_per_task_and_never_a_number_not_run(tmp_path, capsys):
    paths = glue_repo(tmp_path)
    assert results_table.main(["--write"], root=tmp_path) == 0
    en, zh = (paths[k].read_text(encoding="utf-8") for k in ("en", "zh"))
    assert row(en, "MRPC") == [
        "MRPC", "f1 / accuracy", "[0.8122](results/glue_baselines.json) / 0.6838",
        "0.7000 / 0.6000 (mean of 2: [0.7100](results/glue_mrpc_pairs_scratch.json), "
        "[0.6900](results/glue_mrpc_pairs_scratch_seed2.json))",
        "[0.8122](results/glue_mrpc.json) / 0.6838", "[0.8300](results/glue_mrpc_pairs.json) / 0.7400",
        "0.8900 / 0.8300 (mean of 3: [0.9000](results/glue_mrpc_minilm.json), "
        "[0.8800](results/glue_mrpc_minilm_seed2.json), [0.8900](results/glue_mrpc_minilm_seed3.json))",
        "0.811 / 0.711", "0.811 / 0.718"]   # the labelled references: BERT-Tiny and BERT-Mini on GLUE test
    assert row(en, "CoLA")[2:7] == ["[0.0000](results/glue_baselines.json) / 0.6913", "not run yet",
                                    "[0.0000](results/glue_cola.json) / 0.6913", "not run yet", "not run yet"]
    assert row(en, "SST-2")[2:7] == ["not run yet"] * 5   # no entry in the baselines file, no result file
    assert row(en, "WNLI")[7:] == ["—", "—"]               # no published reference
    assert row(en, "STS-B")[2] == ("undefined (a constant has no correlation); mse "
                                   "[2.3636](results/glue_baselines.json)")
    assert row(en, "STS-B zero-shot (no fine-tuning: cosine of mean-pooled vectors)")[2:] == \
        ["—", "—", "—", "—", "not run yet", "—", "—"]
    assert results_table.GLUE_WORDS["en"]["header"] in en and results_table.GLUE_WORDS["zh-CN"]["header"] in zh
    assert row(zh, "MRPC")[6].startswith("0.8900 / 0.8300 (3 次的平均: ") and row(zh, "CoLA")[6] == "尚未运行"
    assert en.startswith("# Stage 6\n\nGLUE:\n\n") and en.endswith(f"{results_table.GLUE_END}\n\nAfter.\n")
    assert results_table.main(["--check"], root=tmp_path) == 0
    capsys.readouterr()

    (tmp_path / "stage6_bert" / "results" / "glue_cola_minilm.json").write_text(
        glue_file({"matthews_corr": 0.45, "accuracy": 0.8}))   # a new run published, and nobody ran --write
    assert results_table.main(["--check"], root=tmp_path) == 1
    assert "stage6_bert/README.md, stage6_bert/README.zh-CN.md" in capsys.readouterr().err
    results_table.main(["--write"], root=tmp_path)
    assert row(paths["en"].read_text(encoding="utf-8"), "CoLA")[6] == \
        "[0.4500](results/glue_cola_minilm.json) / 0.8000"

    for name, mcc in (("", 0.52), ("_seed2", 0.50)):   # a search's winner, trained again: it takes the column
        (tmp_path / "stage6_bert" / "results" / f"glue_cola_minilm_tuned{name}.json").write_text(
            glue_file({"matthews_corr": mcc, "accuracy": 0.82}))
    results_table.main(["--write"], root=tmp_path)
    assert row(paths["en"].read_text(encoding="utf-8"), "CoLA")[6] == \
        ("0.5100 / 0.8200 (mean of 2: [0.5200](results/glue_cola_minilm_tuned.json), "
         "[0.5000](results/glue_cola_minilm_tuned_seed2.json)); the recipe the search below chose")
    assert row(paths["zh"].read_text(encoding="utf-8"), "CoLA")[6].endswith("；下文搜索选出的配方")
    assert row(paths["en"].read_text(encoding="utf-8"), "MRPC")[6].startswith("0.8900 / 0.8300 (mean of 3: ")


def test_the_glue_tables_metrics_are_the_tasks_metrics():
    """GLUE_TASKS repeats glue.py's TASKS (the scripts here import no torch): the same tasks, names and metrics."""
    from stage6_bert.glue import TASKS
    assert [(key, TASKS[key].name, TASKS[key].metrics) for key in TASKS] == results_table.GLUE_TASKS
    assert set(results_table.GLUE_WORDS["en"]) == set(results_table.GLUE_WORDS["zh-CN"])


def test_the_stage6_readmes_hold_the_glue_table():
    for name in ("README.md", "README.zh-CN.md"):
        assert results_table.GLUE_START in (REPO_ROOT / "stage6_bert" / name).read_text(encoding="utf-8"), name
    assert set(results_table.glue_readmes()) == {REPO_ROOT / "stage6_bert" / "README.md",
                                                 REPO_ROOT / "stage6_bert" / "README.zh-CN.md"}


# ---------------------------------------------------------------------------------------------------------------------
# A stage's declared hyperparameter searches and the check each ends with

def test_the_sweep_table_summarises_each_declared_search_and_its_check(tmp_path, capsys):
    stage = tmp_path / "stage5_gpt"
    (stage / "results" / "sweeps" / "s").mkdir(parents=True)
    (stage / "reference_runs.py").write_text(
        'REFERENCE_RUNS = {}\nREFERENCE_SWEEPS = {"s": ["scripts/sweep.py", "x"], "later": ["scripts/sweep.py", "y"]}\n'
        'SWEEP_CHECKS = {"s": {"hand-tuned": ["ref", "ref_seed2"], "sweep winner": ["win", "win_seed2"]}}\n')
    sweep = {"budget": {"trials": {"complete": 12, "pruned": 8}, "trial_seconds": 4500.0},
             "search": {"objective": "select.loss", "direction": "minimize"},
             "best": {"objective": 1.41234, "number": 7, "params": {"lr": 0.0031234, "dropout": 0, "warmup_steps": 50}}}
    (stage / "results" / "sweeps" / "s" / "sweep.json").write_text(json.dumps(sweep))
    for run, loss in [("ref", 1.52), ("ref_seed2", 1.50), ("win", 1.49)]:
        (stage / "results" / f"{run}.json").write_text(json.dumps({
            "stage": "stage5_gpt", "headline_metric": "val_loss", "metrics": {"val_loss": loss}, "train_seconds": 900,
            "params": 1, "device": "cpu", "threads": 2, "dataset": "tiny_shakespeare", "split": "val",
            "command": "python stage5_gpt/train.py"}))
    readme = f"# Stage 5\n\n{results_table.SWEEP_START}\n{results_table.SWEEP_END}\n"
    for name in ("README.md", "README.zh-CN.md"):
        (stage / name).write_text(readme, encoding="utf-8")
    (tmp_path / "README.md").write_text(f"{START}\n{END}\n", encoding="utf-8")
    assert results_table.main(["--write"], root=tmp_path) == 0
    en = (stage / "README.md").read_text(encoding="utf-8")
    assert row(en, "[s](results/sweeps/s/sweep.json)") == [
        "[s](results/sweeps/s/sweep.json)", "20: 12 complete, 8 pruned", "75.0 min", "select.loss (minimize)",
        "1.4123 (trial 7)", "`--lr 0.00312` `--dropout 0` `--warmup-steps 50`"]
    assert row(en, "later")[1] == "not run yet"
    assert row(en, "hand-tuned") == ["hand-tuned", "**1.5100** (mean of 2)",
                                     "[1.5200](results/ref.json), [1.5000](results/ref_seed2.json)"]
    assert row(en, "sweep winner") == ["sweep winner", "**1.4900** (mean of 1)",
                                       "[1.4900](results/win.json); not run yet: win_seed2"]
    zh = (stage / "README.zh-CN.md").read_text(encoding="utf-8")
    assert row(zh, "later")[1] == "尚未运行" and "2 次的平均" in zh
    assert results_table.main(["--check"], root=tmp_path) == 0
    capsys.readouterr()


def test_the_readmes_of_stages_with_searches_hold_the_sweep_table():
    assert set(results_table.sweep_readmes()) == {REPO_ROOT / stage / name for stage in ("stage5_gpt", "stage6_bert")
                                                  for name in ("README.md", "README.zh-CN.md")}
    assert set(results_table.SWEEP_WORDS["en"]) == set(results_table.SWEEP_WORDS["zh-CN"])


def test_the_instruct_table_puts_each_task_beside_its_baseline_and_the_specialists(tmp_path):
    stage5 = tmp_path / "stage5_gpt"
    (stage5 / "results").mkdir(parents=True)
    (tmp_path / "README.md").write_text(f"# Top\n\n{START}\n{END}\n", encoding="utf-8")
    readme = stage5 / "README.md"
    readme.write_text(f"# S5\n\n{results_table.INSTRUCT_START}\n{results_table.INSTRUCT_END}\n\n"
                      f"{results_table.SAMPLES_START}\n{results_table.SAMPLES_END}\n", encoding="utf-8")
    # not published: one line that says how to make it, never a number
    assert results_table.instruct_table(tmp_path).startswith("not measured yet")
    metrics = {"en_fr_bleu_greedy": 30.12, "en_fr_bleu_beam5": 33.45, "en_fr_bleu_copy_source": 3.21,
               "de_en_bleu_lc_greedy": 20.5, "de_en_bleu_lc_beam5": 22.25, "de_en_bleu_lc_copy_source": 4.75,
               "en_de_bleu_greedy": 1.5, "en_de_bleu_copy_source": 2.5,
               "sst2_accuracy": 0.7512, "sst2_unparsed": 0.01, "sst2_majority": 0.5092,
               "general_answer_loss": 2.5, "general_answer_loss_base": 3.75, "general_ended": 0.99}
    samples = {"en_fr": [{"prompt": "Translate to French:\nA | B", "reference": "Un", "answer": "Une"}]}
    (stage5 / "results" / "sft.json").write_text(json.dumps({"metrics": metrics, "samples": samples}), encoding="utf-8")
    specialist = tmp_path / "stage4_transformer" / "results"
    specialist.mkdir(parents=True)
    (specialist / "multi30k_en_fr.json").write_text(json.dumps({"metrics": {"bleu": 58.53}}), encoding="utf-8")
    table = results_table.instruct_table(tmp_path)
    rows = table.splitlines()[2:]
    assert "[30.12](results/sft.json) / **33.45**" in rows[0] and "copying the source 3.21" in rows[0]
    assert "Stage 4, Transformer [58.53](../stage4_transformer/results/multi30k_en_fr.json) (beam 5)" in rows[0]
    assert "Stage 3" not in rows[0]                             # its file is missing: no cell, no number
    assert "22.25" in rows[1] and "4.75" in rows[1] and "Stage" not in rows[1]
    # en->de, a task it never trained on: its score beside copying the source, no beam figure measured, no specialist
    assert "never in its training" in rows[2] and "[1.50](results/sft.json) |" in rows[2]
    assert "copying the source 2.50" in rows[2] and rows[2].endswith("| — |")
    assert "**0.7512**" in rows[3] and "1.0% unparsed" in rows[3] and "the majority class 0.5092" in rows[3]
    assert "**2.5000**" in rows[4] and "the base model, same template 3.7500" in rows[4]
    assert "**99.0%**" in rows[5]
    results_table.main(["--write"], root=tmp_path)
    text = readme.read_text(encoding="utf-8")
    assert table in text and "| en_fr | Translate to French:<br>A \\| B | Un | Une |" in text
    assert results_table.stale_readmes(tmp_path) == []
    assert set(results_table.INSTRUCT_WORDS["en"]) == set(results_table.INSTRUCT_WORDS["zh-CN"])


def test_the_lora_table_puts_full_fine_tuning_and_lora_beside_the_model_they_start_from(tmp_path):
    results = tmp_path / "stage5_gpt" / "results"
    results.mkdir(parents=True)
    assert results_table.lora_table(tmp_path).startswith("not measured yet")
    (results / "sft.json").write_text(json.dumps({"metrics": {"en_de_bleu_greedy": 1.25, "en_fr_bleu_greedy": 30.5,
                                                              "en_fr_bleu_beam5": 31.5, "sst2_accuracy": 0.8}}))
    assert results_table.lora_table(tmp_path).startswith("not measured yet")   # before alone compares nothing
    footprint = {"trainable": 50_000, "frozen": 950_000, "optimizer_state_bytes": 400_000,
                 "peak_memory_bytes": 3 * 2**20, "best_bytes": 4 * 2**20, "adapter_bytes": 2**19}
    (results / "sft_en_de_lora.json").write_text(json.dumps({
        "metrics": {"en_de_bleu_greedy": 20.0, "en_de_bleu_beam5": 21.0, "en_fr_bleu_greedy": 29.0,
                    "sst2_accuracy": 0.79},
        "hparams": {"lora_rank": 8, "lr": 0.002}, "footprint": footprint, "seconds_per_step": 0.1234}))
    rows = results_table.lora_table(tmp_path).splitlines()[2:]
    assert len(rows) == 2   # full fine-tuning is not published: no row, no number
    assert rows[0].startswith("| [the instructed GPT, before](results/sft.json) | 1.25 | 30.50 / 31.50 | 0.8000 | —")
    assert "[LoRA, rank 8, lr 0.002](results/sft_en_de_lora.json) | 20.00 / 21.00 | 29.00 | 0.7900" in rows[1]
    assert "5.0% of 1,000,000" in rows[1] and "| 3.0 MB | 0.123 | 0.5 MB |" in rows[1]   # the adapter, not best.pt
    assert set(results_table.LORA_WORDS["en"]) == set(results_table.LORA_WORDS["zh-CN"])


# ---------------------------------------------------------------------------------------------------------------------
# The Chinese README against the English one

FENCE = re.compile(r"^\s*```(\w*)")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = ("python", "pytest", "pip", "bash", "export")   # an inline `span` starting with one is a command


def prose_and_code(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The lines outside fenced code blocks, and each block as (language, lines). The generated table is left out."""
    text = results_table.replace_table(text, "")
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and block is None:
            block = (fence.group(1), [])
        elif fence:
            blocks.append(block)
            block = None
        elif block is not None:
            block[1].append(line)
        else:
            prose.append(line)
    return prose, blocks


def headings(text: str) -> list[str]:
    """The ## and ### headings, in order (a # inside a code block is a comment, not a heading)."""
    return [line for line in prose_and_code(text)[0] if re.match(r"#{2,3} ", line)]


def commands(text: str) -> set[str]:
    """The commands a README tells the reader to run: every line of a shell code block, and every inline `span`
    that starts with a command word. Comments are dropped (they may be translated); quoting is normalised."""
    prose, blocks = prose_and_code(text)
    found = set()
    for language, lines in blocks:
        if language in SHELL_LANGUAGES:
            joined = "\n".join(lines).replace("\\\n", " ").splitlines()  # a line ending in \ goes on
            found.update(shlex.join(shlex.split(line, comments=True)) for line in joined if line.strip())
    for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
        if span.split()[0] in COMMAND_WORDS:
            found.add(shlex.join(shlex.split(span)))
    return found - {""}


def test_chinese_readme_has_the_same_sections():
    english, chinese = headings(ENGLISH.read_text(encoding="utf-8")), headings(CHINESE.read_text(encoding="utf-8"))
    count = [sum(h.startswith("## ") for h in hs) for hs in (english, chinese)]
    assert count[0] == count[1], (f"README.md has {count[0]} sections (##), README.zh-CN.md has {count[1]}: "
                                  f"translate the missing ones. English sections: {english}")
    levels = [[h.split()[0] for h in hs] for hs in (english, chinese)]
    assert levels[0] == levels[1], f"the ##/### structure differs: README.md {english}, README.zh-CN.md {chinese}"


def test_chinese_readme_has_the_same_commands():
    english, chinese = commands(ENGLISH.read_text(encoding="utf-8")), commands(CHINESE.read_text(encoding="utf-8"))
    assert english, "no commands found in README.md; has the way it writes them changed?"
    assert english == chinese, ("README.zh-CN.md is behind README.md; update the translation.\n"
                                f"only in README.md: {sorted(english - chinese)}\n"
                                f"only in README.zh-CN.md: {sorted(chinese - english)}")


def test_readmes_link_to_each_other_under_the_title():
    for readme, other in ((ENGLISH, "README.zh-CN.md"), (CHINESE, "README.md")):
        lines = [line for line in readme.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert lines[0].startswith("# ") and f"]({other})" in lines[1], \
            f"{readme.name}: the line under the title should link to {other}"
