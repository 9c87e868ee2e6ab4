"""scripts/verify_installation.py: passes on a working set-up, treats missing data as a warning, and turns every problem
(a stage whose model fails, a missing package, an absent device) into one line of advice and exit code 1."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import verify_installation as verify

REPO_ROOT = Path(__file__).resolve().parents[1]
FAIL = r"(✗|FAIL)"  # the mark depends on what the console can print


def run_verify(*args, data_dir: Path | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """The script as a learner runs it, from the repo root, with Hugging Face kept offline."""
    cmd = [sys.executable, "-m", "scripts.verify_installation"] if module else [sys.executable,
                                                                                "scripts/verify_installation.py"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONIOENCODING": "utf-8"}
    if data_dir is not None:
        env["MY_LLM_DATA"] = str(data_dir)
    return subprocess.run(cmd + [str(a) for a in args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)


@pytest.mark.slow
@pytest.mark.real_data("imdb", "glue", "tiny_shakespeare", "wikitext-2", "multi30k")
def test_passes_with_the_real_data(real_data_dir):
    r = run_verify(data_dir=real_data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"Data in {real_data_dir} (from $MY_LLM_DATA)" in r.stdout
    for line in ["✓ Tiny Shakespeare (tiny_shakespeare/input.txt.gz)", "✓ Multi30k (multi30k/, 12 files)",
                 "✓ IMDb (imdb/, 2 files)", "✓ torch ", "✓ device "]:
        assert line in r.stdout, r.stdout
    for stage, _, _ in verify.MODEL_CHECKS:
        assert re.search(rf"✓ {stage}: \w+, output \([\d, ]+\), [\d,]+ parameters", r.stdout), r.stdout
    assert "0 failed" in r.stdout


@pytest.mark.slow
def test_empty_data_dir_is_only_warnings(tmp_path):
    """Every data set reported missing, with the stage that downloads it; still exit 0 (run as a module, too)."""
    r = run_verify("--data-dir", tmp_path, "--device", "cpu", module=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"Data in {tmp_path} (from --data-dir)" in r.stdout
    for name, folder, _, used_by, source in verify.DATASETS:
        assert f"! {name} ({folder}/) missing; used by {used_by}; downloaded from {source} on first use" in r.stdout
    assert "Ready. The warnings (!) do not stop the course: missing data sets are downloaded on first use" in r.stdout


def test_a_failing_stage_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    def broken_forward(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(a second line that must not show)")

    monkeypatch.setattr("stage4_transformer.model.Transformer.forward", broken_forward)
    code = verify.main(["--data-dir", str(tmp_path), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err and "a second line" not in out
    failed = [line for line in out.splitlines() if re.match(rf"\s+{FAIL} ", line)]
    assert len(failed) == 1, out
    assert re.search(r"stage4_transformer: RuntimeError: mat1 and mat2 shapes cannot be multiplied -- .*"
                     r"pytest tests/test_stage4_model\.py", failed[0]), failed[0]
    assert re.search(r"✓ stage5_gpt: GPT, output", out)  # the stages after it still ran
    assert "1 failed" in out and "Not ready" in out


def test_a_stage_that_does_not_import(monkeypatch):
    """An import error inside the stage (a half-edited file) and a missing package get different advice."""
    monkeypatch.setitem(sys.modules, "stage5_gpt.model", None)  # makes `from stage5_gpt.model import ...` fail
    status, text = verify.check_model("stage5_gpt", verify.run_stage5, "tests/test_stage5_model.py", "cpu")
    assert status == "fail" and "the stage's code does not import" in text

    def needs_a_package(device):
        import no_such_package_xyz  # noqa: F401

    status, text = verify.check_model("stage1_mlp", needs_a_package, "tests/test_stage1_parity.py", "cpu")
    assert status == "fail" and "no_such_package_xyz" in text and "pip install -r requirements.txt" in text


def test_unknown_device_fails_and_skips_the_models(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert verify.main(["--data-dir", str(tmp_path), "--device", "cuda"]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"{FAIL} --device cuda was asked for, but torch sees no CUDA GPU", out), out
    assert "skipped: no device to run them on" in out


def test_packages_missing_or_old(monkeypatch):
    monkeypatch.setattr(verify, "PACKAGES", {
        "no-such-package-xyz": ("no_such_package_xyz", "something essential", True),
        "no-such-extra-xyz": ("no_such_extra_xyz", "the tests only", False),
        "numpy": ("numpy", "arrays", True),
    })
    monkeypatch.setattr(verify, "read_requirements", lambda: {"no-such-package-xyz": "1.2", "numpy": "999.0"})
    lines = dict((text.split()[0], (status, text)) for status, text in verify.check_packages())
    assert lines["no-such-package-xyz"] == ("fail", "no-such-package-xyz is not installed; the course needs it for "
                                                    'something essential: pip install "no-such-package-xyz>=1.2"')
    assert lines["no-such-extra-xyz"][0] == "warn" and "pip install no-such-extra-xyz" in lines["no-such-extra-xyz"][1]
    assert lines["numpy"][0] == "warn" and 'pip install -U "numpy>=999.0"' in lines["numpy"][1]
    assert lines["pip"] == ("note", "pip install -r requirements.txt installs them all (see README, Quick start)")


def test_every_requirement_is_described():
    """requirements.txt is where the minimum versions come from; each package there has a line saying what it is for."""
    requirements = verify.read_requirements()
    assert requirements["torch"] == "2.13.0" and requirements["regex"] == "2026.11.15"
    assert set(requirements) <= set(verify.PACKAGES)
    assert verify.version_tuple("2.13.0+cpu") == (2, 13, 0) < verify.version_tuple("2.13.1")


def test_data_table_matches_the_loaders():
    """The files the script looks for are exactly the files the stages' loaders read (from their own tables)."""
    from stage1_mlp.data import DATASETS as STAGE1
    from stage2_rnn_lstm.data import DATASETS as STAGE2
    from stage3_attention_seq2seq.data import DATASETS as STAGE3
    from stage3_attention_seq2seq.data import MULTI30K_SPLITS
    from stage4_transformer.data import LANGS, SPLITS
    from stage5_gpt.data import DATASETS as STAGE5
    from stage5_gpt.data import SST2
    from stage6_bert.documents import IMDB_UNSUP, WIKITEXT
    from stage6_bert.glue import SPLITS as GLUE_SPLITS
    from stage6_bert.glue import TASKS

    from stage5_gpt.instructions import INSTRUCTIONS_FILE

    read = {f"{info['folder']}/{file}" for table in (STAGE1, STAGE2, STAGE5) for info in table.values()
            if not info.get("documents") for file in info["files"].values()}   # course_mix reads the others
    read.add(INSTRUCTIONS_FILE)
    read |= {f"{SST2['folder']}/{file}" for file in SST2["files"].values()}
    read |= {f"multi30k/{name}.{lang}.gz" for name in MULTI30K_SPLITS.values() for lang in STAGE3["multi30k"]["langs"]}
    read |= {f"multi30k/{name}.{lang}.gz" for name in SPLITS.values() for lang in LANGS}
    read.add(f"{STAGE3['tatoeba']['folder']}/fra.txt.gz")  # stage 3 names this file in load_pairs, not in a table
    read |= {f"{WIKITEXT['folder']}/{file}" for file in WIKITEXT["files"].values()}
    read.add(f"{IMDB_UNSUP['folder']}/{IMDB_UNSUP['file']}")
    read |= {f"glue/{task}/{split}.tsv.gz" for task in TASKS for split in GLUE_SPLITS}
    checked = {f"{folder}/{file}" for _, folder, files, _, _ in verify.DATASETS for file in files}
    assert checked == read


def test_broken_and_absent_data_are_warnings(tmp_path):
    (tmp_path / "tiny_shakespeare").mkdir()
    (tmp_path / "tiny_shakespeare" / "input.txt.gz").write_text("<html>404: Not Found</html>")
    lines = verify.check_data(tmp_path)
    assert {status for status, _ in lines} == {"warn"}
    assert any("Tiny Shakespeare: input.txt.gz" in text and "not gzip" in text for _, text in lines)
    absent = verify.check_data(tmp_path / "nowhere")
    assert absent[0] == ("warn", f"{tmp_path / 'nowhere'} does not exist yet: a loader creates it when it first "
                                 f"downloads a data set")


def test_ascii_console(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert verify.marks() == {"ok": "OK  ", "warn": "WARN", "fail": "FAIL", "note": "    "}


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        verify.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "--device" in out and "(default: auto)" in out
