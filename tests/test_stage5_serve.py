"""Stage 5's OpenAI-compatible server, tested as a client and an attacker would: the endpoints and their response
shapes, streaming as server-sent events, answers equal to the model's own greedy text, stop strings, usage counts,
the API key, every error in OpenAI's error shape (400, 401, 404, 422, 429), a client that disconnects mid-stream
freeing its row, and a real uvicorn process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi", reason="the server needs FastAPI: pip install -r requirements-serve.txt")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from scripts.common import save_checkpoint  # noqa: E402
from stage5_gpt import batching, serve  # noqa: E402
from stage5_gpt.chat_template import SPECIAL_TOKENS, prompt_ids  # noqa: E402
from stage5_gpt.data import tokenizer_fingerprint  # noqa: E402
from stage5_gpt.model import GPT, GPTConfig  # noqa: E402
from stage5_gpt.tokenizer import BPETokenizer  # noqa: E402

TEXT = "A dog runs on the beach. Un chien court sur la plage. The cat sleeps. " * 30


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny chat-ready GPT in train.py's checkpoint format, its tokenizer beside it."""
    folder = tmp_path_factory.mktemp("served") / "tiny_chat"
    folder.mkdir()
    tok = BPETokenizer.train(TEXT, 320, SPECIAL_TOKENS)
    tok.save(folder / "tokenizer.json")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=len(tok), block_size=64, n_layer=2, n_head=2, n_embd=32, pos="rope")
    save_checkpoint({"stage": "stage5_gpt", "kind": "language_model", "dataset": "course_mix", "config": cfg.to_dict(),
                     "model": GPT(cfg).state_dict(), "state": {"step": 0}, "args": {},
                     "data": {"tokenizer": "tokenizer.json", "fingerprint": tokenizer_fingerprint(folder / "tokenizer.json")}},
                    folder / "best.pt")
    return folder / "best.pt"


def make_client(checkpoint, **limits) -> tuple[TestClient, serve.Server]:
    server = serve.load_server(checkpoint, torch.device("cpu"), **limits)
    return TestClient(server.app()), server


def chat(content: str, **extra) -> dict:
    return {"model": "tiny_chat", "messages": [{"role": "user", "content": content}], **extra}


def test_models_and_a_chat_answer_equal_to_the_models_own_greedy_text(checkpoint):
    client, server = make_client(checkpoint)
    with client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny_chat"
        r = client.post("/v1/chat/completions", json=chat("A dog runs.", max_tokens=12, temperature=0))
        assert r.status_code == 200
        body = r.json()
        ids = prompt_ids(server.tok, [{"role": "user", "content": "A dog runs."}])
        alone = batching.generate_one(server.model, batching.Request(ids, 12, stop_ids=server.stop_ids))
        words = [t for t in alone.tokens if t not in server.stop_ids]
        assert body["choices"][0]["message"] == {"role": "assistant", "content": server.tok.decode(words)}
        assert body["object"] == "chat.completion" and body["usage"] == {
            "prompt_tokens": len(ids), "completion_tokens": len(alone.tokens), "total_tokens": len(ids) + len(alone.tokens)}
        assert body["choices"][0]["finish_reason"] == ("stop" if alone.finish_reason == "stop" else "length")


def test_streamed_pieces_add_up_to_the_whole_answer(checkpoint):
    client, _ = make_client(checkpoint)
    with client:
        whole = client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "The cat", "max_tokens": 20,
                                                     "temperature": 0}).json()["choices"][0]["text"]
        with client.stream("POST", "/v1/completions", json={"model": "tiny_chat", "prompt": "The cat",
                                                           "max_tokens": 20, "temperature": 0, "stream": True,
                                                           "stream_options": {"include_usage": True}}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == whole
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["usage"]["total_tokens"]


def test_a_stop_string_ends_the_answer_before_it(checkpoint):
    client, _ = make_client(checkpoint)
    with client:
        free = client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "A dog", "max_tokens": 30,
                                                    "temperature": 0}).json()["choices"][0]["text"]
        stop = free[5:8]
        assert stop.strip() and len(free) > 10
        cut = client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "A dog", "max_tokens": 30,
                                                   "temperature": 0, "stop": [stop]}).json()["choices"][0]
        assert cut["text"] == free[:free.find(stop)] and cut["finish_reason"] == "stop"


def error_of(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(checkpoint):
    client, _ = make_client(checkpoint, max_tokens_limit=32)
    with client:
        error_of(client.post("/v1/chat/completions", json=chat("x " * 200)), 400, "context_length_exceeded")
        error_of(client.post("/v1/chat/completions", json=chat("hi", max_tokens=40)), 400, "max_tokens_too_large")
        error_of(client.post("/v1/chat/completions", json={**chat("hi"), "model": "gpt-9"}), 404, "model_not_found")
        error_of(client.post("/v1/chat/completions", content=b"{not json",
                             headers={"content-type": "application/json"}), 400, "invalid_json")
        error_of(client.post("/v1/chat/completions", json={**chat("hi"), "temperature": "hot"}), 422, "invalid_value")
        error_of(client.post("/v1/chat/completions", json={"model": "tiny_chat", "messages": []}), 422, "invalid_value")
        error_of(client.post("/v1/chat/completions", json=chat("   ")), 400, "invalid_messages")
        error_of(client.post("/v1/chat/completions", json={"model": "tiny_chat", "messages": [
            {"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]}), 400, "unsupported_role")
        error_of(client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "a", "stop": ["x"] * 5}), 400,
                 "invalid_stop")
        error_of(client.get("/v1/nothing"), 404, "not_found")
        assert client.post("/v1/chat/completions", json=chat("still here?", max_tokens=3)).status_code == 200


def test_the_api_key_is_required_when_set(checkpoint):
    client, _ = make_client(checkpoint, api_key="s3cret")
    with client:
        error_of(client.get("/v1/models"), 401, "invalid_api_key")
        error_of(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_full_queue_answers_429_and_a_cancelled_request_frees_its_row(checkpoint):
    _, server = make_client(checkpoint, max_batch=1, queue_size=1)
    engine = server.engine                                   # not started: requests stay where they are put
    long = batching.Request([1, 2, 3], 50)
    first = engine.submit(long, lambda *a: None)
    engine.submit(long, lambda *a: None)
    with pytest.raises(serve.APIError) as e:
        engine.submit(long, lambda *a: None)
    assert e.value.status == 429 and e.value.code == "queue_full"
    engine.cancel(first)                                     # a client that went away
    assert engine.batcher.in_flight == 1
    engine.submit(long, lambda *a: None)                     # room again


def test_a_client_that_disconnects_mid_stream_frees_its_row(checkpoint):
    client, server = make_client(checkpoint, max_batch=1, queue_size=0)
    batcher, cancelled = server.engine.batcher, []
    step, cancel = batcher.step, batcher.cancel
    batcher.step = lambda: (time.sleep(0.05), step())        # 60 tokens would take 3 s: time to hang up first
    batcher.cancel = lambda handle, *a: (cancelled.append(len(handle.tokens)), cancel(handle, *a))
    with client:
        with client.stream("POST", "/v1/completions", json={"model": "tiny_chat", "prompt": "A dog", "max_tokens": 60,
                                                           "temperature": 0, "stream": True}) as r:
            next(r.iter_lines())                             # one piece, then hang up
        deadline = time.monotonic() + 10
        while server.engine.batcher.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.engine.batcher.in_flight == 0
        assert cancelled and cancelled[0] < 60               # freed by the hang-up, not by running to the end
        assert client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "A", "max_tokens": 2}).status_code == 200


@pytest.mark.slow
def test_a_real_server_process_answers_on_localhost(checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "stage5_gpt/serve.py", "--checkpoint", str(checkpoint), "--port",
                             str(port), "--device", "cpu"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MY_LLM_API_KEY": "k", "OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        data = json.dumps(chat("A dog runs.", max_tokens=5)).encode()
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                req = urllib.request.Request(url, data, {"Content-Type": "application/json", "Authorization": "Bearer k"})
                with urllib.request.urlopen(req, timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "no answer within 60 s"
                time.sleep(0.5)
        assert body["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
