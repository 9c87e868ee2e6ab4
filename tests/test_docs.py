"""The docs point at the code; this test checks that every pointer still lands, so docs cannot drift from code.

It reads docs/*.md, every stage*/README.md and the top README.md, collects the references they make to repository
files and to Python names in those files, and checks each one against the tree: the file must exist, and the name
must be defined in it. Definitions are found with `ast` (nothing is imported, so the check is fast and cannot fail
on a missing optional dependency).

The references are recognised in the forms the docs actually write them:

  links           [model.py](../stage4_transformer/model.py)        resolved from the doc's own folder
  a file          `stage4_transformer/model.py`, `train.py --quick`  a token ending in .py, .ipynb or .md
  file table      `stage1_mlp/data.py`: `tokenize`, `Vocab`, `Bags` (`from_texts`), `train_val_split`
                  (a name in brackets after a name is a member of it: `Bags.from_texts`)
  file, name      `stage2_rnn_lstm/model.py` `lstm_cell`, `... model.py` `rnn_cell` and `gru_cell`,
                  "In `stage3_attention_seq2seq/model.py`, `Attention.__init__` ..."
  name in file    `DATASETS` in `stage5_gpt/data.py`, `Linear`, `ReLU` and `Dropout` in `stage1_mlp/model.py`
  one span        `data.py: phrase_groups`, `train.py:lr_at`
  class member    `Vocab.build` anywhere in a stage's doc: if the stage defines `Vocab`, it must have `build`
  README table    | `model.py` | `GPTConfig`, `RMSNorm`, RoPE (`rope_tables`, `apply_rope`), ... |
  code blocks     python stage1_mlp/train.py, pytest tests/test_stage6_model.py (paths with a folder), and
                  layout listings: stage1_mlp/   model.py, data.py, ..., results/

A path with a folder (`stage5_gpt/data.py`, `tests/test_stage4_model.py`) is relative to the repository root, the
way commands are run; a bare file name (`train.py`) belongs to the doc's own stage: the folder of a stage README, or
for docs/stageN_*.md the stageN_* folder (a bare `test_*.py` is in tests/). The top README has no stage, so its bare
file names are not checked.

Anything else in backticks (`--lr`, `nn.LSTM`, `(B, T, C)`, `best.pt`, a name with no file next to it) is prose, not a
reference. A name in a file is a function, class or assignment at the top of the module (imports do not count), or a
`Class.member`: a method, a class attribute or dataclass field, or an attribute the class's methods set on `self`.
A README table describes a file loosely (`Decoder` (one `step` ...)), so there a plain name may also be a member of
any class in the file, and names of outside libraries (OUTSIDE_NAMES) are skipped.
"""
from __future__ import annotations

import ast
import bisect
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
# `name`, or `Class.member` with a CapWords class (so `vocab.txt` and `nn.LSTM` are not names of ours)
IDENTIFIER = re.compile(r"[A-Za-z_]\w*|_*[A-Z]\w*\.[A-Za-z_]\w*")
FILE_TOKEN = re.compile(r"[\w./-]*\w\.(?:py|ipynb|md)")             # `model.py`, `stage5_gpt/data.py`, `README.md`
FILE_COLON_NAME = re.compile(r"([\w./-]+\.py)\s*:\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)")  # `train.py:lr_at`
FENCE = re.compile(r"^\s*(```|~~~)")
# A gap between two code spans that keeps a list going: ", ", " and ", ", or ".
LIST_GAP = re.compile(r"\s*(?:,|,?\s+and|,?\s+or)\s+")
# Names a README table mentions that belong to other libraries, not to the file the row describes.
OUTSIDE_PREFIXES = ("F.",)
OUTSIDE_NAMES = {"tokenizers", "transformers", "torchrun", "GPT2LMHeadModel"}


@dataclass
class Reference:
    """One pointer from a doc into the code: a file, or a name in a file (`name` is "" for a file alone)."""
    doc: Path
    line: int
    text: str        # what the doc wrote, for the message
    path: Path       # the file it points at, absolute
    name: str = ""   # `func`, `Class` or `Class.member`
    loose: bool = False  # a README table row: a plain name may also be a member of any class in the file

    def where(self, root: Path) -> str:
        return f"{self.doc.relative_to(root)}:{self.line}: {self.text}"


# ---------------------------------------------------------------------------------------------------------------------
# What a Python file defines


def _assigned_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _assigned_names(elt)]
    return []


def _statements(body: list[ast.stmt]):
    """The statements of a body, looking into `if`, `try` and `with` blocks (a definition there is still top level)."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                yield from _statements(block)
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body)


def _defined_in(body: list[ast.stmt]) -> set[str]:
    """Names a module or class body defines: functions, classes and assignments.

    Imports do not count: a doc that names a file for a function should name the file where it is written.
    """
    names = set()
    for node in _statements(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(n for t in node.targets for n in _assigned_names(t))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            names.update(_assigned_names(node.target))
    return names


def _self_attributes(cls: ast.ClassDef) -> set[str]:
    """Attributes the class's methods set on `self` (`self.itos = ...`): members a reader can look up too."""
    names = set()
    for node in ast.walk(cls):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                names.add(t.attr)
    return names


@functools.cache
def definitions(path: Path) -> tuple[set[str], dict[str, set[str]]]:
    """(top-level names, {class name: member names}) of a Python file, parsed once per path."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    classes = {node.name: _defined_in(node.body) | _self_attributes(node)
               for node in _statements(tree.body) if isinstance(node, ast.ClassDef)}
    return _defined_in(tree.body), classes


def missing_name(path: Path, name: str, loose: bool = False) -> str | None:
    """Why `name` is not defined in the Python file `path`, or None when it is."""
    top, classes = definitions(path)
    if "." in name:
        owner, member = name.split(".")
        if owner not in classes:
            return f"no class {owner!r} in {path.name}"
        return None if member in classes[owner] else f"class {owner!r} in {path.name} has no member {member!r}"
    if name in top or (loose and any(name in members for members in classes.values())):
        return None
    return f"{name!r} is not defined in {path.name}"


# ---------------------------------------------------------------------------------------------------------------------
# What a doc points at


def stage_folder(doc: Path, root: Path) -> Path | None:
    """The folder a bare file name (`train.py`) in this doc belongs to, or None where there is no such folder.

    A stage README's own folder; for docs/stage3_attention.md the stage3_* folder; nothing for the top README.
    (A bare `test_*.py` is in tests/, see `resolve`.)
    """
    if doc.parent.name.startswith("stage"):
        return doc.parent
    match = re.match(r"(stage\d+)_", doc.name)
    if doc.parent.name == "docs" and match:
        folders = sorted(root.glob(match.group(1) + "_*/"))
        assert len(folders) == 1, f"{doc}: expected one {match.group(1)}_* folder, found {folders}"
        return folders[0]
    return None


def resolve(token: str, doc: Path, root: Path) -> Path | None:
    """The file a path in backticks or in a code block means; None for a bare name in a doc without a stage."""
    if "/" in token:
        return root / token
    if token.startswith("test_"):  # the tests all live in tests/
        return root / "tests" / token
    home = stage_folder(doc, root)
    return home / token if home else None


def blank_code_blocks(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The text with fenced code blocks blanked (line numbers kept), and the (line number, line) pairs inside them."""
    prose, code, inside = [], [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
            prose.append("")
        elif inside:
            code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), code


def _is_name(span: str) -> bool:
    return IDENTIFIER.fullmatch(span) is not None


def _file_of(span: str) -> str | None:
    """The file a code span names when the whole span is one (`stage1_mlp/model.py`), else None."""
    return span if FILE_TOKEN.fullmatch(span) else None


def find_references(text: str, doc: Path, root: Path) -> list[Reference]:
    """Every reference to a repository file or a name in one that the doc `text` (read from `doc`) makes."""
    prose, code_lines = blank_code_blocks(text)
    line_starts = [0] + [m.end() for m in re.finditer("\n", prose)]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    refs: list[Reference] = []

    def add(offset: int, shown: str, token: str, name: str = "", loose: bool = False) -> None:
        path = resolve(token, doc, root)
        if path is not None:
            refs.append(Reference(doc, line_of(offset), shown, path, name, loose))

    # Links, from the doc's own folder; web addresses and anchors within the page are not files.
    for m in LINK.finditer(prose):
        target = m.group(1).split("#")[0]
        if target and not re.match(r"[a-z]+:", target):
            refs.append(Reference(doc, line_of(m.start()), m.group(0), (doc.parent / target).resolve()))

    # Paths with a folder in code blocks: the commands are run from the repository root.
    for number, line in code_lines:
        for token in re.findall(r"(?<![\w/.*-])(?:stage\d\w*|scripts|tests)/[\w/.-]+\.(?:py|ipynb|md)\b", line):
            refs.append(Reference(doc, number, token, root / token))
        # A layout listing: "stage1_mlp/        model.py, data.py, ..., results/"
        layout = re.match(r"(stage\d\w*/)\s+([\w.]+(?:, [\w./]+)+)\s*$", line)
        if layout:
            for item in layout.group(2).split(", "):
                refs.append(Reference(doc, number, layout.group(1) + item, root / layout.group(1) / item))

    spans = list(CODE_SPAN.finditer(prose))
    gap_before = [prose[(spans[i - 1].end() if i else 0):s.start()] for i, s in enumerate(spans)]
    gap_after = gap_before[1:] + [prose[spans[-1].end():] if spans else ""]

    for i, s in enumerate(spans):
        span = s.group(1).strip()

        # `data.py: phrase_groups`, `train.py:lr_at`
        m = FILE_COLON_NAME.fullmatch(span)
        if m:
            add(s.start(), s.group(0), m.group(1), m.group(2))
            continue

        # Any file path in a span, also inside a command: `stage5_gpt/tokenizer.py --compare-hf`.
        file = _file_of(span)
        if file is None:
            for token in span.split():
                if FILE_TOKEN.fullmatch(token) and "*" not in token:
                    add(s.start(), s.group(0), token)
            continue
        add(s.start(), s.group(0), file)

        # `file`: `a`, `b` (`member`, ...), `c`  -- a list after a colon, brackets for members
        if gap_after[i].startswith(":"):
            owner, depth, j = "", 0, i + 1
            gap = gap_after[i][1:]
            while j < len(spans) and re.fullmatch(r"[\s,;()]*", gap) and _is_name(spans[j].group(1)):
                depth += gap.count("(") - gap.count(")")
                name = spans[j].group(1)
                if depth > 0 and owner:
                    add(spans[j].start(), f"{s.group(0)}: {owner} ({spans[j].group(0)})", file, f"{owner}.{name}")
                else:
                    owner = name
                    add(spans[j].start(), f"{s.group(0)}: {spans[j].group(0)}", file, name)
                gap = gap_after[j]
                j += 1

        # `file` `a`, `b` and `c`  -- names right after the file; also "In `file`, `a` ..."
        j, gap = i + 1, gap_after[i]
        first_gap = r",?\s+" if re.search(r"(^|\s)[Ii]n\s+$", gap_before[i]) else r"\s+"
        while j < len(spans) and (re.fullmatch(first_gap, gap) if j == i + 1 else LIST_GAP.fullmatch(gap)):
            name = spans[j].group(1)
            if not _is_name(name) or _file_of(name):
                break
            add(spans[j].start(), f"{s.group(0)} {spans[j].group(0)}", file, name)
            gap = gap_after[j]
            j += 1

        # `a`, `b` and `c` in `file`  -- names right before the file
        if re.fullmatch(r"\s+in\s+", gap_before[i]):
            j = i - 1
            while j >= 0 and _is_name(spans[j].group(1)) and not _file_of(spans[j].group(1)):
                add(spans[j].start(), f"{spans[j].group(0)} in {s.group(0)}", file, spans[j].group(1))
                if not LIST_GAP.fullmatch(gap_before[j]):
                    break
                j -= 1

    # `Class.member` anywhere: when the doc's stage (or scripts/common.py) defines the class, the member must exist.
    # A class the stage does not define belongs to another library or another stage and is not checked here.
    home = stage_folder(doc, root)
    if home is not None:
        py_files = sorted(home.glob("*.py")) + [root / "scripts" / "common.py"]
        for s in spans:
            name = s.group(1)
            if "." in name and _is_name(name):
                owner, member = name.split(".")
                homes = [f for f in py_files if f.is_file() and owner in definitions(f)[1]]
                if homes:
                    best = next((f for f in homes if member in definitions(f)[1][owner]), homes[0])
                    refs.append(Reference(doc, line_of(s.start()), s.group(0), best, name))

    # README tables: | `model.py` | what it holds, with `names` of the file |
    for number, line in enumerate(prose.splitlines(), start=1):
        m = re.match(r"\s*\|\s*`([^`]+\.py)`\s*\|(.*)\|\s*$", line)
        if not m:
            continue
        for name in CODE_SPAN.findall(m.group(2)):
            if _is_name(name) and not name.startswith(OUTSIDE_PREFIXES) and name not in OUTSIDE_NAMES:
                path = resolve(m.group(1), doc, root)
                if path is not None:
                    refs.append(Reference(doc, number, f"`{m.group(1)}` | `{name}`", path, name, loose=True))

    # A reference found by two patterns is checked once.
    unique: dict = {}
    for r in refs:
        unique.setdefault((r.line, r.path, r.name), r)
    return sorted(unique.values(), key=lambda r: r.line)


def check_doc(text: str, doc: Path, root: Path) -> tuple[list[Reference], list[str]]:
    """The references the doc `text` makes and one message per broken one ("doc:line: reference: what is missing")."""
    refs = find_references(text, doc, root)
    problems = []
    for ref in refs:
        if not ref.path.exists():
            shown = ref.path.relative_to(root) if ref.path.is_relative_to(root) else ref.path
            problems.append(f"{ref.where(root)}: file {shown} does not exist")
        elif ref.name and ref.path.suffix == ".py":
            why = missing_name(ref.path, ref.name, ref.loose)
            if why:
                problems.append(f"{ref.where(root)}: {why} ({ref.path.relative_to(root)})")
        elif ref.name:
            problems.append(f"{ref.where(root)}: {ref.path.name} is not a Python file, cannot define {ref.name!r}")
    return refs, problems


# ---------------------------------------------------------------------------------------------------------------------
# The tests

DOCS = (sorted(REPO_ROOT.glob("docs/*.md")) + sorted(REPO_ROOT.glob("stage*/README*.md"))
        + sorted(REPO_ROOT.glob("README*.md")))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_doc_references_exist(doc):
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    # A doc that suddenly yields nothing means the patterns no longer match how it is written: say so, do not pass.
    assert refs, f"{doc.relative_to(REPO_ROOT)}: no code references found; has the way it writes them changed?"
    assert not problems, "broken references to code:\n" + "\n".join(problems)


DEMO_MODEL = """\
import torch

WIDTH = 4


class Net:
    size: int = 3

    def __init__(self):
        self.head = None

    def forward(self, x):
        return x


def build():
    return Net()
"""


def demo_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny repository with stage9_demo/model.py, and where its doc docs/stage9_demo.md would be."""
    (tmp_path / "stage9_demo").mkdir()
    (tmp_path / "stage9_demo" / "model.py").write_text(DEMO_MODEL)
    (tmp_path / "docs").mkdir()
    return tmp_path, tmp_path / "docs" / "stage9_demo.md"


def test_checker_reports_missing_file_and_missing_name(tmp_path):
    root, doc = demo_repo(tmp_path)
    text = ("Train it with `python stage9_demo/train.py --lr 3e-3`.\n"   # there is no train.py
            "`stage9_demo/model.py` `build` makes a `Net`,\n"
            "but `stage9_demo/model.py` `build_twice` was renamed.\n")   # and no build_twice
    refs, problems = check_doc(text, doc, root)
    assert problems == [
        "docs/stage9_demo.md:1: `python stage9_demo/train.py --lr 3e-3`: file stage9_demo/train.py does not exist",
        "docs/stage9_demo.md:3: `stage9_demo/model.py` `build_twice`: 'build_twice' is not defined in model.py "
        "(stage9_demo/model.py)",
    ]


def test_checker_reads_each_way_of_writing_a_reference(tmp_path):
    root, doc = demo_repo(tmp_path)
    text = ("| the model | `stage9_demo/model.py`: `WIDTH`, `Net` (`forward`, `size`, `head`), `build` |\n"  # 1
            "`stage9_demo/model.py` `build` and `Net.forward`; `build` alone is prose.\n"                  # 2
            "`Net` and `WIDTH` in `model.py` are defined, and so is `model.py:build`.\n"                   # 3
            "In `stage9_demo/model.py`,\n`Net.__init__` sets `Net.head`; see [it](../stage9_demo/model.py).\n"  # 4-5
            "Not references: `--lr`, `nn.LSTM`, `(B, T)`, `best.pt`, `F.softmax`, `Vocab.build`.\n"         # 6
            "```bash\npython stage9_demo/model.py --quick\n```\n")                                         # 7-9
    refs, problems = check_doc(text, doc, root)
    assert not problems, problems
    found = {(r.line, r.name) for r in refs if r.path == root / "stage9_demo" / "model.py"}
    assert found == {(1, ""), (1, "WIDTH"), (1, "Net"), (1, "Net.forward"), (1, "Net.size"), (1, "Net.head"),
                     (1, "build"), (2, ""), (2, "build"), (2, "Net.forward"), (3, ""), (3, "Net"), (3, "WIDTH"),
                     (3, "build"), (4, ""), (5, "Net.__init__"), (5, "Net.head"), (5, ""), (8, "")}
    assert all(r.path == root / "stage9_demo" / "model.py" for r in refs)
