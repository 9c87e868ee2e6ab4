"""Screenshot TensorBoard's scalars dashboard over a few real training runs: the README's docs/images/tensorboard.png.

    python scripts/tensorboard_screenshot.py                            # three quick Stage 5 runs, one per --lr
    python scripts/tensorboard_screenshot.py --logdir runs/stage5_gpt   # the runs you already have instead

Without --logdir it first trains the runs into a temporary folder, each a command a learner could type (`python
stage5_gpt/train.py --quick --lr ...`: a tiny GPT on the first 50,000 characters of Tiny Shakespeare, from
$MY_LLM_DATA, in seconds). Then it starts `tensorboard --logdir` on 127.0.0.1 at a free port, waits until it answers,
opens the scalars dashboard in the system's Chromium through Playwright (as scripts/demo_screenshots.py does; it never
downloads a browser), saves the screenshot, and stops TensorBoard.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/tensorboard_screenshot.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import REPO_ROOT, UserError, positive_float, run_cli
from scripts.demo_screenshots import CHROMIUM_FLAGS, find_chromium

LRS = ["1e-3", "3e-3", "1e-2"]  # one run each: three learning rates, a factor of about 3 apart
RUN_FLAGS = ["--quick", "--epochs", "6", "--eval-interval", "10", "--warmup-steps", "10"]  # ~190 steps, 19 validations


def train_runs(logdir: Path, lrs: list[str], log=print) -> None:
    """One quick Stage 5 run per learning rate, each in logdir/lr_<lr>: TensorBoard names the curves after the
    folders."""
    for lr in lrs:
        cmd = [sys.executable, "stage5_gpt/train.py", *RUN_FLAGS, "--lr", lr, "--out-dir", str(logdir / f"lr_{lr}")]
        log("$ " + " ".join(["python", *cmd[1:]]))
        done = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise UserError(f"the run with --lr {lr} failed: {done.stderr.strip().splitlines()[-1]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(logdir: Path, port: int, timeout_s: float) -> subprocess.Popen:
    """`tensorboard --logdir logdir` on 127.0.0.1:port, returned once it answers HTTP (and has read the runs). It
    starts in logdir's parent with the folder's bare name, which is what the page shows under its run list."""
    logdir = logdir.resolve()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir.name, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=logdir.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"tensorboard exited at once: {proc.stderr.read().strip()[-300:]}")
        try:  # the runs it has loaded: empty until its first pass over the logdir
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                if r.read().strip() not in (b"", b"[]"):
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise UserError(f"tensorboard did not serve {logdir} on port {port} within {timeout_s:.0f} s")


def screenshot(url: str, out: Path, chromium: str | None, timeout_s: float) -> None:
    """The scalars dashboard at `url`, every chart drawn, saved as the PNG `out`."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise UserError("no Chromium found: install it (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1140})  # train/ and val/ in one view
            page.goto(url, wait_until="networkidle", timeout=timeout_s * 1000)
            page.wait_for_selector("canvas, svg path.line", timeout=timeout_s * 1000)
            page.wait_for_timeout(3000)  # let every card fetch its points and draw them
            page.screenshot(path=str(out))
        finally:
            browser.close()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Screenshot TensorBoard's scalars over a few real runs (README figure).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--logdir", default=None, help="runs to show (default: train quick Stage 5 runs into a temp folder)")
    p.add_argument("--lrs", nargs="+", default=LRS, help="the learning rates of the quick runs")
    p.add_argument("--out", default="docs/images/tensorboard.png", help="the screenshot")
    p.add_argument("--chromium", default=None, help="the browser to drive (default: the system's chromium)")
    p.add_argument("--timeout", type=positive_float, default=60, help="seconds to wait for TensorBoard or a page")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import playwright  # noqa: F401
        import tensorboard  # noqa: F401
    except ImportError as e:
        raise UserError(f"this needs {e.name}: pip install -r requirements.txt -r requirements-demo.txt") from None
    with tempfile.TemporaryDirectory(prefix="tensorboard_runs_") as tmp:
        logdir = Path(args.logdir) if args.logdir else Path(tmp) / "runs"  # the page shows "runs", as yours would
        if not args.logdir:
            train_runs(logdir, args.lrs)
        elif not any(logdir.rglob("events.out.tfevents.*")):
            raise UserError(f"no TensorBoard event files under {logdir}: train with --tensorboard (the default)")
        port = free_port()
        server = start_tensorboard(logdir, port, args.timeout)
        try:
            screenshot(f"http://127.0.0.1:{port}/?darkMode=false#scalars", Path(args.out), args.chromium, args.timeout)
        except UserError:
            raise
        except Exception as e:  # Playwright's errors: a page that never loaded, a chart that never drew
            raise UserError(f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
