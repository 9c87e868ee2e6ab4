"""Shared test helpers: tiny data sets in the exact offline formats, and a way to run a stage script.

The tiny data sets are small (200 train / 60 test rows) but learnable: every text carries a few words
that give its class away among random filler words, so a few epochs of training reach high accuracy.
Some texts hold a `<br />` tag or a bare `"`, the two things that trip up naive readers.
"""
from __future__ import annotations

import csv
import gzip
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Test tensors are tiny: one thread is faster than several that wait for each other (and for other jobs).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 200, 60

FILLER = ["the", "movie", "film", "plot", "actor", "scene", "story", "it", "was", "and", "a", "of", "this",
          "with", "music", "ending", "cast", "script", "i", "very"]
SENTIMENT = {0: ["awful", "boring", "hated", "terrible", "dull", "worst"],         # negative
             1: ["great", "wonderful", "loved", "excellent", "brilliant", "superb"]}  # positive
TOPICS = {0: ["government", "minister", "election", "treaty", "embassy"],   # World
          1: ["match", "team", "coach", "season", "goal"],                # Sports
          2: ["stocks", "profit", "market", "shares", "earnings"],        # Business
          3: ["software", "internet", "computer", "chip", "space"]}       # Sci/Tech
NEWS_FILLER = ["the", "on", "in", "said", "new", "a", "of", "after", "report", "week", "today", "for"]


def _sentence(rng: random.Random, cue_words: list[str], filler: list[str]) -> list[str]:
    words = rng.choices(filler, k=rng.randint(4, 8)) + rng.choices(cue_words, k=rng.randint(2, 3))
    rng.shuffle(words)
    return words


def tiny_rows(name: str, split: str) -> list[tuple]:
    """The rows the tiny files hold, regenerated identically on every call.

    imdb: (text, label); sst2: (sentence, label); ag_news: (class_index 1..4, title, description).
    """
    n = N_TRAIN if split == "train" else N_TEST
    rng = random.Random(f"{name}-{split}")
    rows = []
    for i in range(n):
        if name == "ag_news":
            label = i % 4
            title = " ".join(_sentence(rng, TOPICS[label], NEWS_FILLER)[:4]).capitalize()
            desc = " ".join(_sentence(rng, TOPICS[label], NEWS_FILLER))
            if i % 9 == 0:
                desc = f'he said "{desc}" on monday'  # quotes inside a quoted field are written as ""
            rows.append((label + 1, title, desc + "."))
            continue
        label = i % 2
        words = _sentence(rng, SENTIMENT[label], FILLER)
        if name == "imdb":
            text = " ".join(words).capitalize() + "."
            if i % 7 == 0:
                text = text.replace(" ", "<br /><br />", 1)  # IMDb keeps its HTML line breaks
            if i % 11 == 0:
                text = f'"{text}" 10/10 "bare quote'
            rows.append((text, label))
        else:  # sst2: lower-cased, tokenised, and some sentences hold a bare "
            text = " ".join(words) + " ."
            if i % 10 == 3:
                text = '" ' + text  # a sentence that starts with a quote: default CSV quoting would merge rows
            elif i % 10 == 7:
                text = text.replace(" ", ' " ', 1)
            rows.append((text, label))
    if name == "imdb":
        rows.sort(key=lambda r: r[1])  # the real files are sorted by (label, id)
    return rows


def write_tiny_data(root: Path) -> Path:
    """Write the three tiny data sets under `root` in exactly the offline formats (see each SOURCE.md)."""
    (root / "imdb").mkdir(parents=True)
    (root / "glue" / "sst2").mkdir(parents=True)
    (root / "ag_news").mkdir(parents=True)
    for split, file in [("train", "train.csv.gz"), ("test", "test.csv.gz")]:
        # IMDb: csv.writer, LF, header text,label,id,rating
        with gzip.open(root / "imdb" / file, "wt", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label", "id", "rating"])
            for i, (text, label) in enumerate(tiny_rows("imdb", split)):
                w.writerow([text, label, i, 8 if label else 2])
        # AG News: no header, every field quoted, class_index 1..4
        with gzip.open(root / "ag_news" / file, "wt", encoding="utf-8", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(tiny_rows("ag_news", split))
    for split, file in [("train", "train.tsv.gz"), ("test", "dev.tsv.gz")]:
        # SST-2: TSV with header sentence<TAB>label and no quoting at all
        with gzip.open(root / "glue" / "sst2" / file, "wt", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in tiny_rows("sst2", split))
    return root


# Stage 2: a small play-like text for Tiny Shakespeare, and WikiText-style lines (leading space, " = Title = "
# headings, blank lines, <unk>) for WikiText-2. Both repeat, so a tiny model can learn them.
TINY_PLAY = "".join(f"{who}:\n{line}\n\n" for who, line in [
    ("ROMEO", "But soft, what light through yonder window breaks?"),
    ("JULIET", "O Romeo, Romeo, wherefore art thou Romeo?"),
    ("MERCUTIO", "A plague on both your houses!"),
] * 40)
TINY_WIKI = {split: "".join([" \n", f" = Article {split} = \n", " \n"]
                            + [f" the {w} of the <unk> is a {w} @-@ like thing . \n"
                               for w in ["king", "river", "song", "city", "war"] * n])
             for split, n in [("train", 30), ("valid", 6), ("test", 6)]}


def write_tiny_lm_data(root: Path) -> Path:
    """Tiny Tiny-Shakespeare and WikiText-2 files in exactly the offline formats (gzip, UTF-8, LF)."""
    (root / "tiny_shakespeare").mkdir(parents=True, exist_ok=True)
    (root / "wikitext-2").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "tiny_shakespeare" / "input.txt.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(TINY_PLAY)
    for split, text in TINY_WIKI.items():
        with gzip.open(root / "wikitext-2" / f"wiki.{split}.tokens.gz", "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    return root


@pytest.fixture
def tiny_lm_data_dir(tmp_path) -> Path:
    return write_tiny_lm_data(tmp_path / "data")


@pytest.fixture
def tiny_data_dir(tmp_path) -> Path:
    """A data directory with tiny imdb, glue/sst2 and ag_news files in the offline formats."""
    return write_tiny_data(tmp_path / "data")


@pytest.fixture(scope="session")
def shared_tiny_data_dir(tmp_path_factory) -> Path:
    """The same tiny data, written once per session, for fixtures that outlive one test. Never modify it."""
    return write_tiny_data(tmp_path_factory.mktemp("shared") / "data")


def run_script(script: str, *args, data_dir: Path, module: bool = False, stdin: str = "", env: dict | None = None,
               timeout: float = 120, stage: str = "stage1_mlp") -> subprocess.CompletedProcess:
    """Run <stage>/<script>.py (or `python -m <stage>.<script>`) from the repo root and capture its output.

    MY_LLM_DATA points at `data_dir`, Hugging Face is kept offline so that no test ever downloads, and torch
    uses one thread, like the tests in this process.
    """
    cmd = [sys.executable, "-m", f"{stage}.{script}"] if module else [sys.executable, f"{stage}/{script}.py"]
    full_env = {**os.environ, "MY_LLM_DATA": str(data_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd + [str(a) for a in args], cwd=REPO_ROOT, env=full_env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def _descendants(pid: int) -> list[int]:
    """Every process started by `pid`, at any depth (Linux /proc): torchrun puts its workers in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def run_to_end(cmd: list[str], *, timeout: float, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=timeout) for the multi-process tests, with one
    difference: processes that do not end in time are stopped with SIGABRT under PYTHONFAULTHANDLER, so every one of
    them prints its threads' Python stacks, and the test fails showing where each process stood, not a bare timeout."""
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*reversed(_descendants(proc.pid)), proc.pid]:   # the workers first, then torchrun
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd[:6]))} ... did not end within {timeout} s; the stacks of its processes "
                    f"when stopped:\n{err[-8000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """Give pytest its own SIGINT and SIGTERM handlers back, whatever a test or a train.main did to them."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def cli(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run a script's main() the way its `__main__` block does; return the exit code and what went to stderr."""
    from scripts.common import run_cli
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(argv))
    return e.value.code, capsys.readouterr().err


def assert_one_line_error(code, err: str, pattern: str) -> None:
    """A non-zero exit, no traceback, and exactly one `error:` line (ours or argparse's) that matches pattern."""
    assert code not in (0, None)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if re.match(r"(\S+: )?error: ", line)]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]


def assert_bad_checkpoints_rejected(main, good: Path, tmp_path: Path, capsys, stage: str, extra: list[str] = ()) -> None:
    """A script's main() given a truncated checkpoint, one from another stage, and a missing one: one clear line each."""
    from scripts.common import save_checkpoint
    (tmp_path / "corrupt.pt").write_bytes(good.read_bytes()[:500])
    save_checkpoint({"stage": "some_other_stage", "model": {}, "config": {}}, tmp_path / "other.pt")
    for name, pattern in [("corrupt.pt", r"cannot read checkpoint .*corrupt"),
                          ("other.pt", rf"written by some_other_stage, not {stage}"),
                          ("missing.pt", r"checkpoint not found")]:
        code, err = cli(main, ["--checkpoint", str(tmp_path / name), *extra], capsys)
        assert_one_line_error(code, err, pattern)


def signal_mid_training(script: str, args: list, out_dir: Path, wait_for: str, sig: int,
                        stderr_path: Path) -> subprocess.CompletedProcess:
    """Start `script` (a train.py, from the repo root), send `sig` once `wait_for` appears in its train.log, wait.

    Returns the finished process (returncode set); its stderr is in `stderr_path`.
    """
    with open(stderr_path, "w") as se:
        proc = subprocess.Popen([sys.executable, script, *[str(a) for a in args]], cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=se, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 120
            log = out_dir / "train.log"
            while not (log.exists() and wait_for in log.read_text()):
                assert proc.poll() is None, stderr_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{wait_for!r} not in {log} within 120 s"
                time.sleep(0.05)
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data(*folders): trains or reads the real data sets in $MY_LLM_DATA; "
                                       "skipped unless each named folder (e.g. \"imdb\") is there (CI sets it)")
    config.addinivalue_line("markers", "slow: starts subprocesses or several processes; `pytest -m \"not slow\"` "
                                       "is the quick local loop, CI runs everything")


def real_data_root(folders=()) -> Path | None:
    """$MY_LLM_DATA, resolved, when it is set and holds every folder in `folders`; else None."""
    root = os.environ.get("MY_LLM_DATA")
    if not root or not all((Path(root) / f).is_dir() for f in folders):
        return None
    return Path(root).resolve()


def pytest_runtest_setup(item):
    """The one gate for real data: a test marked real_data("imdb", ...) is skipped when a folder it names is missing."""
    marker = item.get_closest_marker("real_data")
    if marker is not None and real_data_root(marker.args) is None:
        pytest.skip(f"MY_LLM_DATA does not hold the real data sets {', '.join(marker.args) or ''}".rstrip())


# Stage 3: a tiny Multi30k (and Tatoeba) whose "translations" follow a fixed dictionary, with the adjective
# moved after the noun in French, so there is something for attention to align. Cased, with punctuation
# attached to the last word as in the raw files, and French's no-break space before "!".
EN_FR_DE = {"A": ("Un", "Ein"), "The": ("Le", "Der"), "dog": ("chien", "Hund"), "man": ("homme", "Mann"),
            "cat": ("chat", "Katze"), "boy": ("garçon", "Junge"), "red": ("rouge", "roter"), "big": ("grand", "großer"),
            "small": ("petit", "kleiner"), "runs": ("court", "läuft"), "sleeps": ("dort", "schläft"),
            "eats": ("mange", "isst"), "outside": ("dehors", "draußen"), "today": ("aujourd'hui", "heute")}
MULTI30K_SIZES = {"train": 240, "val": 30, "test_2016_flickr": 30, "test_2017_flickr": 20}


def tiny_parallel(n: int, seed: str) -> list[tuple[str, str, str]]:
    """(en, de, fr) triples from the dictionary above."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        det, noun = rng.choice(["A", "The"]), rng.choice(["dog", "man", "cat", "boy"])
        adj, verb = rng.choice(["red", "big", "small"]), rng.choice(["runs", "sleeps", "eats"])
        extra = rng.choice(["", " outside", " today"])
        end = "!" if i % 5 == 0 else "."
        en = f"{det} {adj} {noun} {verb}{extra}{end}"
        t = lambda w, k: EN_FR_DE[w][k]  # noqa: E731
        fr = f"{t(det, 0)} {t(noun, 0)} {t(adj, 0)} {t(verb, 0)}" + (f" {t(extra.strip(), 0)}" if extra else "") \
            + ("\u00a0!" if end == "!" else ".")
        de = f"{t(det, 1)} {t(adj, 1)} {t(noun, 1)} {t(verb, 1)}" + (f" {t(extra.strip(), 1)}" if extra else "") + end
        out.append((en, de, fr))
    return out


def write_tiny_multi30k(root: Path) -> Path:
    """Tiny Multi30k files (gzip, one sentence per line, line-aligned) and a tiny Tatoeba fra.txt.gz."""
    (root / "multi30k").mkdir(parents=True, exist_ok=True)
    for split, n in MULTI30K_SIZES.items():
        triples = tiny_parallel(n, split)
        for k, lang in enumerate(["en", "de", "fr"]):
            with gzip.open(root / "multi30k" / f"{split}.{lang}.gz", "wt", encoding="utf-8", newline="") as f:
                f.writelines(t[k] + "\n" for t in triples)
    (root / "tatoeba_eng_fra").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "tatoeba_eng_fra" / "fra.txt.gz", "wt", encoding="utf-8", newline="") as f:
        f.writelines(f"{en}\t{fr}\n" for en, _, fr in tiny_parallel(600, "tatoeba"))
    return root


@pytest.fixture
def tiny_mt_data_dir(tmp_path) -> Path:
    return write_tiny_multi30k(tmp_path / "data")


@pytest.fixture
def real_data_dir(request) -> Path:
    """$MY_LLM_DATA, for a test marked real_data (the marker decides whether it runs; see pytest_runtest_setup)."""
    marker = request.node.get_closest_marker("real_data")
    assert marker is not None, "a test that uses real_data_dir must be marked @pytest.mark.real_data(...)"
    return real_data_root(marker.args)
