"""An OpenAI-compatible server of an equivariant causal LM: `hf-equivariant serve`.

    POST /v1/completions        a prompt, continued (as the model sees it: no template)
    POST /v1/chat/completions   messages, rendered with the tokenizer's chat template
    GET  /v1/models             the one model served

Both POST routes stream server-sent events with `"stream": true` and take `max_tokens`, `temperature`
(0: greedy), `top_p`, `top_k`, `seed` and `stop`. Requests that arrive together and sample alike are padded
into one `generate` call (`GenerationBatcher`), so the K copies of every request go through the inner model
in one batch. Greedy decoding gives the equivariant continuation: for every group element g,
complete(g.x) = g.complete(x).

Why not `transformers serve`: its model manager builds the class named in `config.architectures` from the
`transformers` namespace (which does not hold the wrapper) and offers no way to wrap a base model with groups
other than overriding its private `_load_model`; without continuous batching it runs one `generate` per
request, one after another, and its continuous batching runs the inner model's forward on a paged cache,
which the wrapper's copies and word action do not go through. This module is a small FastAPI app on the same
libraries (FastAPI, uvicorn, the `openai` response types).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal

import jinja2
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation import BaseStreamer

from . import presets
from .configuration_equivariant import EquivariantConfig
from .wrap import make_equivariant

StopString = Annotated[str, Field(min_length=1)]
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What both routes share. Fields outside the OpenAI schema's supported part are refused (400)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: StopString | list[StopString] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1

    def generation_settings(self) -> dict:
        """GenerationConfig fields: greedy at temperature 0, otherwise sampling with temperature and top_p
        (and top_k if given; else the model's own)."""
        if self.temperature == 0.0:
            return {"do_sample": False}
        settings = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        return settings if self.top_k is None else {**settings, "top_k": self.top_k}

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(SamplingRequest):
    prompt: str = Field(min_length=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens


@dataclass
class Job:
    """One request in the generation queue: its prompt, settings and the events it sends back.

    The batcher's thread feeds it tokens; it decodes its own tokens and sends text deltas to the request's
    event loop: ("text", delta) ..., then ("end", finish_reason) or ("error", message). Text that could be
    the start of a stop string, or an incomplete UTF-8 character, is held back until it is known.
    """

    prompt_ids: list[int]
    settings: dict
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    finish_reason: str | None = None

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share one generate call."""
        return tuple(sorted(self.settings.items())), self.seed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _send(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def push(self, token: int, tokenizer, eos_ids: set[int]) -> None:
        if self.finished:
            return
        if token in eos_ids:
            return self.finish("stop", tokenizer)
        self.ids.append(token)
        text = tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        hits = [i for i in (text.find(s, max(len(self.sent) - len(s), 0)) for s in self.stop) if i >= 0]
        if hits:
            self._flush(text[: min(hits)])
            return self.finish("stop", tokenizer, flushed=True)
        if len(self.ids) >= self.max_tokens:
            return self.finish("length", tokenizer)
        held = max([k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])], default=0)
        if text.endswith("\ufffd"):
            held = max(held, 1)
        self._flush(text[: len(text) - held])

    def _flush(self, text: str) -> None:
        if len(text) > len(self.sent):
            self._send("text", text[len(self.sent):])
            self.sent = text

    def finish(self, reason: str, tokenizer=None, flushed: bool = False) -> None:
        if self.finished:
            return
        if tokenizer is not None and not flushed:
            self._flush(tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        self.finish_reason = reason
        self._send("end", reason)

    def fail(self, message: str) -> None:
        if not self.finished:
            self.finish_reason = "error"
            self._send("error", message)

    async def result(self) -> tuple[str, str]:
        """(text, finish_reason) once generation ends; raises RuntimeError if it failed."""
        parts = []
        async for text in self.texts():
            parts.append(text)
        return "".join(parts), self.finish_reason

    async def texts(self):
        """The text deltas as they come."""
        while True:
            kind, value = await self.events.get()
            if kind == "text":
                yield value
            elif kind == "error":
                raise RuntimeError(value)
            else:
                return


class RowStreamer(BaseStreamer):
    """Hands each generated token of a batched `generate` call to the job of its row."""

    def __init__(self, jobs: list[Job], tokenizer, eos_ids: set[int]):
        self.jobs, self.tokenizer, self.eos_ids, self.prompt_seen = jobs, tokenizer, eos_ids, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.reshape(len(self.jobs)).tolist()):
            job.push(token, self.tokenizer, self.eos_ids)

    def end(self) -> None:
        for job in self.jobs:
            job.finish("length", self.tokenizer)


class RowsFinished(StoppingCriteria):
    """Stops each row once its job is done (its own max_tokens, a stop string, or the client went away)."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([job.finished for job in self.jobs], device=input_ids.device)


class GenerationBatcher:
    """A thread that runs queued jobs through `model.generate`, several at a time.

    When it is free, it waits `batch_wait_s` for concurrent requests to arrive, then takes up to
    `max_batch_size` queued jobs with the same sampling settings (the first queued job's) into one left-padded
    batch, generating up to the largest max_tokens among them; each row stops at its own. `batch_sizes`
    records the size of every generate call.
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 8, batch_wait_s: float = 0.01):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.batch_sizes: list[int] = []
        self._pending: list[Job] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hf-equivariant-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._condition:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._condition.notify()

    def _next_batch(self) -> list[Job] | None:
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                for job in self._pending:
                    job.fail("the server is shutting down")
                return None
        time.sleep(self.batch_wait_s)
        with self._condition:
            self._pending = [job for job in self._pending if not job.finished]  # cancelled while queued
            if not self._pending:
                return []
            key = self._pending[0].key
            batch = [job for job in self._pending if job.key == key][: self.max_batch_size]
            self._pending = [job for job in self._pending if job not in batch]
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                self.generate(batch)
            except Exception as error:  # the batch fails, the server keeps serving
                for job in batch:
                    job.fail(f"generation failed: {type(error).__name__}: {error}")

    def generate(self, jobs: list[Job]) -> None:
        """One generate call for `jobs` (same settings); tokens reach the jobs as they are generated."""
        self.batch_sizes.append(len(jobs))
        inputs = self.tokenizer.pad({"input_ids": [job.prompt_ids for job in jobs]}, padding_side="left",
                                    return_tensors="pt").to(self.model.device)
        config = copy.deepcopy(self.model.generation_config)
        config.update(**jobs[0].settings, max_new_tokens=max(job.max_tokens for job in jobs),
                      pad_token_id=self.tokenizer.pad_token_id)
        if jobs[0].seed is not None:
            torch.manual_seed(jobs[0].seed)
        streamer = RowStreamer(jobs, self.tokenizer, self.eos_ids)
        self.model.generate(**inputs, generation_config=config, streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([RowsFinished(jobs)]))


@contextlib.contextmanager
def cancel_when_closed(job: Job):
    """Around a stream's reading of `job`: if the stream is closed early (the client went away), the job's row
    stops generating."""
    try:
        yield
    finally:
        job.finish("cancelled")


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def create_app(model, tokenizer, model_name: str, max_batch_size: int = 8, batch_wait_s: float = 0.01,
               chat_max_tokens: int = 256) -> FastAPI:
    """The FastAPI app serving `model` (an equivariant causal LM) under `model_name`.

    `chat_max_tokens` is the default max_tokens of chat requests (completions default to 16, as OpenAI's).
    The app's state holds the `batcher` (app.state.batcher), started and stopped with the app.
    """
    if model.config.is_encoder_decoder:
        raise ValueError("the server serves causal LMs; a seq2seq model has no chat or completion prompt to continue")
    if tokenizer.pad_token is None:  # batches are left-padded; the caller's tokenizer is left as it is
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    batcher = GenerationBatcher(model, tokenizer, max_batch_size, batch_wait_s)
    text_config = model.config.get_text_config(decoder=True)
    context = getattr(text_config, "max_position_embeddings", None)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title=f"hf-equivariant: {model_name}", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        problems = [f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in error.errors()]
        where = error.errors()[0]["loc"] if error.errors() else ()
        return openai_error(400, "; ".join(problems), param=str(where[1]) if len(where) > 1 else None)  # the field

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: HTTPException):
        return openai_error(error.status_code, str(error.detail))

    def check_model(name: str) -> None:
        if name != model_name:
            raise HTTPException(404, f"model {name!r} is not served here; this server serves {model_name!r}")

    def submit(request: SamplingRequest, prompt_ids: list[int], max_tokens: int) -> Job:
        if not prompt_ids:
            raise HTTPException(400, "the prompt has no tokens")
        if context is not None and len(prompt_ids) + max_tokens > context:
            raise HTTPException(400, f"the prompt's {len(prompt_ids)} tokens plus max_tokens={max_tokens} exceed "
                                     f"the model's context of {context} tokens")
        job = Job(prompt_ids, request.generation_settings(), max_tokens, request.stop_strings, request.seed,
                  asyncio.get_running_loop())
        batcher.submit(job)
        return job

    def sse(chunks):
        """Server-sent events of `chunks`, then [DONE]; a failure mid-stream becomes an error event."""
        async def events():
            try:
                async for chunk in chunks:
                    yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
            except RuntimeError as error:
                yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
                return
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def with_usage(request: SamplingRequest, chunks, final):
        """`chunks`, then, if the request asks for it (stream_options.include_usage), `final` with the usage."""
        async def stream():
            async for chunk in chunks:
                yield chunk
            if request.stream_options and request.stream_options.include_usage:
                yield final()

        return stream()

    def usage(job: Job) -> CompletionUsage:
        return CompletionUsage(prompt_tokens=len(job.prompt_ids), completion_tokens=len(job.ids),
                               total_tokens=len(job.prompt_ids) + len(job.ids))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "hf-equivariant"}]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        check_model(request.model)
        job = submit(request, tokenizer(request.prompt)["input_ids"], request.max_tokens or COMPLETION_MAX_TOKENS)
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def completion(text: str | None, finish_reason=None, **extra) -> Completion:
            """A completion (or chunk) with one choice; with text None, none (the usage chunk of a stream)."""
            choices = [] if text is None else [
                CompletionChoice.model_construct(index=0, text=text, finish_reason=finish_reason, logprobs=None)]
            return Completion.model_construct(id=request_id, object="text_completion", created=created,
                                              model=model_name, choices=choices, **extra)

        if request.stream:
            async def chunks():
                with cancel_when_closed(job):
                    async for text in job.texts():
                        yield completion(text)
                yield completion("", job.finish_reason)

            return sse(with_usage(request, chunks(), lambda: completion(None, usage=usage(job))))
        text, finish_reason = await job.result()
        return completion(text, finish_reason, usage=usage(job)).model_dump(exclude_none=True)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        check_model(request.model)
        if not tokenizer.chat_template:
            raise HTTPException(400, f"{model_name} has no chat template: use /v1/completions")
        messages = [m.model_dump() for m in request.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except jinja2.TemplateError as error:  # the template refuses these messages (say, roles out of turn)
            raise HTTPException(400, f"the chat template refuses these messages: {error}") from None
        max_tokens = request.max_completion_tokens or request.max_tokens or chat_max_tokens
        job = submit(request, tokenizer(prompt, add_special_tokens=False)["input_ids"], max_tokens)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if request.stream:
            def chunk(delta: ChoiceDelta, finish_reason=None) -> ChatCompletionChunk:
                choice = ChunkChoice.model_construct(index=0, delta=delta, finish_reason=finish_reason)
                return ChatCompletionChunk.model_construct(id=request_id, object="chat.completion.chunk",
                                                           created=created, model=model_name, choices=[choice])

            async def chunks():
                yield chunk(ChoiceDelta(role="assistant", content=""))
                with cancel_when_closed(job):
                    async for text in job.texts():
                        yield chunk(ChoiceDelta(content=text))
                yield chunk(ChoiceDelta(), job.finish_reason)

            return sse(with_usage(request, chunks(), lambda: ChatCompletionChunk.model_construct(
                id=request_id, object="chat.completion.chunk", created=created, model=model_name, choices=[],
                usage=usage(job))))
        text, finish_reason = await job.result()
        message = ChatCompletionMessage(role="assistant", content=text)
        return ChatCompletion(id=request_id, object="chat.completion", created=created, model=model_name,
                              choices=[ChatChoice(index=0, message=message, finish_reason=finish_reason)],
                              usage=usage(job)).model_dump(exclude_none=True)

    @app.exception_handler(RuntimeError)
    async def generation_failed(request: Request, error: RuntimeError):
        return openai_error(500, str(error))

    return app


DEFAULT_GROUPS = ("gender", "race")


def load_equivariant(model: str, groups=None, gguf_file: str | None = None, symmetrization: str = "multi_equitune",
                     action: str = "word"):
    """(equivariant causal LM, tokenizer) from a Hub id or folder: a saved equivariant model as it is
    (`groups` must then be None), or a plain causal LM wrapped with `groups` (default: the gender and race
    presets)."""
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if AutoConfig.from_pretrained(model, **extra).model_type == EquivariantConfig.model_type:
        if groups:
            raise ValueError(f"{model} is already equivariant (its groups are saved with it): leave out --groups")
        loaded = AutoModelForCausalLM.from_pretrained(model, **extra)
    else:
        groups = groups or [presets.BY_NAME[name] for name in DEFAULT_GROUPS]
        loaded = make_equivariant(AutoModelForCausalLM.from_pretrained(model, **extra), groups, tokenizer,
                                  symmetrization, action=action)
    return loaded.eval(), tokenizer


def serve(model: str, groups=None, gguf_file: str | None = None, symmetrization: str = "multi_equitune",
          action: str = "word", served_model_name: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          max_batch_size: int = 8) -> None:
    """`hf-equivariant serve` (its arguments checked by `hf_equivariant_cli`): load (and wrap) `model` with
    `load_equivariant`, then serve it on `host:port` until stopped. A model that cannot be loaded or served
    (seq2seq) ends in one line and exit code 1."""
    import uvicorn

    started = time.perf_counter()
    try:
        loaded, tokenizer = load_equivariant(os.path.expanduser(model), groups, gguf_file, symmetrization, action)
        app = create_app(loaded, tokenizer, served_model_name or model, max_batch_size)
    except (OSError, ValueError) as error:
        print(f"hf-equivariant serve: error: --model {model}: {str(error).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(1) from None
    factors = " x ".join(f"{f.name} ({f.order})" for f in loaded.config.factors)
    print(f"loaded {model} in {time.perf_counter() - started:.1f} s: {factors}, {loaded.inner_passes} inner passes "
          f"per token, {loaded.config.action} action; serving on http://{host}:{port}/v1", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info")
