"""An OpenAI-compatible HTTP server for the course's GPT: any OpenAI client library can talk to it.

    pip install -r requirements-serve.txt
    python stage5_gpt/serve.py                                  # the instructed GPT (SFT_CHECKPOINT) on 127.0.0.1:8000
    MY_LLM_API_KEY=secret python stage5_gpt/serve.py --port 8001 --max-batch 16
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "sft", "messages": [{"role": "user", "content": "Translate this English sentence into French:\\nA dog runs."}]}'

Endpoints, in OpenAI's wire format: GET /v1/models; POST /v1/completions (a prompt continued); POST
/v1/chat/completions (messages through the chat template of chat_template.py); `"stream": true` sends server-sent
events, one chunk per piece of text. Settings: max_tokens, temperature, top_p, stop (strings, up to 4), seed. Every
response counts its tokens (usage).

What the server does, and what it leaves to libraries: HTTP, JSON validation and the event stream are FastAPI's and
uvicorn's; the batching is the course's own (batching.ContinuousBatcher), run by one engine thread that owns the model.
A request is queued, admitted into a free row between two decoding steps, and its tokens are pushed to the request's
own queue as they come. A client that disconnects (or a stop string that appears) cancels its request, which frees its
row at once. Errors use OpenAI's error object, {"error": {"message", "type", "param", "code"}}: a prompt longer than
the context or max_tokens over the limit (400), an unknown model (404), malformed JSON (400) or wrong types (422), a
full queue (429, when --max-batch rows are busy and --queue-size requests wait), a missing or wrong API key (401, only
when MY_LLM_API_KEY is set). The server listens on 127.0.0.1 unless --host says otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # run as `python stage5_gpt/serve.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, positive_int, run_cli
from stage5_gpt.batching import SEEDS, ContinuousBatcher, Handle, Request
from stage5_gpt.chat_template import SPECIAL_TOKENS, check_template, prompt_ids
from stage5_gpt.evaluate import load_model
from stage5_gpt.reference_runs import SFT_CHECKPOINT
from stage5_gpt.tokenizer import EOT

try:
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException
except ImportError:  # the server's packages are optional: main() says how to install them
    BaseModel, Field = object, (lambda *a, **k: None)
    FastAPI = None


class APIError(Exception):
    """An error for the client, in OpenAI's shape."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def response(self):
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


# ----------------------------------------------------------------------------- the engine: one thread owns the model

class Engine:
    """Runs ContinuousBatcher.step() on its own thread while there is work. submit() and cancel() may be called from
    any thread; on_update(new_tokens, done, finish_reason) is called from the engine's thread after each step."""

    def __init__(self, model, max_batch: int, queue_size: int):
        self.batcher, self.capacity = ContinuousBatcher(model, max_batch), max_batch + queue_size
        self.lock, self.wake, self.listeners = threading.Lock(), threading.Event(), {}
        self.stopping, self.thread = False, None

    def start(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.stopping = False
            self.thread = threading.Thread(target=self.run, name="engine", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def submit(self, req: Request, on_update) -> Handle:
        with self.lock:
            if self.batcher.in_flight >= self.capacity:
                raise APIError(429, f"the server is busy ({self.batcher.in_flight} requests in flight); retry later",
                               "queue_full", kind="rate_limit_error")
            handle = self.batcher.submit(req)
            self.listeners[id(handle)] = [handle, on_update, 0]
        self.wake.set()
        return handle

    def cancel(self, handle: Handle) -> None:
        with self.lock:
            self.batcher.cancel(handle)
            self.listeners.pop(id(handle), None)

    def run(self) -> None:
        with torch.inference_mode():
            while not self.stopping:
                self.wake.wait(timeout=0.5)
                with self.lock:
                    if not self.batcher.busy:
                        self.wake.clear()
                        continue
                    try:
                        self.batcher.step()
                    except Exception:     # a bug must not stop the engine: end what is in flight, keep serving
                        traceback.print_exc()
                        for handle, _, _ in self.listeners.values():
                            self.batcher.cancel(handle, "error")
                    for key, entry in list(self.listeners.items()):
                        handle, on_update, sent = entry
                        if len(handle.tokens) > sent or handle.done:
                            try:
                                on_update(handle.tokens[sent:], handle.done, handle.finish_reason)
                            except RuntimeError:   # the listener's event loop is gone: nobody waits for it
                                self.batcher.cancel(handle)
                                handle.done = True
                            entry[2] = len(handle.tokens)
                            if handle.done:
                                del self.listeners[key]


# ----------------------------------------------------------------------------- the requests, as OpenAI defines them

class Message(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: str


class CommonFields(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = Field(default=None, ge=SEEDS[0], lt=SEEDS[1])   # what torch.Generator.manual_seed takes
    n: int = Field(default=1, ge=1, le=1)


class CompletionRequest(CommonFields):
    prompt: str


class ChatRequest(CommonFields):
    messages: list[Message] = Field(min_length=1)


class Server:
    """The model, its tokenizer, the engine and the limits; `app()` builds the FastAPI application."""

    def __init__(self, model, tok, name: str, max_batch: int = 8, queue_size: int = 64,
                 max_tokens_limit: int | None = None, api_key: str | None = None):
        self.model, self.tok, self.name, self.api_key = model, tok, name, api_key
        self.block = model.cfg.block_size
        self.max_tokens_limit = min(max_tokens_limit or self.block, self.block)
        self.chat = all(t in getattr(tok, "special_tokens", {}) for t in SPECIAL_TOKENS)
        self.stop_ids = tuple(tok.token_to_id(t) for t in (SPECIAL_TOKENS if self.chat else (EOT,))
                              if t in getattr(tok, "special_tokens", {}))
        self.engine = Engine(model, max_batch, queue_size)

    # ---- turning a request into tokens, and tokens into text
    @staticmethod
    def check_text(text: str, param: str) -> None:
        """JSON may carry half of a UTF-16 surrogate pair ("\\ud800"), which is no character: no tokenizer can read it."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise APIError(400, f"{param}: the text holds {text[e.start:e.end]!a}, half of a surrogate pair, not a "
                                f"character", "invalid_text", param) from None

    def prompt_of(self, body) -> list[int]:
        if isinstance(body, ChatRequest):
            if not self.chat:
                raise APIError(400, f"the model {self.name!r} has no chat template; use /v1/completions", "no_chat")
            messages = [m.model_dump() for m in body.messages]
            for i, m in enumerate(messages):
                self.check_text(m["content"], f"messages.{i}.content")
            if any(m["role"] == "system" for m in messages):
                raise APIError(400, "this model's chat template has no system role: put the instructions in the "
                                    "user message", "unsupported_role", "messages")
            if messages[-1]["role"] != "user":
                raise APIError(400, "the last message must be the user's", "invalid_messages", "messages")
            try:
                return prompt_ids(self.tok, messages)
            except UserError as e:
                raise APIError(400, str(e), "invalid_messages", "messages") from None
        if not body.prompt:
            raise APIError(400, "the prompt is empty", "empty_prompt", "prompt")
        self.check_text(body.prompt, "prompt")
        return self.tok.encode(body.prompt)

    def request_of(self, body) -> tuple[Request, list[str]]:
        if body.model != self.name:
            raise APIError(404, f"The model {body.model!r} does not exist; this server has {self.name!r}",
                           "model_not_found", "model")
        ids = self.prompt_of(body)
        room = self.block - len(ids)
        if room < 1:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is {self.block}",
                           "context_length_exceeded", "messages" if isinstance(body, ChatRequest) else "prompt")
        max_tokens = body.max_tokens or min(room, 256 if isinstance(body, ChatRequest) else 16)
        if max_tokens > min(room, self.max_tokens_limit):
            raise APIError(400, f"max_tokens is {max_tokens}, but at most {min(room, self.max_tokens_limit)} fit "
                                f"after this prompt ({len(ids)} tokens, context {self.block})", "max_tokens_too_large",
                           "max_tokens")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop takes up to 4 non-empty strings", "invalid_stop", "stop")
        for s in stops:
            self.check_text(s, "stop")
        req = Request(ids, max_tokens, body.temperature, None, body.top_p if body.top_p < 1 else None,
                      stop_ids=self.stop_ids, seed=body.seed if body.seed is not None else int(time.time_ns() % 2**31))
        return req, stops

    async def pieces(self, req: Request, stops: list[str]):
        """Yield (text, None) as the answer grows, then ("", finish_reason, completion tokens) at the end. The text
        held back is the tail that might still become a stop string, or a character not yet complete."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        handle = self.engine.submit(req, lambda toks, done, reason: loop.call_soon_threadsafe(
            queue.put_nowait, (toks, done, reason)))
        tokens, shown, hold = [], "", max((len(s) for s in stops), default=1) - 1
        try:
            while True:
                new, done, reason = await queue.get()
                tokens += new
                words = [t for t in tokens if t not in self.stop_ids]
                text = self.tok.decode(words)
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                if cut >= 0:                                           # a stop string: the answer ends before it
                    text, done, reason = text[:cut], True, "stop"
                    self.engine.cancel(handle)
                safe = text if done else text[:len(text) - hold] if hold else text
                if not done and safe.endswith("\ufffd"):
                    safe = safe[:-1]
                if len(safe) > len(shown):
                    yield safe[len(shown):], None, len(tokens)
                    shown = safe
                if done and reason == "error":
                    raise APIError(500, "the model failed on this request (the server log says why); the server "
                                        "goes on serving", "server_error", kind="server_error")
                if done:
                    yield "", "length" if reason == "length" else "stop", len(tokens)
                    return
        finally:
            if not handle.done:                                        # the client went away: free the row
                self.engine.cancel(handle)

    # ---- the application
    def app(self):
        @contextlib.asynccontextmanager
        async def lifespan(_):
            self.engine.start()     # the engine thread lives as long as the application
            yield
            self.engine.stop()

        api = FastAPI(title="my_llm", docs_url=None, redoc_url=None, lifespan=lifespan)

        @api.middleware("http")
        async def authorise(request: HTTPRequest, call_next):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return APIError(401, "a valid API key is required: Authorization: Bearer <key>", "invalid_api_key",
                                kind="authentication_error").response()
            return await call_next(request)

        @api.exception_handler(APIError)
        async def api_error(_, e: APIError):
            return e.response()

        @api.exception_handler(RequestValidationError)
        async def invalid(_, e: RequestValidationError):
            errors = e.errors()
            if any(err.get("type") == "json_invalid" for err in errors):
                return APIError(400, "the body is not valid JSON", "invalid_json").response()
            first = errors[0] if errors else {}
            where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
            return APIError(422, f"{where or 'body'}: {first.get('msg', 'invalid value')}", "invalid_value",
                            where).response()

        @api.exception_handler(HTTPException)
        async def http_error(_, e: HTTPException):
            return APIError(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error",
                            kind="invalid_request_error").response()

        @api.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                "owned_by": "my_llm"}]}

        @api.post("/v1/completions")
        async def completions(body: CompletionRequest):
            return await self.respond(body, chat=False)

        @api.post("/v1/chat/completions")
        async def chat_completions(body: ChatRequest):
            return await self.respond(body, chat=True)

        return api

    async def respond(self, body, chat: bool):
        req, stops = self.request_of(body)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created, kind = int(time.time()), "chat.completion" if chat else "text_completion"
        usage = lambda n: {"prompt_tokens": len(req.prompt), "completion_tokens": n,  # noqa: E731
                           "total_tokens": len(req.prompt) + n}
        if not body.stream:
            text, reason, n = "", "stop", 0
            async for piece, finish, n in self.pieces(req, stops):
                text += piece
                reason = finish or reason
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                      if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": reason})
            return {"id": rid, "object": kind, "created": created, "model": self.name, "choices": [choice],
                    "usage": usage(n)}
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events():
            first = True
            try:
                async for piece, finish, n in self.pieces(req, stops):
                    if chat:
                        delta = ({"role": "assistant", "content": piece} if first else {"content": piece}) \
                            if not finish else {}
                        choice = {"index": 0, "delta": delta, "finish_reason": finish}
                    else:
                        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
                    first = False
                    chunk = {"id": rid, "object": f"{kind}.chunk" if chat else kind, "created": created,
                             "model": self.name, "choices": [choice]}
                    if finish and include_usage:
                        chunk["usage"] = usage(n)
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            except APIError as e:   # the status line has gone: the error travels as an event, as OpenAI's do
                yield f"data: {e.response().body.decode()}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def load_server(checkpoint: str | Path, device, **limits) -> Server:
    model, tok, _ = load_model(checkpoint, device)
    return Server(model, tok, Path(checkpoint).parent.name, **limits)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a GPT with an OpenAI-compatible API (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=SFT_CHECKPOINT, help="the GPT to serve; its folder's name is the model id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from elsewhere)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--max-batch", type=positive_int, default=8, help="requests decoded together")
    p.add_argument("--queue-size", type=positive_int, default=64, help="requests that may wait for a row")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="the largest max_tokens (default: context)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if FastAPI is None:
        raise UserError("the server needs FastAPI and uvicorn: pip install -r requirements-serve.txt")
    import uvicorn
    server = load_server(args.checkpoint, get_device(args.device), max_batch=args.max_batch,
                         queue_size=args.queue_size, max_tokens_limit=args.max_tokens,
                         api_key=os.environ.get("MY_LLM_API_KEY") or None)
    if server.chat:
        check_template(server.tok)
    print(f"serving {server.name!r} ({args.checkpoint}) on http://{args.host}:{args.port}/v1 "
          f"({'chat and completions' if server.chat else 'completions only: no chat template'}; "
          f"{'API key required' if server.api_key else 'no API key'})", file=sys.stderr)
    try:
        uvicorn.run(server.app(), host=args.host, port=args.port, log_level="warning")
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e}") from None


if __name__ == "__main__":
    run_cli(main)
