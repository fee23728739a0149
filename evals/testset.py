"""A testset: JSONL items plus the files they point at (system prompt, JSON schema)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class TestsetError(ValueError):
    """A testset file that cannot be used; the message names the file and line."""


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    __test__ = False  # not a pytest class

    id: str
    question: str
    contexts: list[str] | None = None
    reference_contexts: list[str] | None = None
    reference: str | None = None
    system_prompt_file: str | None = None
    expected_label: str | None = None
    expected_output: dict[str, Any] | None = None
    json_schema: str | None = None
    # The key of the JSON answer that holds the label; the classifier set's label is the emotion.
    label_field: str = "emotion"

    # Resolved from the files above when the testset is loaded.
    system_prompt: str | None = None
    schema_: dict[str, Any] | None = None
    schema_name: str | None = None  # response_format.json_schema.name: see schema_name()


class Testset(BaseModel):
    __test__ = False

    path: str
    sha256: str
    items: list[Item]


def load_testset(path: Path, limit: int | None = None) -> Testset:
    """Reads ``path``; file names in items are relative to its folder. ``limit`` keeps the first N items
    (the hash is still the whole file's, so a limited run gates against a full baseline only if asked)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TestsetError(f"cannot read testset {path}: {error.strerror}") from error
    items: list[Item] = []
    files: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = Item.model_validate_json(line)
        except ValidationError as error:
            raise TestsetError(f"{path}:{number}: not a testset item: {error}") from error
        if item.system_prompt_file:
            item.system_prompt = _read_relative(path, item.system_prompt_file, files)
        if item.json_schema:
            item.schema_ = json.loads(_read_relative(path, item.json_schema, files))
            item.schema_name = schema_name((path.parent / item.json_schema).resolve())
        items.append(item)
    if not items:
        raise TestsetError(f"testset {path} has no items")
    chosen = items[:limit] if limit else items
    return Testset(path=str(path), sha256=hashlib.sha256(data).hexdigest(), items=chosen)


def schema_name(schema_file: Path) -> str:
    """The name a schema is sent under (OpenAI's ``json_schema.name``: 1-64 of ``a-zA-Z0-9_-``): the file's
    name without its extension, or its folder's when the file is just ``schema.json``
    (``classifier/schema.json`` -> ``classifier``)."""
    stem = schema_file.stem
    if stem.lower() == "schema" and schema_file.parent.name:
        stem = schema_file.parent.name
    return re.sub(r"[^a-zA-Z0-9_-]", "_", stem)[:64] or "schema"


def _read_relative(testset: Path, name: str, cache: dict[str, str]) -> str:
    if name not in cache:
        try:
            cache[name] = (testset.parent / name).read_text(encoding="utf-8")
        except OSError as error:
            raise TestsetError(f"{testset}: referenced file {name} cannot be read: {error.strerror}") from error
    return cache[name]
