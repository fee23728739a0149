"""The OpenAI-compatible HTTP API over the async engine.

Nothing a request carries runs on the event loop beyond parsing its (size-limited) body: templating and
tokenising happen on a worker thread, generation on the engine's thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from tokenyard.runtime.engine.inputs import PromptTooLong, TokenizedPrompt
from tokenyard.runtime.outputs import RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams, StructuredOutputsParams
from tokenyard.runtime.server.async_engine import (
    AsyncEngine,
    EngineDead,
    Overloaded,
    RequestFailed,
    yield_to_the_event_loop,
)
from tokenyard.runtime.server.formats import ChatFormat, CompletionFormat, ResponseFormat
from tokenyard.runtime.structured_output.grammars import COMPILE_SECONDS
from tokenyard.runtime.validation import InvalidValue
from tokenyard.wire.asgi import install_error_handlers
from tokenyard.wire.openai import (
    COMPLETION_RESPONSES,
    ERROR_RESPONSES,
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    Constraint,
    SamplingFields,
    error_body,
    error_type,
    now,
    sse_error,
    sse_event,
)

RETRY_AFTER_SECONDS = "1"
NOT_SERVING = "not loaded yet, shutting down, or the engine failed"
T = TypeVar("T")


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


@dataclass
class ServerSettings:
    served_model_name: str
    api_key: str | None = None
    chat_template: str | None = None


def build_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="tokenyard runtime", docs_url=None, redoc_url=None)
    app.state.engine, app.state.settings = engine, settings
    install_error_handlers(app)

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        body = error_body(error.message, error_type(error.status), error.param, error.status)
        return JSONResponse(body, error.status, headers=error.headers)

    # Dependencies are coroutines: FastAPI runs plain functions on a worker thread, and starting those threads
    # under load stalled the event loop.
    async def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer <key>)")

    async def ready() -> None:
        if not engine.ready:
            reason = str(engine.failure) if engine.failure else "the model is not loaded yet"
            raise APIError(503, reason, headers={"Retry-After": "5"})

    guards = [Depends(authorized), Depends(ready)]

    @app.get(
        "/health",
        response_class=Response,
        responses={200: {"description": "the model is loaded and serving"}, 503: {"description": NOT_SERVING}},
    )
    async def health() -> Response:
        return Response(status_code=200 if engine.ready else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        body = generate_latest(engine.metrics.registry) if engine.metrics else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorized)], responses=ERROR_RESPONSES)
    async def models() -> dict:
        card = {"id": settings.served_model_name, "object": "model", "created": now(), "owned_by": "tokenyard"}
        return {"object": "list", "data": [{**card, "max_model_len": engine.max_model_len if engine.ready else None}]}

    @app.post("/v1/chat/completions", dependencies=guards, responses=COMPLETION_RESPONSES)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model, settings)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = await off_loop(chat_prompt, engine, messages, settings.chat_template, body.add_generation_prompt)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        fmt = ChatFormat(settings.served_model_name, engine.tokenizer, body.top_logprobs or 0)
        return await respond(engine, request, body, prompt, logprobs, fmt)

    @app.post("/v1/completions", dependencies=guards, responses=COMPLETION_RESPONSES)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body.model, settings)
        one_string = isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str)
        text = body.prompt[0] if one_string else body.prompt
        prompt = await off_loop(completion_prompt, engine, text)
        fmt = CompletionFormat(settings.served_model_name, engine.tokenizer, body.echo, prompt.token_ids)
        return await respond(engine, request, body, prompt, body.logprobs, fmt)

    return app


async def watch_event_loop(engine: AsyncEngine, interval: float = 0.01) -> None:
    """Measures how late the loop runs a timer; anything that blocks it shows up here (and in /health's latency)."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        if engine.metrics is not None:
            engine.metrics.event_loop_lag.observe(max(loop.time() - start - interval, 0.0))


# Templating and tokenising, off the event loop. Two threads: a long one does not hold up short ones, and few
# threads contend for the GIL with the loop (six made /health wait 100-250 ms under 100 long prompts).
INPUT_THREAD_COUNT = 2
INPUT_THREADS = ThreadPoolExecutor(INPUT_THREAD_COUNT, thread_name_prefix="inputs", initializer=yield_to_the_event_loop)


async def start_input_threads() -> None:
    """Start the input threads now: a thread started under load makes the loop wait for it to run."""
    await asyncio.gather(*(off_loop(time.sleep, 0.05) for _ in range(INPUT_THREAD_COUNT)))


async def off_loop(work: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(INPUT_THREADS, work, *args)


def chat_prompt(
    engine: AsyncEngine, messages: list[dict], chat_template: str | None, add_generation_prompt: bool
) -> TokenizedPrompt:
    try:
        text = engine.inputs.render_chat(messages, chat_template, add_generation_prompt)
    except Exception as error:  # a template may raise anything (Jinja's raise_exception included)
        raise APIError(400, f"the chat template failed on these messages: {error}", "messages") from None
    return checked_prompt(engine, text, False, "messages")


def completion_prompt(engine: AsyncEngine, prompt: str | list[int]) -> TokenizedPrompt:
    if isinstance(prompt, list):
        try:
            return engine.inputs.checked(TokenizedPrompt(None, prompt))
        except ValueError as error:
            raise APIError(400, str(error), "prompt") from None
    return checked_prompt(engine, prompt, True, "prompt")


def checked_prompt(engine: AsyncEngine, text: str, add_special_tokens: bool, param: str) -> TokenizedPrompt:
    try:
        return engine.inputs.checked(TokenizedPrompt(text, engine.inputs.encode(text, add_special_tokens)))
    except ValueError as error:
        raise APIError(400, str(error), param) from None


def check_model(model: str | None, settings: ServerSettings) -> None:
    if model is not None and model != settings.served_model_name:
        raise APIError(
            404, f"The model `{model}` does not exist; this server serves `{settings.served_model_name}`", "model"
        )


def sampling_params(
    engine: AsyncEngine, body: SamplingFields, constraint: Constraint | None, prompt_len: int, logprobs: int | None
) -> SamplingParams:
    try:
        params = SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            logit_bias=body.token_logit_bias(),
            seed=body.seed,
            stop=body.stop,
            stop_token_ids=body.stop_token_ids or [],
            ignore_eos=body.ignore_eos,
            max_tokens=body.max_tokens,
            min_tokens=body.min_tokens,
            logprobs=logprobs,
            structured_outputs=structured_outputs(constraint),
        )
        engine.inputs.check_params(params)
        engine.inputs.check_room(params, prompt_len)
    except PromptTooLong as error:
        raise APIError(400, str(error), "max_tokens") from None
    except ValueError as error:
        raise APIError(400, str(error), str(error).split("=")[0]) from None
    return params


def structured_outputs(constraint: Constraint | None) -> StructuredOutputsParams | None:
    if constraint is None:
        return None
    try:
        return StructuredOutputsParams(**{constraint.kind: constraint.value})
    except InvalidValue as error:
        raise constraint_error(constraint, error) from None


async def compile_constraint(engine: AsyncEngine, constraint: Constraint | None, params: SamplingParams) -> None:
    """Compile the request's constraint off the event loop (the engine then finds it cached), within a time
    limit: a constraint that cannot be compiled, or not in time, is the client's 400, not a stuck engine."""
    if params.structured_outputs is None or constraint is None:
        return
    try:
        await asyncio.wait_for(off_loop(engine.structured_outputs.compile, params.structured_outputs), COMPILE_SECONDS)
    except ValueError as error:  # InvalidValue, or a model whose tokenizer cannot take constraints
        raise constraint_error(constraint, error) from None
    except TimeoutError:
        message = f"{constraint.field} took longer than {COMPILE_SECONDS:g} s to compile: simplify it"
        raise APIError(400, message, constraint.field) from None


def constraint_error(constraint: Constraint, error: ValueError) -> APIError:
    """The 400 for a constraint, named by the request field that carried it (not the runtime's own name)."""
    if isinstance(error, InvalidValue):
        return APIError(400, f"{constraint.field} is invalid: must be {error.allowed}", constraint.field)
    return APIError(400, f"{constraint.field}: {error}", constraint.field)


async def respond(
    engine: AsyncEngine,
    request: Request,
    body: SamplingFields,
    prompt: TokenizedPrompt,
    logprobs: int | None,
    fmt: ResponseFormat,
) -> Response:
    arrival = time.monotonic()
    constraint = body.constraint()
    params = sampling_params(engine, body, constraint, len(prompt.token_ids), logprobs)
    await compile_constraint(engine, constraint, params)
    try:
        engine.reserve()
    except Overloaded as error:
        raise APIError(
            429, f"server overloaded: {error}; retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
        ) from None
    request_id = fmt.new_request_id()
    outputs = engine.generate(request_id, prompt.token_ids, params, arrival)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStream(sse(fmt.stream(request_id, outputs, include_usage)))
    final = await last_output(outputs, request)
    if final is None:  # the client left; nobody reads this
        return Response(status_code=499)
    return JSONResponse(fmt.response(request_id, final))


async def last_output(outputs: AsyncIterator[RequestOutput], request: Request) -> RequestOutput | None:
    """The final output, or None if the client disconnected first (which aborts the request)."""

    async def consume() -> RequestOutput:
        last = None
        async with aclosing(outputs):
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
                return None
    except EngineDead as error:
        raise APIError(503, str(error), headers={"Retry-After": "5"}) from None
    except RequestFailed as error:
        raise APIError(500, f"{error}; the request was not served (other requests were)") from None
    finally:
        task.cancel()


async def sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async with aclosing(events):
            async for event in events:
                yield sse_event(event)
    except EngineDead as error:
        yield sse_error(str(error), 503)
    except RequestFailed as error:
        yield sse_error(f"{error}; the request was not finished (other requests were)", 500)
    yield SSE_DONE


class EventStream(StreamingResponse):
    """An SSE response that ends the moment its client leaves, however it leaves: it watches for the
    disconnect itself (a stream whose tokens are held back, e.g. for a stop string, sends nothing that could
    notice), and closes its generator, which aborts the request and frees its blocks at once."""

    def __init__(self, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        streaming = asyncio.ensure_future(super().__call__(scope, receive, send))
        watching = asyncio.ensure_future(client_left())
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, watching):
                task.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)
            await self.body_iterator.aclose()
        if not streaming.cancelled() and streaming.exception() is not None:
            raise streaming.exception()
