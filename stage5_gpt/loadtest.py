"""A load test of serve.py: one client alone, then many streaming at once, as real programs would call it.

    pip install -r requirements-serve.txt
    python stage5_gpt/loadtest.py                                # starts serve.py on the instructed GPT, 1 then 64 clients
    python stage5_gpt/loadtest.py --clients 8 --rounds 1         # a quick look
    python stage5_gpt/loadtest.py --url http://127.0.0.1:8000/v1 # a server you started yourself (MY_LLM_API_KEY if set)

Each client is a program that streams its answers (`"stream": true`) over HTTP, one request after another, as a chat
user would: it asks for the translation of a Multi30k test sentence into French (the chat endpoint; a model without the
chat template is sent the sentence to continue). Greedy decoding, so every run asks the same work of the model.

First one client alone sends --solo-requests requests: its tokens per second are what a single user gets. Then
--clients clients send --rounds requests each, all at once. What is measured, on one clock, in one run:

* time to first token (TTFT): from sending a request to the first piece of its answer, p50 and p95 over every request;
  a request that waits for a free row of the batch (serve.py --max-batch) waits here;
* aggregate tokens per second: every answer's tokens (the server's own usage count) over the wall-clock time of the
  whole phase, and its ratio to the lone client's: what continuous batching buys on this machine;
* failed requests: an HTTP error, a broken stream, or one without its closing `data: [DONE]`.

The figures land in --json (a result file: its command, the commit, the machine). The ratio is the point: one
decoding step for many rows costs little more than for one while the model's weights, not its arithmetic, set the pace.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/loadtest.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (REPO_ROOT, UserError, portable, positive_int, provenance, resolve_data_dir, resolved_config,
                            run_cli, write_json)
from stage5_gpt.instructions import load_examples
from stage5_gpt.reference_runs import REFERENCE_RUNS, SFT_CHECKPOINT


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Load-test serve.py: one streaming client, then many at once (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=SFT_CHECKPOINT, help="the GPT the server this script starts serves")
    p.add_argument("--url", default=None, help="test a running server at this base URL instead of starting one")
    p.add_argument("--clients", type=positive_int, default=64, help="clients streaming at once")
    p.add_argument("--rounds", type=positive_int, default=2, help="requests each client sends, one after another")
    p.add_argument("--solo-requests", type=positive_int, default=8, help="requests the lone client sends")
    p.add_argument("--max-tokens", type=positive_int, default=48, help="max_tokens of every request")
    p.add_argument("--max-batch", type=positive_int, default=16, help="serve.py --max-batch: rows decoded together")
    p.add_argument("--timeout", type=positive_int, default=600, help="seconds a request may take")
    p.add_argument("--data-dir", default=None, help="where Multi30k is (default: $MY_LLM_DATA or the user cache)")
    p.add_argument("--json", default="runs/stage5_gpt/loadtest.json", help="where the figures go")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- a server of our own

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """serve.py in its own process on a free port of 127.0.0.1, with room in its queue for every client."""
    if not Path(args.checkpoint).is_file():
        raise UserError(f"no checkpoint at {args.checkpoint}: train it first (python scripts/reproduce.py --dry-run "
                        f"--stage 5 lists the commands), or name one with --checkpoint")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "stage5_gpt" / "serve.py"), "--checkpoint",
                             str(args.checkpoint), "--port", str(port), "--max-batch", str(args.max_batch),
                             "--queue-size", str(max(64, args.clients))], cwd=REPO_ROOT, stderr=subprocess.PIPE,
                            text=True)
    url, deadline = f"http://127.0.0.1:{port}/v1", time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise UserError(f"serve.py stopped before answering: {proc.stderr.read().strip().splitlines()[-1:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=5):
                return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise UserError("serve.py did not answer within 120 s") from None
            time.sleep(0.5)


# ----------------------------------------------------------------------------- the clients

class Client:
    """What every request needs: the server, its model, the headers, and whether it speaks the chat template."""

    def __init__(self, http, url: str, model: str, chat: bool, max_tokens: int):
        self.http, self.url, self.model, self.chat, self.max_tokens = http, url, model, chat, max_tokens

    def body(self, example: dict) -> dict:
        common = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0, "stream": True,
                  "stream_options": {"include_usage": True}}
        if self.chat:
            return {**common, "messages": [{"role": "user", "content": example["prompt"]}]}
        return {**common, "prompt": example["prompt"].split("\n", 1)[1]}   # the sentence alone, to continue

    async def ask(self, example: dict) -> dict:
        """One streamed request -> {"ttft", "seconds", "tokens", "ok", "error"}."""
        path = "/chat/completions" if self.chat else "/completions"
        t0, first, tokens, done = time.perf_counter(), None, 0, False
        try:
            async with self.http.stream("POST", self.url + path, json=self.body(example)) as r:
                if r.status_code != 200:
                    return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        return {"ok": False, "error": chunk["error"]["message"]}
                    choice = chunk["choices"][0] if chunk.get("choices") else {}
                    piece = choice.get("delta", {}).get("content") if self.chat else choice.get("text")
                    if piece and first is None:
                        first = time.perf_counter() - t0
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
        except Exception as e:  # noqa: BLE001  (a load test counts every way a request can fail)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if not done:
            return {"ok": False, "error": "the stream ended without data: [DONE]"}
        return {"ok": True, "ttft": first if first is not None else time.perf_counter() - t0,
                "seconds": time.perf_counter() - t0, "tokens": tokens}


async def phase(client: Client, examples: list[dict], clients: int, rounds: int) -> dict:
    """`clients` clients at once, each sending `rounds` requests one after another -> the phase's figures."""
    async def one_client(i: int) -> list[dict]:
        return [await client.ask(examples[(i * rounds + r) % len(examples)]) for r in range(rounds)]

    t0 = time.perf_counter()
    runs = [x for xs in await asyncio.gather(*(one_client(i) for i in range(clients))) for x in xs]
    seconds = time.perf_counter() - t0
    ok = [r for r in runs if r["ok"]]
    ttft = sorted(r["ttft"] for r in ok)
    pct = lambda q: round(ttft[min(len(ttft) - 1, int(q * len(ttft)))], 3) if ttft else None  # noqa: E731
    return {"clients": clients, "requests": len(runs), "failed": len(runs) - len(ok),
            "errors": sorted({r["error"] for r in runs if not r["ok"]})[:5],
            "seconds": round(seconds, 2), "tokens": sum(r["tokens"] for r in ok),
            "tokens_per_second": round(sum(r["tokens"] for r in ok) / seconds, 1),
            "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None, "ttft_p95_s": pct(0.95),
            "mean_request_s": round(statistics.fmean(r["seconds"] for r in ok), 3) if ok else None}


async def measure(args: argparse.Namespace, url: str, examples: list[dict]) -> tuple[str, bool, dict, dict]:
    import httpx
    key = os.environ.get("MY_LLM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=args.timeout) as http:
        models = await http.get(url + "/models")
        if models.status_code != 200:
            raise UserError(f"{url}/models answered HTTP {models.status_code}: {models.text[:200]}")
        model = models.json()["data"][0]["id"]
        probe = await http.post(url + "/chat/completions", json={"model": model, "max_tokens": 1, "messages": [
            {"role": "user", "content": "Hello"}]})
        chat = probe.status_code == 200                 # a model without the chat template answers 400 "no_chat"
        client = Client(http, url, model, chat, args.max_tokens)
        solo = await phase(client, examples, 1, args.solo_requests)
        print(f"1 client alone: {solo['tokens_per_second']:.1f} tokens/s, TTFT p50 {solo['ttft_p50_s']} s "
              f"({solo['requests']} requests, {solo['failed']} failed)")
        many = await phase(client, examples, args.clients, args.rounds)
        print(f"{args.clients} clients at once: {many['tokens_per_second']:.1f} tokens/s in all, TTFT p50 "
              f"{many['ttft_p50_s']} s, p95 {many['ttft_p95_s']} s ({many['requests']} requests, {many['failed']} "
              f"failed)")
        return model, chat, solo, many


def main(argv=None) -> None:
    args = parse_args(argv)
    if importlib.util.find_spec("httpx") is None:
        raise UserError("the load test needs httpx: pip install -r requirements-serve.txt")
    examples = load_examples(resolve_data_dir(args.data_dir), "test", ("en_fr",))["en_fr"]
    proc, url = start_server(args) if args.url is None else (None, args.url.rstrip("/"))
    try:
        model, chat, solo, many = asyncio.run(measure(args, url, examples))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    ratio = many["tokens_per_second"] / solo["tokens_per_second"] if solo["tokens_per_second"] else None
    print(f"aggregate throughput: {ratio:.2f}x one client's" if ratio else "the lone client got no tokens")
    write_json(args.json, {"stage": "stage5_gpt",
        "model": model, "checkpoint": portable(str(args.checkpoint)) if args.url is None else None,
        "endpoint": "chat" if chat else "completions", "solo": solo, "concurrent": many,
        "throughput_ratio": round(ratio, 2) if ratio else None,
        "failed_requests": solo["failed"] + many["failed"], "config": resolved_config(args),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
        | provenance(REFERENCE_RUNS, "stage5_gpt/loadtest.py", parse_args, args, argv))
    print(f"wrote {args.json}")
    failed = solo["failed"] + many["failed"]
    if failed:
        first = (solo["errors"] + many["errors"])[0]
        raise UserError(f"{failed} of {solo['requests'] + many['requests']} requests failed (figures in {args.json}); "
                        f"the first: {first}")


if __name__ == "__main__":
    run_cli(main)
