"""OpenAI wire types: the requests we accept, the error envelope, and SSE framing.

The request models are strict (a boolean is ``true`` or ``false``, never ``0``) and bounded, so whatever
passes them is safe to hand to an engine; checks that need the model (token ids within its vocabulary,
the prompt against its context) are the runtime's."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

INT32_MAX = 2**31 - 1
MAX_STOP_SEQUENCES = 64
MAX_STOP_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS = 1024  # OpenAI allows 300; vLLM has no limit
MAX_TOP_LOGPROBS = 20
# torch.Generator.manual_seed's range
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


def _integral(value: object) -> object:
    """JSON Schema's integers include 5.0; strict pydantic would refuse it. 5.5 and "5" stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)  # after the bounds in an Annotated, so the JSON Schema keeps them
Finite = Annotated[float, Field(allow_inf_nan=False)]
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX), INTEGRAL]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(BaseModel):
    """Fields both endpoints share. Absent max_tokens means: up to the context limit."""

    # Unknown fields are accepted and ignored, as vLLM and OpenAI do: clients send vendor extensions.
    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = Field(default=None, max_length=512)
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX), INTEGRAL] | None = Field(default=None)
    temperature: Finite = Field(default=1.0, ge=0, le=2)
    top_p: Finite = Field(default=1.0, gt=0, le=1)
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX), INTEGRAL] = Field(
        default=0, description="0 or -1: off; above the vocabulary: off"
    )
    min_p: Finite = Field(default=0.0, ge=0, le=1)
    presence_penalty: Finite = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: Finite = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: Finite = Field(default=1.0, gt=0, le=100)
    logit_bias: dict[TokenIdKey, Annotated[Finite, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS, description='token id (as a string, like "50256") -> bias'
    )
    seed: Annotated[int, Field(ge=MIN_SEED, le=MAX_SEED), INTEGRAL] | None = Field(default=None)
    stop: (
        Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
        | Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP_SEQUENCES)
        ]
        | None
    ) = None
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] = Field(default=1, description="n > 1 is not supported yet")
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX), INTEGRAL] = Field(default=0)
    user: str | None = Field(default=None, max_length=512)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _min_tokens_within_max(self) -> SamplingFields:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self

    def token_logit_bias(self) -> dict[int, float]:
        return {int(key): value for key, value in (self.logit_bias or {}).items()}


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: str = Field(max_length=64)
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text is served
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT32_MAX), INTEGRAL] | None = Field(default=None)
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = Field(default=None)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _prefer_max_completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(SamplingFields):
    prompt: str | list[TokenId] | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="one prompt: a string, a list of token ids, or a list holding one string"
    )
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = Field(default=None)
    echo: bool = False


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# The type OpenAI's clients expect for each status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "internal_server_error" if status >= 500 else "invalid_request_error")


# For OpenAPI documents: the statuses every OpenAI route may answer with an error object.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "invalid request: what was wrong and what is allowed",
        401: "bad or missing API key",
        404: "unknown model",
        413: "body too large",
        429: "overloaded or over a limit; see Retry-After",
        500: "a failure while serving this request",
        503: "not ready, shutting down or overloaded; see Retry-After",
    }.items()
}


# For OpenAPI documents: a completion route answers JSON, or SSE when the request asked to stream.
COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion (JSON), or its stream (SSE) when `stream` is true",
        "content": {"text/event-stream": {}},
    },
    **ERROR_RESPONSES,
}


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(message: str, status: int) -> str:
    """The event that ends a stream that broke after its 200 was sent, followed by SSE_DONE."""
    return sse_event(error_body(message, error_type(status), None, status))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
