"""Every `[text](file.md#anchor)` link in the docs and READMEs lands on a heading that exists (GitHub's anchor rules:
lower case, punctuation dropped, spaces to hyphens, "-1", "-2" for repeats). tests/test_docs.py checks that the file
exists; this checks the place in it, which moves whenever a section is renamed or renumbered."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*REPO_ROOT.glob("docs/*.md"), *REPO_ROOT.glob("README*.md"), *REPO_ROOT.glob("stage*/README*.md"),
               *REPO_ROOT.glob("stage*/exercises.md")])
LINK = re.compile(r"\]\(([^)\s]*?\.md)?#([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of `path` (outside code blocks)."""
    seen: dict[str, int] = {}
    out, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        m = re.match(r"#{1,6} (.*)", line)
        if in_code or not m:
            continue
        text = re.sub(r"<[^>]+>", "", m.group(1))                        # inline HTML
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)             # links keep their text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_slugs_follow_githubs_rules(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("# Stage 1: the MLP\n## 7. Training (AdamW, `lr`)\n## Results\n## Results\n## 核心路径\n")
    assert anchors(doc) == {"stage-1-the-mlp", "7-training-adamw-lr", "results", "results-1", "核心路径"}


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO_ROOT).as_posix() for d in DOCS])
def test_every_anchor_link_lands_on_a_heading(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target, anchor in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path = (doc.parent / target).resolve() if target else doc
        if path.is_file() and anchor.lower() not in anchors(path):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{doc.name}: anchors that match no heading: {broken}"
