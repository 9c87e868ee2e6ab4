"""Use the web demo as a person would, in a real headless Chromium: in every tab type a typical input, submit, wait for
the answer, save a screenshot, and report how long each tab took to answer.

    python scripts/demo.py &                                                   # the demo, on the trained models
    python scripts/demo_screenshots.py --url http://127.0.0.1:7860 --out docs/images

It drives the system's Chromium (Debian: apt-get install chromium) through Playwright's Python API; it never downloads
a browser. tests/test_demo_e2e.py runs the same code on a demo serving tiny checkpoints.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/demo_screenshots.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import UserError, positive_float, run_cli

# One entry per tab (or per use of a tab: "name" tells two apart): the tab's label, its screenshot, what to type where,
# the boxes to tick, the radio options to choose, the buttons to press, and the outputs that must show an answer (a box's text, an image, or a component's text that differs from before the click), each with the
# message box beside it: a message that a checkpoint does not exist also ends the wait for that output.
TABS = [
    {"tab": "Stage 1: classify", "file": "demo_stage1.png",
     "type": {"s1-input": "A gripping, beautifully acted film with a wonderful cast."},
     "click": ["s1-submit"], "wait": {"s1-output": "s1-message"}},
    {"tab": "Stage 2: continue", "file": "demo_stage2.png", "type": {"s2-input": "ROMEO:"},
     "click": ["s2-submit"], "wait": {"s2-output": "s2-message"}},
    {"tab": "Stages 3 and 4: translate", "file": "demo_stage3_4.png", "type": {"s34-input": "A man is riding a bike."},
     "click": ["s34-submit"], "wait": {"s3-attn": "s3-message", "s4-attn": "s4-message"}},  # a translation may be
    # empty; its map is not
    {"tab": "Stage 5: generate", "file": "demo_stage5.png", "type": {"s5-input": "The history of the city"},
     "click": ["s5-submit"], "wait": {"s5-output": "s5-message", "s5-message": "s5-message"}},  # the message comes
    # when the stream has ended
    {"tab": "Stage 5: generate", "name": "Stage 5: generate, int8 weights", "file": "demo_stage5_int8.png",
     "type": {"s5-input": "The history of the city"}, "choose": {"s5-weights": "int8"},
     "click": ["s5-submit"], "wait": {"s5-output": "s5-message", "s5-message": "s5-message"}},
    {"tab": "Stage 5: generate", "name": "Stage 5: generate, speculative decoding",
     "file": "demo_stage5_speculative.png", "type": {"s5-input": "The history of the city"},
     "choose": {"s5-weights": "float32"}, "check": ["s5-speculative"], "click": ["s5-submit"],
     "wait": {"s5-output": "s5-message", "s5-message": "s5-message"}},
    {"tab": "Stage 5: chat", "file": "demo_stage5_chat.png",
     "type": {"s5c-input": "Translate this English sentence into French:\nA man is riding a bike."},
     "click": ["s5c-submit"], "wait": {"s5c-output": "s5c-message", "s5c-message": "s5c-message"}},
    {"tab": "Stage 5: chat", "name": "Stage 5: chat, with the LoRA adapter", "file": "demo_stage5_chat_adapter.png",
     "type": {"s5c-input": "Translate this English sentence into German:\nA man is riding a bike."},
     "check": ["s5c-adapter"], "click": ["s5c-submit"],
     "wait": {"s5c-output": "s5c-message", "s5c-message": "s5c-message"}},
    {"tab": "Stage 6: BERT", "file": "demo_stage6.png",
     "type": {"s6-mask-input": "the movie was [MASK] .", "s6-sst2-input": "a gripping , beautifully acted film ."},
     "click": ["s6-mask-submit", "s6-sst2-submit"],
     "wait": {"s6-mask-output": "s6-mask-message", "s6-sst2-output": "s6-sst2-message"}},
]
MISSING = "does not exist"  # in scripts/demo.py's message for a checkpoint that is not there yet
# What an output shows: a text box's value, an image's address, or else the component's visible text; null while
# Gradio's progress indicator on it is visible (the answer is still coming).
SHOWN_JS = """id => { const el = document.getElementById(id); if (!el) return null;
  if (el.querySelector('[data-testid="status-tracker"]:not(.hide)')) return null;
  const box = el.querySelector("textarea, input"); if (box) return box.value;
  const img = el.querySelector("img"); if (img) return img.getAttribute("src") || "";
  return el.innerText.trim(); }"""
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # quiet on a machine with no network


def find_chromium() -> str | None:
    """The system's Chromium (Debian's package installs /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def shown(page, elem_id: str) -> str | None:
    return page.evaluate(SHOWN_JS, elem_id)


def answer(page, tab: dict, timeout_s: float = 60) -> float:
    """Open the tab, type its inputs, press its buttons; return the seconds until every output shows an answer (or its
    message box says that its checkpoint does not exist)."""
    page.get_by_role("tab", name=tab["tab"]).click()
    for elem_id, text in tab["type"].items():
        page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)
    for elem_id in tab.get("check", []):
        page.locator(f"#{elem_id} input").first.check()
    for elem_id, option in tab.get("choose", {}).items():              # a radio button, by its label
        page.locator(f"#{elem_id}").get_by_label(option, exact=True).check()
    before = {elem_id: shown(page, elem_id) for elem_id in tab["wait"]}
    t0 = time.perf_counter()
    for elem_id in tab["click"]:
        page.locator(f"#{elem_id}").click()
    for elem_id, message_id in tab["wait"].items():
        page.wait_for_function(f"""([id, before, msg, missing]) => {{ const shown = {SHOWN_JS};
            const v = shown(id); if (v && v !== before) return true;
            const m = msg && shown(msg); return !!m && m.includes(missing); }}""",
                               arg=[elem_id, before[elem_id], message_id, MISSING], timeout=timeout_s * 1000)
    return time.perf_counter() - t0


def missing_models(page, tab: dict) -> list[str]:
    """The message boxes of the tab that say a checkpoint does not exist."""
    return [m for m in dict.fromkeys(tab["wait"].values()) if MISSING in (shown(page, m) or "")]


def drive(url: str, out_dir: str | Path, chromium: str | None = None, log=print, timeout_s: float = 60,
          only: list[str] | None = None) -> dict:
    """Every tab of the demo at `url` (or those whose screenshot `only` names): {tab label: seconds to answer}; a
    screenshot of each in out_dir."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise UserError("no Chromium found: install it (Debian: apt-get install chromium)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    times = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle", timeout=timeout_s * 1000)
            for tab in [t for t in TABS if not only or t["file"] in only]:
                name = tab.get("name", tab["tab"])
                times[name] = answer(page, tab, timeout_s)
                missing = missing_models(page, tab)
                log(f"tab {name!r} answered in {times[name]:.2f} s"
                    + (f" (no checkpoint behind {', '.join(missing)}: the page shows the command that trains it)"
                       if missing else ""))
                page.wait_for_timeout(300)  # let bars and images finish drawing
                page.screenshot(path=str(out_dir / tab["file"]), full_page=True)
        finally:
            browser.close()
    return times


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Screenshots of every tab of a running demo (scripts/demo.py).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:7860", help="where scripts/demo.py serves")
    p.add_argument("--out", default="docs/images", help="folder for demo_stage*.png")
    p.add_argument("--chromium", default=None, help="the browser to drive (default: the system's chromium)")
    p.add_argument("--timeout", type=positive_float, default=60, help="seconds to wait for a page or an answer")
    p.add_argument("--only", nargs="+", metavar="FILE", choices=[t["file"] for t in TABS], default=None,
                   help="only these screenshots (default: every tab's)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise UserError("this needs playwright: pip install -r requirements-demo.txt") from None
    try:
        times = drive(args.url, args.out, args.chromium, timeout_s=args.timeout, only=args.only)
    except UserError:
        raise
    except Exception as e:  # Playwright's errors: no page at the URL, an answer that never came
        raise UserError(f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    print(f"wrote {len(times)} screenshots to {args.out}")


if __name__ == "__main__":
    run_cli(main)
