"""The API's answer shapes: a `chat.completion` object, or server-sent events of `chat.completion.chunk` objects
(the first with the assistant's role, then content deltas, then one with the finish reason, then the usage when the
client asked for it, then `data: [DONE]`), and the error object `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import json
import time
import uuid

# runtime/chat.py's finish reasons -> the API's: a stop rule or the end of the answer is "stop", a length cut "length"
FINISH = {"eos": "stop", "stop_string": "stop", "stopped": "stop", "max_new_tokens": "length", "context": "length"}
DONE = b"data: [DONE]\n\n"


class ApiError(Exception):
    """A request the server refuses: its HTTP status and the API's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def usage(answer) -> dict:
    """Token counts: the prompt's positions in the cache (a picture counts its image tokens) and the answer's."""
    prompt, completion = answer.timings.prompt_tokens, answer.timings.new_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Reply:
    """One request's answer, as a whole object or as chunks sharing its id, model and creation time."""

    def __init__(self, model: str, include_usage: bool = False):
        self.id, self.model, self.created = f"chatcmpl-{uuid.uuid4().hex}", model, int(time.time())
        self.include_usage = include_usage

    def completion(self, answer) -> dict:
        message = {"role": "assistant", "content": answer.text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH[answer.finish_reason]}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(answer)}

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def finish(self, answer) -> bytes:
        """The last chunk with a choice; then the usage chunk (choices empty) when asked for; then [DONE]."""
        last = self._chunk({}, FINISH[answer.finish_reason])
        if self.include_usage:
            last += sse({**self._head("chat.completion.chunk"), "choices": [], "usage": usage(answer)})
        return last + DONE

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> bytes:
        chunk = {**self._head("chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:  # the API sends `usage: null` on every chunk but the last when usage is asked for
            chunk["usage"] = None
        return sse(chunk)

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"
