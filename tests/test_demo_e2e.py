"""scripts/demo.py in a real browser: the demo runs as its own process on 127.0.0.1, serving tiny checkpoints
(tests/tiny_checkpoints.py), and Debian's Chromium, driven by Playwright (scripts/demo_screenshots.py), types into
every tab, submits, and waits for the answer. Each tab's time to answer is printed ("tab ... answered in N.NN s", shown
with `pytest -s`; also in times.json beside the screenshots under the test's temporary directory).

Skipped, with the reason, when playwright or a Chromium is missing (.ci/run installs both).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -r requirements-demo.txt")
pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install -r requirements-demo.txt")

import tiny_checkpoints  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402
from scripts import demo_screenshots  # noqa: E402

CHROMIUM = demo_screenshots.find_chromium()
pytestmark = [pytest.mark.slow,  # a demo server in a subprocess, driven by a browser
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser on this machine: install Debian's "
                                                          "(apt-get install chromium); .ci/run does where it can")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo as a separate process, on a free port; stopped whatever happens."""
    root = tmp_path_factory.mktemp("demo_e2e")
    paths = tiny_checkpoints.make_all(root / "checkpoints")
    flags = [x for key, path in paths.items() for x in (f"--{key.replace('_', '-')}-checkpoint", str(path))]
    flags += ["--stage6-sst2-real-checkpoint", str(paths["stage6_sst2"])]  # not whatever runs/ holds here
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "scripts/demo.py", "--port", str(port), "--device", "cpu", *flags],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the demo exited: {(root / 'server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no page at {url} within 120 s"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_every_tab_answers_in_a_real_browser(server, tmp_path):
    times = demo_screenshots.drive(server, tmp_path, CHROMIUM, log=print)
    assert list(times) == [tab.get("name", tab["tab"]) for tab in demo_screenshots.TABS]
    for tab in demo_screenshots.TABS:
        assert (tmp_path / tab["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "times.json").write_text(json.dumps(times, indent=1))
    print(f"screenshots and times.json in {tmp_path}")


def test_bad_input_is_a_message_in_the_page_and_the_server_keeps_serving(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=demo_screenshots.CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server, wait_until="networkidle")
            bad = {"tab": "Stage 2: continue", "type": {"s2-input": "ROMEO: \u20ac"}, "click": ["s2-submit"],
                   "wait": {"s2-message": None}}
            demo_screenshots.answer(page, bad)
            assert "never saw" in demo_screenshots.shown(page, "s2-message")
            assert "'\u20ac'" in demo_screenshots.shown(page, "s2-message")
            page.screenshot(path=str(tmp_path / "bad_input.png"))
            demo_screenshots.answer(page, demo_screenshots.TABS[1])  # the same tab, a good input: an answer
            assert demo_screenshots.shown(page, "s2-output").startswith("ROMEO:")
            assert demo_screenshots.shown(page, "s2-message") == ""
        finally:
            browser.close()
