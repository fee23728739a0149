"""Constraints compiled into llguidance grammars: checked (every reason for a refusal named), bounded in time,
and cached, so that the same schema costs one compile however many requests send it.

JSON is generated compactly but readably: ``", "`` between items and ``": "`` after keys, and no other
whitespace outside strings, so an answer can never run to max_tokens on blank lines (the most reported
structured-output bug in vLLM and xgrammar). Schema keywords llguidance cannot enforce are refused, never
dropped."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
import llguidance
import llguidance.hf
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tokenyard.runtime.sampling_params import StructuredOutputsParams
from tokenyard.runtime.validation import InvalidValue

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
CACHE_SIZE = 512  # compiled grammars kept (a matcher template each: kilobytes to a few megabytes)
COMPILE_SECONDS = 5.0  # a constraint that takes longer to compile (and compute its first mask) is refused
# llguidance's own work limits (its defaults, named here): a grammar past them fails to compile, a step past them
# fails its request, so no constraint can hold the engine's step loop for long.
LIMITS = LLParserLimits(step_lexer_fuel=200_000, step_max_items=50_000, max_grammar_size=500_000)


@dataclass(frozen=True)
class CompiledGrammar:
    kind: str
    template: LLMatcher  # in its start state; never advanced
    compile_seconds: float

    def new_matcher(self) -> LLMatcher:
        return self.template.deep_copy()


class GrammarCompiler:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise ValueError("structured output needs a fast (Rust) tokenizer; this model's tokenizer is not one")
        # n_vocab is the logits' width: ids past the tokenizer's own (padding rows) are never allowed.
        self.tokenizer: LLTokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.unwritable_bytes = _unwritable_bytes(self.tokenizer)
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, constraint: StructuredOutputsParams) -> CompiledGrammar:
        key = constraint.key
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        compiled = self._compile(constraint)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, constraint: StructuredOutputsParams) -> CompiledGrammar:
        kind = constraint.kind
        field = f"structured_outputs.{kind}"
        started = time.perf_counter()
        shown = _shown(getattr(constraint, kind))
        try:
            self._check_writable(constraint, field, shown)
            grammar = _grammar(constraint)
            is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer, limits=LIMITS)
            if is_error:
                raise InvalidValue(field, shown, f"{_ALLOWED[kind]}: {messages[0]}")
            template = LLMatcher(self.tokenizer, grammar, log_level=0, limits=LIMITS)
        except InvalidValue:
            raise
        except ValueError as error:  # llguidance's own refusals: numbers past 64 bits, lone surrogates, ...
            raise InvalidValue(field, shown, f"{_ALLOWED[kind]}: {error}") from None
        template.compute_bitmask()  # the first mask builds the lexer: a pathological grammar shows here
        seconds = time.perf_counter() - started
        if template.is_error():
            raise InvalidValue(field, shown, f"{_ALLOWED[kind]}: {template.get_error()}")
        if seconds > COMPILE_SECONDS:
            raise InvalidValue(
                field,
                shown,
                f"a constraint that compiles within {COMPILE_SECONDS:g} s (this one took {seconds:.1f} s)",
            )
        return CompiledGrammar(kind, template, seconds)

    def _check_writable(self, constraint: StructuredOutputsParams, field: str, shown: str) -> None:
        """Refuse text the answer would have to spell out but no token of the vocabulary can: a byte-level BPE
        vocabulary may lack a few bytes (SmolLM2's has no 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf1 or 0xf2, so
        neither those control characters nor Unicode planes 4-11), and llguidance then allows tokens that skip
        the byte and fails on the next step. Regexes and grammars are held to every character they contain."""
        if not self.unwritable_bytes:
            return
        for text in _literals(constraint):
            for char in text:
                missing = sorted(set(char.encode("utf-8", "surrogatepass")) & self.unwritable_bytes)
                if missing:
                    raise InvalidValue(
                        field,
                        shown,
                        f"text this model's vocabulary can write: {char!r} (U+{ord(char):04X}) needs the byte "
                        f"0x{missing[0]:02x}, which none of its tokens holds",
                    )


def _unwritable_bytes(tokenizer: LLTokenizer) -> frozenset[int]:
    """The bytes no token holds: text that contains one can never be generated."""
    every_token = tokenizer.decode_bytes(list(range(tokenizer.vocab_size)))  # all of them, one after another
    return frozenset(range(256)) - set(every_token)


def _literals(constraint: StructuredOutputsParams) -> Iterator[str]:
    """The text a constraint spells out: its choices, its regex or grammar, a schema's keys and fixed values."""
    if constraint.choice is not None:
        yield from constraint.choice
    elif constraint.regex is not None:
        yield constraint.regex
    elif constraint.grammar is not None:
        yield constraint.grammar
    elif isinstance(constraint.json, dict):
        yield from _schema_literals(constraint.json)


def _schema_literals(schema: object) -> Iterator[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from _schema_literals(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("const", "enum", "pattern"):  # values the answer spells out: data, not more schema
                yield from _strings(value)
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                yield from (name for name in value if isinstance(name, str))
            yield from _schema_literals(value)


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _grammar(constraint: StructuredOutputsParams) -> str:
    if constraint.json is not None or constraint.json_object:
        schema = constraint.json if isinstance(constraint.json, dict) else ANY_JSON_OBJECT
        _check_schema(schema)
        return LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    if constraint.regex is not None:
        return LLMatcher.grammar_from_regex(constraint.regex)
    if constraint.choice is not None:
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(choice) for choice in constraint.choice))
    assert constraint.grammar is not None
    try:
        return llguidance.grammar_from("grammar", constraint.grammar)  # Lark as it is, GBNF converted
    except ValueError as error:
        allowed = f"{_ALLOWED['grammar']}: {error}"
        raise InvalidValue("structured_outputs.grammar", _shown(constraint.grammar), allowed) from None


def _check_schema(schema: dict[str, Any]) -> None:
    """A schema that is not valid JSON Schema (by its own $schema's metaschema, 2020-12 when absent)."""
    if not isinstance(schema.get("$schema", ""), str):  # jsonschema looks it up in a dict, as a string
        raise InvalidValue("structured_outputs.json", _shown(schema), "a JSON Schema whose $schema is a URI string")
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise InvalidValue(
            "structured_outputs.json", _shown(schema), f"a valid JSON Schema (at {where}: {error.message})"
        ) from None
    if "x-guidance" in schema:  # llguidance's own options would override the whitespace bound
        raise InvalidValue("structured_outputs.json", _shown(schema), "a JSON Schema without an x-guidance key")


_ALLOWED = {
    "json": "a JSON Schema that llguidance supports",
    "json_object": "true",
    "regex": "a regular expression (Rust regex syntax)",
    "choice": "a non-empty list of strings",
    "grammar": "a Lark or GBNF grammar",
}


def _shown(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
