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

from conftest import REPO_ROOT, assert_one_line_error, cli  # noqa: E402
from scripts.common import save_checkpoint  # noqa: E402
from stage5_gpt import batching, loadtest, serve  # noqa: E402
from stage5_gpt.chat_template import SPECIAL_TOKENS, prompt_ids  # noqa: E402
from stage5_gpt.data import tokenizer_fingerprint  # noqa: E402
from stage5_gpt.model import GPT, GPTConfig  # noqa: E402
from stage5_gpt.tokenizer import BPETokenizer  # noqa: E402

TEXT = "A dog runs on the beach. Un chien court sur la plage. The cat sleeps. " * 30


def tiny_chat_checkpoint(folder, block_size: int = 64, **config):
    """A tiny chat-ready GPT (random weights) in train.py's checkpoint format, its tokenizer beside it; the folder's
    name is the model's id."""
    folder.mkdir(parents=True)
    tok = BPETokenizer.train(TEXT, 320, SPECIAL_TOKENS)
    tok.save(folder / "tokenizer.json")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=len(tok), block_size=block_size, **{"n_layer": 2, "n_head": 2, "n_embd": 32,
                                                                   "pos": "rope", **config})
    save_checkpoint({"stage": "stage5_gpt", "kind": "language_model", "dataset": "course_mix", "config": cfg.to_dict(),
                     "model": GPT(cfg).state_dict(), "state": {"step": 0}, "args": {},
                     "data": {"tokenizer": "tokenizer.json", "fingerprint": tokenizer_fingerprint(folder / "tokenizer.json")}},
                    folder / "best.pt")
    return folder / "best.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("served") / "tiny_chat")


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


# What an attacker (or a buggy client) sends: each must get a 4xx in OpenAI's error shape, never a 500.
JUNK = {
    "a seed beyond what a random generator takes": json.dumps(chat("hi", seed=10**30)),
    "max_tokens of 31 digits": json.dumps(chat("hi", max_tokens=10**30)),
    "max_tokens of 1e400": '{"model": "tiny_chat", "prompt": "a", "max_tokens": 1e400}',
    "temperature NaN": '{"model": "tiny_chat", "prompt": "a", "temperature": NaN}',
    "top_p Infinity": '{"model": "tiny_chat", "prompt": "a", "top_p": Infinity}',
    "half a surrogate pair in a message": '{"model": "tiny_chat", "messages": [{"role": "user", "content": "a\\ud800"}]}',
    "half a surrogate pair in a stop string": '{"model": "tiny_chat", "prompt": "a", "stop": ["\\udc00"]}',
    "bytes that are not UTF-8": b"\xff\xfe\xfd",
    "JSON nested 100,000 deep": "[" * 100_000,
    "a list for a body": "[1, 2]",
    "a number for a model": '{"model": 5, "prompt": "a"}',
    "a list for a message's content": '{"model": "tiny_chat", "messages": [{"role": "user", "content": ["a"]}]}',
    "a string for stream_options": json.dumps(chat("hi", stream=True, stream_options="yes")),
    "two choices": json.dumps(chat("hi", n=2)),
}


@pytest.mark.parametrize("what", list(JUNK))
def test_junk_gets_a_4xx_and_the_server_keeps_serving(checkpoint, what):
    client, _ = make_client(checkpoint)
    body = JUNK[what]
    path = "/v1/chat/completions" if b"messages" in (body if isinstance(body, bytes) else body.encode()) \
        else "/v1/completions"
    with client:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "a dog",
                                                    "max_tokens": 2}).status_code == 200


def test_a_failing_model_step_ends_its_requests_with_500_and_the_engine_goes_on(checkpoint, capsys):
    client, server = make_client(checkpoint)
    batcher, step, failures = server.engine.batcher, server.engine.batcher.step, [1, 1]
    batcher.step = lambda: step() if not failures else (failures.pop(), 1 / 0)
    with client:
        error_of(client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "a", "max_tokens": 4}), 500,
                 "server_error")
        with client.stream("POST", "/v1/completions", json={"model": "tiny_chat", "prompt": "a", "max_tokens": 4,
                                                           "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
        assert json.loads(lines[0][len("data: "):])["error"]["code"] == "server_error" and lines[-1] == "data: [DONE]"
        assert client.post("/v1/completions", json={"model": "tiny_chat", "prompt": "a",
                                                    "max_tokens": 4}).status_code == 200
    assert "ZeroDivisionError" in capsys.readouterr().err      # the server's log says why


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


@pytest.fixture(scope="module")
def live(checkpoint):
    """A real server process (uvicorn) on a free port of 127.0.0.1, with an API key; yields (base URL, process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(checkpoint.parent / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "stage5_gpt/serve.py", "--checkpoint", str(checkpoint), "--port",
                             str(port), "--device", "cpu", "--max-batch", "8"], cwd=REPO_ROOT, stdout=log, stderr=log,
                            env={**os.environ, "MY_LLM_API_KEY": "k", "OMP_NUM_THREADS": "1"})
    base, deadline = f"http://127.0.0.1:{port}/v1", time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, log.seek(0) or log.read()
            try:
                with urllib.request.urlopen(urllib.request.Request(base + "/models",
                                                                   headers={"Authorization": "Bearer k"}), timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer within 60 s"
                time.sleep(0.3)
        yield base, proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def greedy_text(server: serve.Server, ids: list[int], max_tokens: int) -> str:
    alone = batching.generate_one(server.model, batching.Request(ids, max_tokens, stop_ids=server.stop_ids))
    return server.tok.decode([t for t in alone.tokens if t not in server.stop_ids])


@pytest.mark.slow
def test_a_real_server_process_answers_the_official_openai_client(checkpoint, live):
    openai = pytest.importorskip("openai", reason="the official client: pip install -r requirements-serve.txt")
    base, proc, _ = live
    _, server = make_client(checkpoint)
    client = openai.OpenAI(base_url=base, api_key="k", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny_chat"]
    messages = [{"role": "user", "content": "A dog runs."}]
    expected = greedy_text(server, prompt_ids(server.tok, messages), 12)
    answer = client.chat.completions.create(model="tiny_chat", messages=messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == expected and answer.usage.prompt_tokens > 0
    stream = client.chat.completions.create(model="tiny_chat", messages=messages, max_tokens=12, temperature=0,
                                            stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected
    text = client.completions.create(model="tiny_chat", prompt="The cat", max_tokens=10, temperature=0)
    assert text.choices[0].text == greedy_text(server, server.tok.encode("The cat"), 10)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()


@pytest.mark.slow
def test_eight_streaming_clients_at_once_each_get_their_own_answer(checkpoint, live):
    openai = pytest.importorskip("openai", reason="the official client: pip install -r requirements-serve.txt")
    from concurrent.futures import ThreadPoolExecutor
    base, _, _ = live
    _, server = make_client(checkpoint)
    prompts = [f"{animal} {verb}" for animal in ("A dog", "The cat") for verb in ("runs", "sleeps", "on", "sur")]

    def ask(prompt: str) -> str:
        client = openai.OpenAI(base_url=base, api_key="k", max_retries=0, timeout=120)
        stream = client.completions.create(model="tiny_chat", prompt=prompt, max_tokens=24, temperature=0, stream=True)
        return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [greedy_text(server, server.tok.encode(p), 24) for p in prompts]


@pytest.mark.slow
def test_clients_that_hang_up_leave_the_real_server_serving(live):
    base, proc, log = live
    host, port = base.split("//")[1].split("/")[0].split(":")
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer k\r\n"
               f"Content-Type: application/json\r\n").encode()
    body = json.dumps({"model": "tiny_chat", "prompt": "A dog", "max_tokens": 40, "stream": True}).encode()
    for cut in (request[:20],                                                  # in the middle of the headers
                request + b"Content-Length: 500\r\n\r\n" + body[:10],      # in the middle of the body
                request + f"Content-Length: {len(body)}\r\n\r\n".encode() + body):  # mid-stream, after a read
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(cut)
            if cut.endswith(body):
                assert sock.recv(64).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)
    req = urllib.request.Request(base + "/chat/completions", json.dumps(chat("still here?", max_tokens=3)).encode(),
                                 {"Content-Type": "application/json", "Authorization": "Bearer k"})
    with urllib.request.urlopen(req, timeout=30) as response:
        assert json.loads(response.read())["choices"][0]["message"]["role"] == "assistant"
    assert proc.poll() is None
    log.seek(0)
    assert "Traceback" not in log.read()


@pytest.mark.slow
def test_the_load_test_measures_one_client_then_many_and_counts_failures(tmp_path, tiny_mt_data_dir, capsys):
    roomy = tiny_chat_checkpoint(tmp_path / "roomy_chat", 256)    # room for a Multi30k sentence in the template
    short = tiny_chat_checkpoint(tmp_path / "short_chat", 24)     # no translation request fits its context
    out = tmp_path / "loadtest.json"
    common = ["--clients", "4", "--rounds", "2", "--solo-requests", "2", "--max-tokens", "8", "--max-batch", "4",
              "--data-dir", str(tiny_mt_data_dir), "--json", str(out)]
    loadtest.main(["--checkpoint", str(roomy), *common])
    figures = json.loads(out.read_text())
    assert figures["endpoint"] == "chat" and figures["failed_requests"] == 0
    many = figures["concurrent"]
    assert many["requests"] == 8 and many["tokens"] > 0 and 0 < many["ttft_p50_s"] <= many["ttft_p95_s"]
    assert figures["throughput_ratio"] == round(many["tokens_per_second"] / figures["solo"]["tokens_per_second"], 2)
    code, err = cli(loadtest.main, ["--checkpoint", str(short), *common], capsys)
    assert_one_line_error(code, err, "10 of 10 requests failed .*context")


def test_the_throughput_command_writes_its_figures_against_one_at_a_time(tmp_path, capsys):
    """python stage5_gpt/batching.py: tokens per second at each concurrency, their ratio to one request at a time
    (the baseline), the command and the commit in a JSON, its plot beside it; a missing checkpoint is one line."""
    ckpt = tiny_chat_checkpoint(tmp_path / "tiny")
    out = tmp_path / "throughput.json"
    batching.main(["--checkpoint", str(ckpt), "--concurrency", "1", "4", "--requests", "8", "--new-tokens", "4",
                   "--prompt-tokens", "3", "--result", str(out)])
    r = json.loads(out.read_text())
    assert [row["concurrency"] for row in r["rows"]] == [1, 4] and r["throughput_vs_one_at_a_time"]["1"] == 1.0
    assert r["command"].startswith("python stage5_gpt/batching.py --checkpoint") and "run" not in r
    assert r["git_commit"] and out.with_suffix(".png").stat().st_size > 0
    code, err = cli(batching.main, ["--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert_one_line_error(code, err, "no checkpoint")


def test_the_published_serving_figures_beat_one_request_at_a_time():
    """stage5_gpt/results/batching_throughput.json and loadtest.json, measured on the instructed GPT: decoding many
    requests together gives more tokens per second than one at a time (the baseline), and under 64 streaming
    clients at once the server failed no request and served more tokens per second than to one client alone."""
    batch = json.loads((REPO_ROOT / "stage5_gpt" / "results" / "batching_throughput.json").read_text())
    rows = {row["concurrency"]: row for row in batch["rows"]}
    assert sorted(rows) == [1, 2, 4, 8, 16, 32, 64] and batch["checkpoint"] == "runs/stage5_gpt/sft/best.pt"
    assert max(row["tokens_per_second"] for row in rows.values()) > 2 * rows[1]["tokens_per_second"]
    load = json.loads((REPO_ROOT / "stage5_gpt" / "results" / "loadtest.json").read_text())
    assert load["failed_requests"] == 0 and load["concurrent"]["clients"] == 64 and load["endpoint"] == "chat"
    assert load["throughput_ratio"] > 1 and load["concurrent"]["requests"] == 128
    # the figures docs section 24 and the READMEs quote are these files'
    doc = (REPO_ROOT / "docs" / "stage5_gpt.md").read_text(encoding="utf-8")
    for figure in (f"{rows[1]['tokens_per_second']:.1f}", f"{rows[64]['tokens_per_second']:,.1f}",
                   f"{load['solo']['tokens_per_second']:.1f}", f"{load['concurrent']['tokens_per_second']:.1f}",
                   f"{load['throughput_ratio']:.2f} times", f"{load['concurrent']['ttft_p95_s']:.3f} s"):
        assert figure in doc, figure
    for readme in ("README.md", "README.zh-CN.md"):
        assert f"{load['throughput_ratio']:.2f}" in (REPO_ROOT / readme).read_text(encoding="utf-8"), readme
