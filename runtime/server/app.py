"""The OpenAI-compatible HTTP API over the async engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tokenyard.runtime.outputs import CompletionOutput, RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams
from tokenyard.runtime.server.async_engine import AsyncEngine, EngineDead, Overloaded
from tokenyard.runtime.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    error_body,
    new_id,
    now,
)

RETRY_AFTER_SECONDS = "1"


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


@dataclass
class ServerSettings:
    served_model_name: str
    api_key: str | None = None
    chat_template: str | None = None


def build_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="tokenyard runtime", docs_url=None, redoc_url=None)
    app.state.engine, app.state.settings = engine, settings

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(
            error_body(error.message, error.type, error.param, error.status), error.status, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(
                error_body(f"malformed JSON body: {first.get('msg')}", "invalid_request_error", None, 400), 400
            )
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(
            error_body(
                f"{param}: {first.get('msg')}" if param else first.get("msg", "invalid request"),
                "invalid_request_error",
                param,
                400,
            ),
            400,
        )

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer <key>)", "authentication_error")

    def ready() -> None:
        if not engine.ready:
            raise APIError(503, "the model is not ready", "service_unavailable", headers={"Retry-After": "5"})

    guards = [Depends(authorized), Depends(ready)]

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if engine.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body = generate_latest(engine.metrics.registry) if engine.metrics else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        max_len = engine.engine.max_model_len if engine.engine else None
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.served_model_name,
                    "object": "model",
                    "created": now(),
                    "owned_by": "tokenyard",
                    "max_model_len": max_len,
                }
            ],
        }

    @app.post("/v1/chat/completions", dependencies=guards)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model, settings)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = engine.engine.apply_chat_template(messages, settings.chat_template, body.add_generation_prompt)
        except Exception as error:
            raise APIError(400, f"the chat template failed on these messages: {error}", param="messages") from None
        ids = engine.engine.tokenizer.encode(text, add_special_tokens=False)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        fmt = ChatFormat(settings.served_model_name, engine, body.top_logprobs or 0)
        return await respond(engine, request, body, ids, logprobs, fmt)

    @app.post("/v1/completions", dependencies=guards)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body.model, settings)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, f"prompt holds {len(prompt)} prompts; send one per request", param="prompt")
            prompt = prompt[0]
        ids = engine.engine.tokenizer.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) else prompt
        fmt = CompletionFormat(settings.served_model_name, engine, echo=body.echo, prompt_ids=ids)
        return await respond(engine, request, body, ids, body.logprobs, fmt)

    return app


def check_model(model: str | None, settings: ServerSettings) -> None:
    if model is not None and model != settings.served_model_name:
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server serves `{settings.served_model_name}`",
            "not_found_error",
            "model",
        )


def sampling_params(body: SamplingFields, prompt_len: int, max_model_len: int, logprobs: int | None) -> SamplingParams:
    room = max_model_len - prompt_len
    if body.max_tokens is not None and body.max_tokens > room:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + body.max_tokens} tokens ({prompt_len} in the prompt, {body.max_tokens} for the "
            "completion). Please reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    try:
        return SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            seed=body.seed,
            stop=body.stop,
            stop_token_ids=body.stop_token_ids or [],
            ignore_eos=body.ignore_eos,
            max_tokens=body.max_tokens,
            min_tokens=body.min_tokens,
            logprobs=logprobs,
        )
    except ValueError as error:
        raise APIError(400, str(error), param=str(error).split("=")[0]) from None


async def respond(
    engine: AsyncEngine,
    request: Request,
    body: SamplingFields,
    ids: list[int],
    logprobs: int | None,
    fmt: ResponseFormat,
) -> Response:
    arrival = time.monotonic()
    try:
        engine.engine.check_prompt(ids)
    except ValueError as error:
        raise APIError(
            400,
            f"{error} (the prompt has {len(ids)} tokens; max_model_len is {engine.engine.max_model_len})",
            param="messages" if isinstance(fmt, ChatFormat) else "prompt",
        ) from None
    params = sampling_params(body, len(ids), engine.engine.max_model_len, logprobs)
    try:
        engine.reserve()
    except Overloaded as error:
        raise APIError(
            429,
            f"server overloaded: {error}; retry later",
            "rate_limit_error",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    request_id = fmt.new_request_id()
    outputs = engine.generate(request_id, ids, params, arrival)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse(fmt.stream(request_id, outputs, include_usage)), media_type="text/event-stream")
    final = await last_output(outputs, request)
    if final is None:  # the client left; nobody reads this
        return Response(status_code=499)
    return JSONResponse(fmt.response(request_id, final))


async def last_output(outputs: AsyncIterator[RequestOutput], request: Request) -> RequestOutput | None:
    """The final output, or None if the client disconnected first (which aborts the request)."""

    async def consume() -> RequestOutput:
        last = None
        async for output in outputs:
            last = output
        return last

    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await outputs.aclose()
                return None
    except EngineDead as error:
        raise APIError(503, str(error), "service_unavailable", headers={"Retry-After": "5"}) from None


async def sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
    except EngineDead as error:
        yield f"data: {json.dumps(error_body(str(error), 'service_unavailable', None, 503))}\n\n"
    yield "data: [DONE]\n\n"


class ResponseFormat:
    """How one endpoint shapes outputs into responses and stream chunks."""

    prefix = ""
    object_name = ""
    chunk_name = ""

    def __init__(self, model: str, engine: AsyncEngine) -> None:
        self.model, self.engine, self.created = model, engine, now()

    def new_request_id(self) -> str:
        return new_id(self.prefix)

    def usage(self, output: RequestOutput) -> dict:
        prompt, completion = len(output.prompt_token_ids), len(output.outputs[0].token_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": output.num_cached_tokens},
        }

    def envelope(self, request_id: str, name: str, choices: list[dict]) -> dict:
        return {"id": request_id, "object": name, "created": self.created, "model": self.model, "choices": choices}

    def response(self, request_id: str, output: RequestOutput) -> dict:
        completion = output.outputs[0]
        body = self.envelope(request_id, self.object_name, [self.choice(completion.text, completion, 0, True)])
        body["usage"] = self.usage(output)
        return body

    async def stream(
        self, request_id: str, outputs: AsyncIterator[RequestOutput], include_usage: bool
    ) -> AsyncIterator[dict]:
        sent_text, sent_tokens = 0, 0
        last = None
        async for output in outputs:
            last = output
            completion = output.outputs[0]
            delta = completion.text[sent_text:]
            if not delta and not output.finished:
                continue  # never an empty delta: the text may be held back for a stop string
            choice = self.choice(delta, completion, sent_tokens, False)
            sent_text, sent_tokens = len(completion.text), len(completion.token_ids)
            if output.finished:
                choice["finish_reason"] = completion.finish_reason
            yield self.envelope(request_id, self.chunk_name, [choice])
        if include_usage and last is not None:
            chunk = self.envelope(request_id, self.chunk_name, [])
            chunk["usage"] = self.usage(last)
            yield chunk

    def choice(self, text: str, completion: CompletionOutput, first_token: int, final: bool) -> dict:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        return self.engine.engine.tokenizer.decode([token_id])


class ChatFormat(ResponseFormat):
    prefix, object_name, chunk_name = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def __init__(self, model: str, engine: AsyncEngine, top_logprobs: int = 0) -> None:
        super().__init__(model, engine)
        self.top_logprobs = top_logprobs
        self._role_sent = False

    def choice(self, text: str, completion: CompletionOutput, first_token: int, final: bool) -> dict:
        choice: dict = {"index": 0, "logprobs": None, "finish_reason": completion.finish_reason if final else None}
        if final:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["delta"] = {"content": text}
            if not self._role_sent:
                choice["delta"]["role"], self._role_sent = "assistant", True
        if completion.logprobs is not None:
            tokens = zip(completion.token_ids[first_token:], completion.logprobs[first_token:], strict=True)
            choice["logprobs"] = {"content": [self._token_logprobs(t, entry) for t, entry in tokens]}
        return choice

    def _token_logprobs(self, token_id: int, entry: dict[int, float]) -> dict:
        top = sorted(entry.items(), key=lambda item: -item[1])[: self.top_logprobs]
        return {
            **self._logprob(token_id, entry[token_id]),
            "top_logprobs": [self._logprob(t, logprob) for t, logprob in top],
        }

    def _logprob(self, token_id: int, logprob: float) -> dict:
        text = self.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


class CompletionFormat(ResponseFormat):
    prefix, object_name, chunk_name = "cmpl", "text_completion", "text_completion"

    def __init__(self, model: str, engine: AsyncEngine, echo: bool, prompt_ids: list[int]) -> None:
        super().__init__(model, engine)
        self.echo_text = engine.engine.tokenizer.decode(prompt_ids) if echo else ""

    def choice(self, text: str, completion: CompletionOutput, first_token: int, final: bool) -> dict:
        if self.echo_text and (final or first_token == 0):
            text = self.echo_text + text
        choice: dict = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": completion.finish_reason if final else None,
        }
        if completion.logprobs is not None:
            ids = completion.token_ids[first_token:]
            entries = completion.logprobs[first_token:]
            choice["logprobs"] = {
                "tokens": [self.token_text(t) for t in ids],
                "token_logprobs": [e[t] for t, e in zip(ids, entries, strict=True)],
                "top_logprobs": [{self.token_text(t): lp for t, lp in e.items()} for e in entries],
                "text_offset": [],
            }
        return choice
