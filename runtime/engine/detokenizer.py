"""Incremental detokenization with stop strings. Text that could still turn out to be the start of a
stop string is held back, so a streamed delta never has to be taken back."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str], skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.skip_special_tokens = skip_special_tokens
        self.hold_back = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self._ids: list[int] = []
        self._prefix_offset = 0  # decoding restarts a few tokens back so merges across tokens come out right
        self._read_offset = 0

    def add(self, token_id: int) -> str | None:
        """Append a token. Returns the stop string if the text now holds one (the text is cut before it)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) <= len(before) or after.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait
            return None
        new_text = after[len(before) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        search_from = max(len(self.text) - self.hold_back, 0)
        self.text += new_text
        found = [(i, stop) for stop in self.stop if (i := self.text.find(stop, search_from)) != -1]
        if not found:
            return None
        index, stop = min(found)
        self.text = self.text[:index]
        return stop

    def visible_text(self, finished: bool) -> str:
        """What may be shown so far: all of it once finished, else all but a possible stop-string start."""
        if finished or not self.hold_back:
            return self.text
        return self.text[: max(len(self.text) - self.hold_back, 0)]

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)) if ids else ""
