"""Structured-output conformance: every JSON Schema in benchmarks/data/json_schemas/ (real-world shapes written for
tokenyard, with a task prompt each) sent through `tokenyard serve` with the packaged SmolLM2-135M-Instruct, and each
answer checked: it parses, it validates (jsonschema, Draft 2020-12, formats checked), and it has no whitespace
outside strings but the one space after ',' and ':'. An answer cut by max_tokens is classified by where it was cut
(inside a string, in whitespace, elsewhere), so a model that rambles is told apart from a grammar that lets it.

    python -m tokenyard.benchmarks.schema_conformance --out docs/benchmarks.md [--limit N] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import jsonschema

from tokenyard.benchmarks.report import cpu_description, percentile, write_section
from tokenyard.benchmarks.serve import start_server

CORPUS_DIR = Path(__file__).parent / "data" / "json_schemas"
SYSTEM_PROMPT = "Answer with JSON only."  # the schema itself reaches only the grammar, as with OpenAI's API
MAX_TOKENS = 1024
ENGINE_FLAGS = ["--max-model-len", "2048", "--max-num-seqs", "8", "--kv-cache-memory-bytes", str(256 << 20)]


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str
    schema: dict[str, Any]


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    """Every schema file in the corpus, by name."""
    cases = []
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text())
        cases.append(Case(document["name"], document["prompt"], document["schema"]))
    return cases


def request_body(case: Case, max_tokens: int = MAX_TOKENS, **sampling: float) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": case.prompt},
        ],
        "temperature": 0,
        "max_tokens": max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": case.name, "schema": case.schema, "strict": True},
        },
        **sampling,
    }


# --- formats ----------------------------------------------------------------------------------------------------
# jsonschema checks date-time, time, duration, hostname and uri only through optional packages (rfc3339-validator,
# isoduration, fqdn, rfc3987); where one is missing the format would pass unchecked, so these stand in for it.
_DATE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))")
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))")  # RFC 3339 full-time
_DURATION = re.compile(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?")  # ISO 8601, as isoduration
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?#\[\]]|%[0-9A-Fa-f]{2})*")  # RFC 3986


def _is_clock(hour: str, minute: str, second: str, offset_hour: str | None, offset_minute: str | None) -> bool:
    offset_ok = offset_hour is None or (int(offset_hour) <= 23 and int(offset_minute or 0) <= 59)
    return int(hour) <= 23 and int(minute) <= 59 and int(second) <= 60 and offset_ok


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return False
    year, month, day, *clock = match.groups()
    try:
        datetime.date(int(year), int(month), int(day))
    except ValueError:
        return False
    return _is_clock(*clock)


def _is_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _TIME.fullmatch(value)
    return match is not None and _is_clock(*match.groups())


def _is_duration(value: object) -> bool:
    return not isinstance(value, str) or _DURATION.fullmatch(value) is not None


def _is_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    return 0 < len(value) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _is_uri(value: object) -> bool:
    return not isinstance(value, str) or _URI.fullmatch(value) is not None


FALLBACK_FORMATS = {
    "date-time": _is_date_time,
    "time": _is_time,
    "duration": _is_duration,
    "hostname": _is_hostname,
    "uri": _is_uri,
}


def format_checker() -> tuple[jsonschema.FormatChecker, list[str]]:
    """jsonschema's Draft 2020-12 format checker, with this module's checks for the formats it cannot check here;
    also the names of those formats."""
    checker = jsonschema.FormatChecker()
    checker.checkers = dict(jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers)
    missing = sorted(name for name in FALLBACK_FORMATS if name not in checker.checkers)
    for name in missing:
        checker.checks(name)(FALLBACK_FORMATS[name])
    return checker, missing


# --- the answer's text ------------------------------------------------------------------------------------------
@dataclass
class Scan:
    """A JSON text read once, as far as it goes: the whitespace outside strings that is not the one space after
    ',' or ':', and where the text ends (inside a string or not, at which key path, that string's text so far)."""

    stray_whitespace: list[str] = field(default_factory=list)
    ends_in_string: bool = False
    ends_in_whitespace: bool = False
    path: list[str | int] = field(default_factory=list)
    open_string: str = ""
    open_string_is_key: bool = False
    last: str = ""  # the last character outside strings


def scan(text: str) -> Scan:
    result = Scan()
    stack: list[list[Any]] = []  # per open container: [kind, key or index, expecting a key]
    in_string = escaped = is_key = False
    chars: list[str] = []
    run, previous = "", ""
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if is_key:
                    stack[-1][1] = "".join(chars)
                previous = char
                continue
            chars.append(char)
            continue
        if char.isspace():
            run += char
            continue
        if run and not (run == " " and previous in (",", ":")):
            result.stray_whitespace.append(run)
        run, previous = "", char
        if char == '"':
            in_string, chars = True, []
            is_key = bool(stack) and stack[-1][0] == "object" and stack[-1][2]
            if is_key:
                stack[-1][1] = None  # the previous key's value is done
        elif char in "{[":
            stack.append(["object", None, True] if char == "{" else ["array", 0, False])
        elif char in "}]" and stack:
            stack.pop()
        elif char == "," and stack:
            if stack[-1][0] == "object":
                stack[-1][2] = True
            else:
                stack[-1][1] += 1
        elif char == ":" and stack:
            stack[-1][2] = False
    if run:
        result.stray_whitespace.append(run)
        result.ends_in_whitespace = True
    result.ends_in_string = in_string
    result.open_string = "".join(chars) if in_string else ""
    result.open_string_is_key = in_string and is_key
    result.last = previous
    result.path = [frame[1] for frame in stack if frame[1] is not None]
    return result


def repeats(text: str, tail: int = 24) -> bool:
    """Whether a string's last characters appeared in it before: the model going round a loop."""
    return len(text) >= 2 * tail and text.count(text[-tail:]) >= 2


# --- one answer -------------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    status: int
    seconds: float
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    parsed: bool = False
    valid: bool = False
    error: str = ""
    stray_whitespace: list[str] = field(default_factory=list)
    cut: str = ""  # for finish_reason "length": where the answer ran out (a CUT_KINDS key) ...
    cut_string: str = ""  # ... the constraints of the string it was writing there, if any ...
    cut_detail: str = ""  # ... and all of that in words

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.parsed and self.valid and not self.stray_whitespace


def check(case: Case, status: int, body: dict[str, Any], seconds: float, checker: jsonschema.FormatChecker) -> Result:
    result = Result(case.name, status, seconds)
    if status != 200:
        result.error = f"HTTP {status}: {json.dumps(body)[:300]}"
        return result
    choice = body["choices"][0]
    result.text = choice["message"]["content"] or ""
    result.finish_reason = choice["finish_reason"]
    result.completion_tokens = body["usage"]["completion_tokens"]
    scanned = scan(result.text)
    result.stray_whitespace = scanned.stray_whitespace
    if result.finish_reason == "length":
        result.cut, result.cut_string, result.cut_detail = cut_reason(scanned, case.schema)
    try:
        answer = json.loads(result.text)
    except ValueError as error:
        result.error = f"not JSON: {error}"
        return result
    result.parsed = True
    validator = jsonschema.Draft202012Validator(case.schema, format_checker=checker)
    failure = jsonschema.exceptions.best_match(validator.iter_errors(answer))
    if failure is None:
        result.valid = True
    else:
        where = "/".join(str(part) for part in failure.absolute_path) or "(root)"
        result.error = f"invalid at {where}: {failure.message}"
    return result


CUT_KINDS = {
    "whitespace": "in whitespace outside a string",
    "string loop": "inside a string that repeats itself",
    "number": "in the digits of a number",
    "other": "elsewhere",
}


def cut_reason(scanned: Scan, schema: dict[str, Any]) -> tuple[str, str, str]:
    """Where an answer cut by max_tokens ran out: one of CUT_KINDS, the constraints of the string it was writing
    (if it was writing one), and a description for the failure table."""
    shown = scanned.path if len(scanned.path) <= 6 else ["...", *scanned.path[-4:]]
    where = "/".join(str(part) for part in shown) or "(root)"
    if scanned.ends_in_whitespace:
        return "whitespace", "", f"cut in whitespace outside a string, at {where}"
    if scanned.ends_in_string:
        what = "an object key" if scanned.open_string_is_key else describe(subschema_at(schema, scanned.path))
        looping = repeats(scanned.open_string)
        loop = ", repeating itself" if looping else ""
        depth = f", nesting depth {len(scanned.path)}" if len(scanned.path) > len(shown) else ""
        text = f"cut inside a {len(scanned.open_string)}-character string ({what}) at {where}{depth}{loop}"
        return ("string loop" if looping else "other"), what, text
    if scanned.last.isdigit():
        return "number", "", f"cut in the digits of a number at {where}"
    return "other", "", f"cut outside a string, at {where} (nesting depth {len(scanned.path)})"


def subschema_at(schema: dict[str, Any], path: list[str | int]) -> dict[str, Any] | None:
    """The subschema an answer's value at ``path`` follows, as far as properties, items, prefixItems,
    patternProperties, additionalProperties, local $refs and the branches of allOf/anyOf/oneOf tell."""
    node: Any = schema
    for part in path:
        node = _child(schema, _resolved(schema, node), part)
        if node is None:
            return None
    resolved = _resolved(schema, node)
    return resolved if isinstance(resolved, dict) else None


def _resolved(root: dict[str, Any], node: Any) -> Any:
    for _ in range(32):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/")):
            return node
        target: Any = root
        for key in node["$ref"][2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        node = target
    return node


def _child(root: dict[str, Any], node: Any, part: str | int) -> Any:
    if not isinstance(node, dict):
        return None
    if isinstance(part, int):
        prefix = node.get("prefixItems", [])
        found = prefix[part] if part < len(prefix) else node.get("items")
    else:
        found = node.get("properties", {}).get(part)
        if found is None:
            patterns = node.get("patternProperties", {})
            found = next((sub for pattern, sub in patterns.items() if re.search(pattern, part)), None)
        if found is None and isinstance(node.get("additionalProperties"), dict):
            found = node["additionalProperties"]
        if found is None and node.get("additionalProperties", True) is True and not node.get("patternProperties"):
            found = {}  # an additional property: any value
    if found is None:
        for keyword in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(keyword, []):
                found = found or _child(root, _resolved(root, branch), part)
    return found


def describe(subschema: dict[str, Any] | None) -> str:
    """A string's constraints, as the failure table names them."""
    if subschema is None:
        return "schema not traced"
    parts = [f"format {subschema['format']}"] if "format" in subschema else []
    parts += ["pattern"] if "pattern" in subschema else []
    parts += [f"maxLength {subschema['maxLength']}"] if "maxLength" in subschema else []
    return ", ".join(parts) or "free text, no maxLength"


class Poster(Protocol):
    def post(self, url: str, *, json: Any) -> Any: ...


def send(
    client: Poster, case: Case, checker: jsonschema.FormatChecker, max_tokens: int = MAX_TOKENS, **sampling: float
) -> Result:
    """One case through /v1/chat/completions (an httpx client on a server, or Starlette's TestClient)."""
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=request_body(case, max_tokens, **sampling))
    seconds = time.perf_counter() - started
    return check(case, response.status_code, response.json(), seconds, checker)


# --- the run ----------------------------------------------------------------------------------------------------
def run(
    cases: list[Case], max_tokens: int, concurrency: int, model: str | None = None, **sampling: float
) -> tuple[list[Result], float]:
    """Every case through a server of ``model`` (the packaged one when None)."""
    checker, _ = format_checker()
    flags = ENGINE_FLAGS + (["--model", model] if model else [])
    process, url = start_server(Path(tempfile.mkdtemp()) / "server.log", flags)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                answers = pool.map(lambda case: progress(send(client, case, checker, max_tokens, **sampling)), cases)
                results = list(answers)
            return results, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)


def progress(result: Result) -> Result:
    mark = "ok" if result.ok else "FAIL"
    print(
        f"{mark:4} {result.name:28} {result.finish_reason or result.status!s:6} {result.completion_tokens:5} tok "
        f"{result.seconds:6.1f} s {result.cut_detail or result.error}",
        flush=True,
    )
    return result


def render(results: list[Result], duration: float, args: argparse.Namespace, fallbacks: list[str]) -> str:
    total = len(results)
    answered = [r for r in results if r.status == 200]
    stopped = [r for r in answered if r.finish_reason == "stop"]
    parsed, valid = sum(r.parsed for r in results), sum(r.valid for r in results)
    finishes = Counter(r.finish_reason or f"HTTP {r.status}" for r in results)
    cuts = Counter(r.cut for r in answered if r.finish_reason == "length")
    loops = Counter(r.cut_string for r in answered if r.cut == "string loop")
    stray = sum(bool(r.stray_whitespace) for r in results)

    def share(count: int, of: int) -> str:
        return f"{count}/{of} ({100 * count / of:.1f}%)" if of else "0/0"

    def spread(values: list[float], digits: int) -> str:
        return f"{percentile(values, 50):.{digits}f} / {percentile(values, 95):.{digits}f}"

    checked_here = ", ".join(fallbacks) if fallbacks else "none"
    served = args.model or "the packaged SmolLM2-135M-Instruct Q4_1 GGUF"
    penalty = "" if args.repetition_penalty is None else f", repetition_penalty {args.repetition_penalty:g}"
    met = valid == total and not cuts["whitespace"] and not stray
    lines = [
        f"## Structured output: JSON Schema conformance, {args.model or 'SmolLM2-135M'}, CPU",
        "",
        f"{total} JSON Schemas (Draft 2020-12) of real-world shapes from `benchmarks/data/json_schemas/`, each with "
        f"its own task prompt, sent to `tokenyard serve` ({served}, default dtype) "
        f"on `/v1/chat/completions` with `response_format` `json_schema` (strict), temperature 0, max_tokens "
        f'{args.max_tokens}{penalty}, the system prompt "{SYSTEM_PROMPT}", {args.concurrency} request(s) at a time. '
        f"Machine: {cpu_description()}. Run on {datetime.date.today().isoformat()}.",
        "",
        "Each answer is parsed with `json.loads` and validated with jsonschema's `Draft202012Validator` and its "
        f"`FormatChecker`; formats that jsonschema checks only through optional packages missing here ({checked_here}) "
        "are checked by the runner itself (RFC 3339 date-time and full-time, ISO 8601 duration, RFC 1123 hostname, "
        "RFC 3986 URI). jsonschema's own `email` check only asks for an `@`. An answer cut by max_tokens is "
        "classified by where it ran out.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| schemas | {total} |",
        f"| answered (HTTP 200) | {share(len(answered), total)} |",
        f"| parsed (`json.loads`) | {share(parsed, total)} |",
        f"| valid against its schema | {share(valid, total)} |",
        f"| valid, of the answers that finished with `stop` | {share(sum(r.valid for r in stopped), len(stopped))} |",
        "| finish_reason | " + ", ".join(f"{reason}: {count}" for reason, count in sorted(finishes.items())) + " |",
    ]
    lines += [f"| max_tokens hits cut {words} | {cuts[kind]} |" for kind, words in CUT_KINDS.items()]
    lines += [
        f"| answers with whitespace outside strings (beyond `, ` and `: `) | {stray} |",
        f"| latency p50 / p95, all answers (s) | {spread([r.seconds for r in answered], 1)} |",
        f"| latency p50 / p95, answers that stopped (s) | {spread([r.seconds for r in stopped], 1)} |",
        f"| completion tokens p50 / p95, all answers | {spread([r.completion_tokens for r in answered], 0)} |",
        f"| completion tokens p50 / p95, answers that stopped | {spread([r.completion_tokens for r in stopped], 0)} |",
        f"| whole run (s) | {duration:.0f} |",
        "",
        f"Every answer parses and validates and none runs out in whitespace: {'yes' if met else 'NO'}.",
    ]
    if loops:
        by_constraint = ", ".join(f"{what}: {count}" for what, count in loops.most_common())
        lines += ["", f"The strings that repeated themselves until max_tokens, by their constraints: {by_constraint}."]
    failures = [r for r in results if not r.ok]
    if failures:
        lines += [
            "",
            "Answers that did not parse and validate:",
            "",
            "| schema | finish | tokens | why | answer's last characters |",
            "| --- | --- | ---: | --- | --- |",
        ]
        for r in failures:
            why = r.cut_detail or r.error
            if r.stray_whitespace:
                why += f"; whitespace outside strings: {r.stray_whitespace[:3]!r}"
            tail = r.text[-60:].replace("|", "\\|").replace("\n", "\\n").replace("`", "'")
            lines.append(f"| `{r.name}` | {r.finish_reason or r.status} | {r.completion_tokens} | {why} | `{tail}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the section into this markdown file")
    parser.add_argument("--limit", type=int, default=None, help="only the first N schemas (by name)")
    parser.add_argument("--only", default=None, help="only these schemas (comma-separated names)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--model", default=None, help="serve this model (a path or a cached hub id), not the packaged")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument(
        "--repetition-penalty", type=float, default=None, help="sent with every request (default: none, plain greedy)"
    )
    parser.add_argument("--results", type=Path, default=None, help="also write every answer to this JSON file")
    args = parser.parse_args()
    cases = load_corpus()
    if args.only:
        wanted = set(args.only.split(","))
        cases = [case for case in cases if case.name in wanted]
        if missing := wanted - {case.name for case in cases}:
            raise SystemExit(f"not in the corpus: {', '.join(sorted(missing))}")
    cases = cases[: args.limit]
    sampling = {} if args.repetition_penalty is None else {"repetition_penalty": args.repetition_penalty}
    results, duration = run(cases, args.max_tokens, args.concurrency, args.model, **sampling)
    _, fallbacks = format_checker()
    report = render(results, duration, args, fallbacks)
    if args.results:
        args.results.write_text(json.dumps([vars(r) for r in results], indent=1))
    if args.out:
        write_section(args.out, "schema-conformance", report)
    print(report)


if __name__ == "__main__":
    main()
