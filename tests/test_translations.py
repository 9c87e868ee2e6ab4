"""The Chinese translations keep up with their English originals: each stage's README.zh-CN.md and
docs/roadmap.zh-CN.md have the same sections and the same commands as the English file, link to it under the title,
and hold the same generated tables (scripts/results_table.py fills both; tests/test_results_table.py checks them).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from test_results_table import commands, headings

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(p.with_name(p.name.replace(".zh-CN", "")), p)
         for p in sorted([*REPO_ROOT.glob("stage*/README.zh-CN.md"), *REPO_ROOT.glob("docs/*.zh-CN.md")])]
IDS = [chinese.relative_to(REPO_ROOT).as_posix() for _, chinese in PAIRS]


@pytest.mark.parametrize("english, chinese", PAIRS, ids=IDS)
def test_same_sections(english, chinese):
    levels = [[h.split()[0] for h in headings(p.read_text(encoding="utf-8"))] for p in (english, chinese)]
    assert levels[0] == levels[1], f"the ##/### structure of {chinese.name} differs from {english.name}"


@pytest.mark.parametrize("english, chinese", PAIRS, ids=IDS)
def test_same_commands(english, chinese):
    en, zh = (commands(p.read_text(encoding="utf-8")) for p in (english, chinese))
    assert en == zh, f"only in the English file: {sorted(en - zh)}; only in the Chinese one: {sorted(zh - en)}"


@pytest.mark.parametrize("english, chinese", PAIRS, ids=IDS)
def test_each_links_to_the_other(english, chinese):
    assert f"]({chinese.name})" in english.read_text(encoding="utf-8")
    assert f"]({english.name})" in chinese.read_text(encoding="utf-8")
