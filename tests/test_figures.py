"""The teaching diagrams in docs/images/ come from scripts/figures.py, and the docs show what the script draws.

The first test runs the command into a temporary folder: it must write exactly the files `FIGURES` names, each a
readable PNG, and a second run must give the same bytes (no timestamp in the files, so regenerating them changes
nothing in git unless a drawing changed). The others read the docs: every image a doc embeds exists, and every figure
the script draws is committed in docs/images/ and shown in at least one doc. (tests/test_docs.py checks links in
general; this one is about the figures.)
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image

from scripts import figures

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES = REPO_ROOT / "docs" / "images"
DOCS = sorted(REPO_ROOT.glob("docs/*.md"))
IMAGE_LINK = re.compile(r"!\[[^\]\n]*\]\(([^)\s]+\.(?:png|svg))\)")  # ![alt](images/name.png)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_images() -> dict[Path, list[str]]:
    """{image file (absolute): the docs (relative) that embed it}, from the ![...](...) links of docs/*.md."""
    found: dict[Path, list[str]] = {}
    for doc in DOCS:
        for target in IMAGE_LINK.findall(doc.read_text(encoding="utf-8")):
            found.setdefault((doc.parent / target).resolve(), []).append(str(doc.relative_to(REPO_ROOT)))
    return found


def test_the_command_writes_exactly_its_figures_and_reruns_give_the_same_bytes(tmp_path, capsys):
    assert figures.main(["--out-dir", str(tmp_path / "a")]) == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == sorted(figures.FIGURES), "scripts/figures.py wrote other files than FIGURES names"
    assert capsys.readouterr().out.split() == [str(tmp_path / "a" / name) for name in figures.FIGURES]
    for name in written:
        data = (tmp_path / "a" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{name} is not a PNG"
        assert b"tEXt" not in data and b"tIME" not in data, f"{name} carries text or time metadata"
        corner = matplotlib.image.imread(tmp_path / "a" / name)[0, 0]
        assert corner.tolist() in ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), f"{name}: background is not white"
    # one figure drawn again: the same bytes
    name, draw = next(iter(figures.FIGURES.items()))
    draw(tmp_path / "b" / name)
    assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), "a rerun changed the bytes"


def test_every_image_the_docs_embed_exists():
    missing = [f"{', '.join(docs)}: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}"
               for path, docs in embedded_images().items() if not path.is_file()]
    assert not missing, "docs embed images that do not exist:\n" + "\n".join(missing)


def test_every_figure_is_committed_and_shown_in_a_doc():
    shown = embedded_images()
    not_committed = [name for name in figures.FIGURES if not (IMAGES / name).is_file()]
    assert not not_committed, f"run python scripts/figures.py: docs/images/ lacks {not_committed}"
    not_shown = [name for name in figures.FIGURES if (IMAGES / name).resolve() not in shown]
    assert not not_shown, f"figures no doc embeds: {not_shown}"
