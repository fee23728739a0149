"""The semantic cache's judgement. Which requests may use it; what must be equal for two requests to share an
answer (the scope: tenant, model, embedder, system prompt and earlier turns, every output-affecting parameter,
the structured-output constraint included); what is compared by meaning (only the last user turn); and the
checks that stop a close embedding from serving a different question. Embedders score a question and its
negation, or the same words in another order, as near-identical (GPTCache #694 measured 0.83-0.9997), so a hit
needs the similarity *and* no sign that the two prompts differ in polarity, numbers, units, names or the order
of the same words."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from tokenyard.gateway.canonical import canonical_request
from tokenyard.gateway.config import CachePolicy

CHAT = "/v1/chat/completions"


def _vocabulary(words: str) -> list[str]:
    return words.split()


NEGATIONS = frozenset(
    _vocabulary(
        "not no never none nobody nothing neither nor without cannot nowhere hardly barely isnt arent wasnt werent "
        "dont doesnt didnt wont wouldnt cant couldnt shouldnt hasnt havent hadnt mustnt aint"
    )
)
NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        _vocabulary(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen twenty"
        )
    )
} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "dozen": "12",
    "half": "0.5",
}
# Words that carry no meaning of their own; what remains is compared for order and names. ("us" is not one:
# it is also the US.)
STOPWORDS = frozenset(
    _vocabulary(
        "a an the is are was were be been being am do does did to of in on at for from by with and or but if then so "
        "as that this these those it its what which who whom whose how why when where can could would should will "
        "shall may might must i you he she we they me him her them your my our his their please tell explain about "
        "there here "
        "some any"
    )
)
# Words whose swap for the other flips the answer. Embedders place them close together, since they occur in
# the same contexts.
OPPOSITE_PAIRS = [
    ("better", "worse"),
    ("best", "worst"),
    ("first", "last"),
    ("more", "less"),
    ("most", "least"),
    ("more", "fewer"),
    ("before", "after"),
    ("above", "below"),
    ("over", "under"),
    ("import", "export"),
    ("increase", "decrease"),
    ("increases", "decreases"),
    ("raise", "lower"),
    ("buy", "sell"),
    ("win", "lose"),
    ("won", "lost"),
    ("up", "down"),
    ("in", "out"),
    ("on", "off"),
    ("old", "young"),
    ("older", "younger"),
    ("oldest", "youngest"),
    ("hot", "cold"),
    ("warm", "cold"),
    ("big", "small"),
    ("bigger", "smaller"),
    ("biggest", "smallest"),
    ("large", "small"),
    ("larger", "smaller"),
    ("largest", "smallest"),
    ("high", "low"),
    ("higher", "lower"),
    ("highest", "lowest"),
    ("early", "late"),
    ("earlier", "later"),
    ("open", "close"),
    ("push", "pull"),
    ("add", "remove"),
    ("start", "stop"),
    ("always", "never"),
    ("love", "hate"),
    ("like", "dislike"),
    ("happy", "sad"),
    ("max", "min"),
    ("maximum", "minimum"),
    ("cheap", "expensive"),
    ("cheapest", "expensive"),
    ("safe", "dangerous"),
    ("safest", "dangerous"),
    ("fast", "slow"),
    ("faster", "slower"),
    ("fastest", "slowest"),
    ("long", "short"),
    ("longer", "shorter"),
    ("longest", "shortest"),
    ("heavy", "light"),
    ("heavier", "lighter"),
    ("strong", "weak"),
    ("stronger", "weaker"),
    ("rich", "poor"),
    ("true", "false"),
    ("right", "wrong"),
    ("right", "left"),
    ("north", "south"),
    ("east", "west"),
    ("enable", "disable"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("upload", "download"),
    ("input", "output"),
    ("inside", "outside"),
    ("include", "exclude"),
    ("maximize", "minimize"),
    ("positive", "negative"),
    ("pass", "fail"),
    ("accept", "reject"),
    ("allow", "deny"),
    ("arrive", "depart"),
    ("arrival", "departure"),
    ("get", "give"),
    ("got", "gave"),
    ("borrow", "lend"),
    ("lent", "borrowed"),
    ("to", "from"),
    ("into", "from"),
    ("with", "against"),
    ("getting", "losing"),
    ("gain", "lose"),
    ("ascending", "descending"),
    ("asc", "desc"),
    ("inhale", "exhale"),
    ("sunrise", "sunset"),
    ("rise", "fall"),
    ("top", "bottom"),
    ("front", "back"),
    ("forward", "backward"),
    ("forwards", "backwards"),
    ("lowercase", "uppercase"),
    ("plus", "minus"),
    ("add", "subtract"),
    ("multiply", "divide"),
    ("buyer", "seller"),
    ("sender", "receiver"),
    ("parent", "child"),
    ("parents", "children"),
    ("nice", "mean"),
    ("kind", "mean"),
    ("love", "hate"),
    ("loves", "hates"),
    ("won", "lose"),
    ("easy", "hard"),
    ("easiest", "hardest"),
    ("good", "bad"),
    ("well", "badly"),
    ("healthy", "unhealthy"),
    ("legal", "illegal"),
]
OPPOSITES: dict[str, frozenset[str]] = {}
for _one, _other in OPPOSITE_PAIRS:
    OPPOSITES[_one] = OPPOSITES.get(_one, frozenset()) | {_other}
    OPPOSITES[_other] = OPPOSITES.get(_other, frozenset()) | {_one}
PREPOSITIONS = frozenset(
    _vocabulary(
        "to from into onto with without at for against by before after above below over under in out on off up "
        "down toward towards through between among across behind beyond near"
    )
)
UNIT_MODIFIERS = frozenset(_vocabulary("square sq cubic cu per"))
WORD = re.compile(r"[A-Za-z0-9]+(?:[.,'’][A-Za-z0-9]+)*")


@dataclass(frozen=True)
class SemanticQuery:
    scope: str
    text: str


def semantic_query(body: dict[str, Any], endpoint: str, tenant: str, model: str, embedder: str) -> SemanticQuery | None:
    """The scope and the text to match, or None when the request has no single last user turn to compare."""
    request = canonical_request(body, endpoint)
    if endpoint == CHAT:
        messages = request.pop("messages", None)
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return None
        if messages[-1].get("role") != "user" or (text := _text(messages[-1].get("content"))) is None:
            return None
        context = messages[:-1]
    else:
        text, context = request.pop("prompt", None), []
        if not isinstance(text, str):
            return None
    text = " ".join(text.split())
    if not text:
        return None
    payload = {"tenant": tenant, "model": model, "embedder": embedder, "context": context, "request": request}
    scope = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return SemanticQuery(scope, text)


def _text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return " ".join(str(p.get("text", "")) for p in content)
    return None  # images, audio: not something a text embedding can vouch for


def bypassed(text: str, policy: CachePolicy) -> bool:
    """Personal or time-sensitive prompts (the policy's patterns) never use the semantic cache."""
    return policy.bypass is not None and policy.bypass.search(text) is not None


def serves(cached: str, incoming: str, similarity: float, policy: CachePolicy) -> bool:
    """Whether the entry stored for prompt ``cached`` may answer ``incoming`` (both already in one scope)."""
    same_content = Counter(_stems(_words(cached))) == Counter(_stems(_words(incoming)))  # a surface change only
    needed = policy.semantic_threshold if same_content else policy.semantic_reworded_threshold
    return (
        similarity >= needed
        and not bypassed(incoming, policy)
        and not bypassed(cached, policy)
        and difference(cached, incoming) is None
    )


def difference(cached: str, incoming: str) -> str | None:
    """Why two similar prompts may still ask different things, or None if nothing says they do."""
    a, b = _words(cached), _words(incoming)
    if _negations(a) != _negations(b):
        return "negation"
    if _quantities(a) != _quantities(b):
        return "numbers or units"
    if (_names(cached) ^ _names(incoming)) - (set(a) & set(b)):
        return "names"
    only_a, only_b = Counter(a) - Counter(b), Counter(b) - Counter(a)
    if any(OPPOSITES.get(word, frozenset()) & only_b.keys() for word in only_a):
        return "opposites"
    if "who" in a and "who" in b and _asks_whom(a) != _asks_whom(b):
        return "roles"  # who taught Aristotle / who did Aristotle teach
    content_a, content_b = _content(a), _content(b)
    stems_a, stems_b = _stems(a), _stems(b)
    if Counter(stems_a) == Counter(stems_b):
        if only_a.keys() & PREPOSITIONS and only_b.keys() & PREPOSITIONS:
            return "relation"  # the same words, one relation swapped: laughed with me / laughed at me
        # HTTP to HTTPS / HTTPS to HTTP; who killed Goliath / who did Goliath kill
        words_moved = content_a != content_b and Counter(content_a) == Counter(content_b)
        if words_moved or stems_a != stems_b:
            return "word order"
    return None


def _stems(words: list[str]) -> list[str]:
    return [_stem(w) for w in _content(words)]


def _words(text: str) -> list[str]:
    return [w.lower().replace("’", "'").replace("'", "").rstrip(".,") for w in WORD.findall(text)]


def _stem(word: str) -> str:
    """Crude suffix stripping, repeated until nothing changes, enough to see that succeeded/succeed and
    eats/eat are one word in another role."""
    while True:
        stem = word
        for suffix, replacement, shortest in (
            ("ies", "y", 5),
            ("ing", "", 6),
            ("ed", "", 5),
            ("es", "", 5),
            ("s", "", 4),
        ):
            if stem.endswith(suffix) and len(stem) >= shortest and not stem.endswith("ss"):
                stem = stem[: -len(suffix)] + replacement
                break
        stem = stem.removesuffix("e")
        if stem == word:
            return word
        word = stem


def _asks_whom(words: list[str]) -> bool:
    """Whether a who-question asks for the object (who did X teach) rather than the subject (who taught X)."""
    return any(w in ("who", "whom") and following in ("did", "does", "do") for w, following in pairwise(words))


def _negations(words: list[str]) -> int:
    return sum(w in NEGATIONS for w in words)


def _quantities(words: list[str]) -> Counter[tuple[str, str]]:
    """Each number (digits or words) with its unit, the word that follows it: 5 km and 5 miles differ."""
    found: Counter[tuple[str, str]] = Counter()
    for i, word in enumerate(words):
        number = NUMBER_WORDS.get(word) or (word.replace(",", "") if any(c.isdigit() for c in word) else None)
        if number is not None:
            following = [w for w in words[i + 1 : i + 3] if w not in UNIT_MODIFIERS]
            found[number, following[0] if following else ""] += 1
    return found


def _names(text: str) -> set[str]:
    """Capitalised words not at the start of a sentence, and words with inner capitals or digits (iPhone, GPT4)."""
    names = set()
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        for i, word in enumerate(WORD.findall(sentence)):
            inner = any(c.isupper() for c in word[1:]) or (any(c.isdigit() for c in word) and not word.isdigit())
            if inner or (i > 0 and word[0].isupper() and word.lower() not in STOPWORDS):
                names.add(word.lower().replace("'", ""))
    return names


def _content(words: list[str]) -> list[str]:
    return [w for w in words if w not in STOPWORDS]
