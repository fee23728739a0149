"""OpenAI wire types: the requests we accept, the error envelope, and SSE framing.

The request models are strict (a boolean is ``true`` or ``false``, never ``0``) and bounded, so whatever
passes them is safe to hand to an engine; checks that need the model (token ids within its vocabulary,
the prompt against its context) are the runtime's."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
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


MAX_REGEX_CHARS = 16_384
MAX_GRAMMAR_CHARS = 131_072
MAX_CHOICES = 1024


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = Field(default=None, max_length=4096)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema", description="the JSON Schema; {} is any JSON")
    strict: bool | None = None


class ResponseFormatField(BaseModel):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON that follows a schema."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormatField:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema must be given exactly when type is "json_schema"')
        return self


Regex = Annotated[str, Field(min_length=1, max_length=MAX_REGEX_CHARS)]
Grammar = Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)]
Choices = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]], Field(min_length=1, max_length=MAX_CHOICES)
]


class StructuredOutputsField(BaseModel):
    """vLLM's ``structured_outputs``: exactly one constraint."""

    model_config = ConfigDict(strict=True, extra="forbid")

    json_: dict[str, Any] | str | None = Field(default=None, alias="json", description="a JSON Schema")
    regex: Regex | None = None
    choice: Choices | None = None
    grammar: Grammar | None = Field(default=None, description="Lark (llguidance's dialect) or GBNF")
    json_object: Literal[True] | None = None

    def given(self) -> list[tuple[str, Any]]:
        values: dict[str, Any] = {"json": self.json_, "regex": self.regex, "choice": self.choice}
        values |= {"grammar": self.grammar, "json_object": self.json_object}
        return [(kind, value) for kind, value in values.items() if value is not None]


@dataclass(frozen=True)
class Constraint:
    """A request's one constraint in vLLM's terms (kind: json, json_object, regex, choice or grammar), and the
    request field it came from (for errors)."""

    kind: str
    value: Any
    field: str


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
    # Structured output: OpenAI's field, vLLM's, and vLLM's removed guided_* fields (taken as aliases, not ignored).
    response_format: ResponseFormatField | None = None
    structured_outputs: StructuredOutputsField | None = None
    guided_json: dict[str, Any] | str | None = Field(default=None, description="alias of structured_outputs.json")
    guided_regex: Regex | None = Field(default=None, description="alias of structured_outputs.regex")
    guided_choice: Choices | None = Field(default=None, description="alias of structured_outputs.choice")
    guided_grammar: Grammar | None = Field(default=None, description="alias of structured_outputs.grammar")

    @model_validator(mode="after")
    def _min_tokens_within_max(self) -> SamplingFields:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingFields:
        given = self._constraints()
        if len(given) > 1:
            fields = ", ".join(constraint.field for constraint in given)
            raise ValueError(f"a request takes one structured-output constraint; this one has {len(given)}: {fields}")
        return self

    def constraint(self) -> Constraint | None:
        """The request's structured-output constraint, if it has one (the validators allow at most one)."""
        given = self._constraints()
        return given[0] if given else None

    def _constraints(self) -> list[Constraint]:
        found = []
        form = self.response_format
        if form is not None and form.type == "json_object":
            found.append(Constraint("json_object", True, "response_format"))
        if form is not None and form.json_schema is not None:
            found.append(Constraint("json", form.json_schema.schema_, "response_format.json_schema.schema"))
        if self.structured_outputs is not None:
            given = self.structured_outputs.given()
            if not given:
                raise ValueError("structured_outputs names no constraint: give one of json, regex, choice, grammar")
            found += [Constraint(kind, value, f"structured_outputs.{kind}") for kind, value in given]
        for kind in ("json", "regex", "choice", "grammar"):
            value = getattr(self, f"guided_{kind}")
            if value is not None:
                found.append(Constraint(kind, value, f"guided_{kind}"))
        return found

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
