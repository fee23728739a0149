"""How each endpoint shapes engine outputs into OpenAI responses and stream chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from tokenyard.runtime.outputs import CompletionOutput, RequestOutput
from tokenyard.wire.openai import new_id, now


class ResponseFormat:
    """How one endpoint shapes outputs into responses and stream chunks."""

    prefix = ""
    object_name = ""
    chunk_name = ""

    def __init__(self, model: str, tokenizer) -> None:
        self.model, self.tokenizer, self.created = model, tokenizer, now()

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
        async with aclosing(outputs):  # leaving early closes the engine's stream at once, which aborts it
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
        return self.tokenizer.decode([token_id])


class ChatFormat(ResponseFormat):
    prefix, object_name, chunk_name = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def __init__(self, model: str, tokenizer, top_logprobs: int = 0) -> None:
        super().__init__(model, tokenizer)
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

    def __init__(self, model: str, tokenizer, echo: bool, prompt_ids: list[int]) -> None:
        super().__init__(model, tokenizer)
        self.echo_text = tokenizer.decode(prompt_ids) if echo else ""

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
