"""A model on a server, behind the engine's interface: `%mvlm_load --server URL`, `mvlm ask --server URL`.

    engine = RemoteEngine("http://127.0.0.1:8000/v1", model="nano")
    chat = engine.new_chat(image)
    for text in chat.ask("What colour is the circle?"):   # streamed from the server
        print(text, end="")

It speaks the plain OpenAI chat-completions API with the official `openai` client, so it works with `mvlm serve`
and with other OpenAI-compatible servers of vision models: the picture goes as a PNG `data:` URL in the first
user message, and each question sends the whole conversation again (the server keeps the keys and values of
recent conversations, so a follow-up costs only its new turn there). The magics, the widgets and `mvlm ask` use it
as they use a local engine (widgets/protocol.py): streaming, Stop (closes the stream; `mvlm serve` stops that
answer), follow-ups, `_mvlm_answer` with its timings.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import uuid
from collections.abc import Iterator

from ..errors import MvlmError
from .chat import Answer, Timings, check_question
from .preprocess import load_image
from .sampling import GenerationConfig

FINISH = {"stop": "eos", "length": "max_new_tokens", "content_filter": "stopped"}  # the API's -> Answer's
TIMEOUT_S = 600.0
SESSION_HEADER = "x-session-id"  # one per conversation: Ray Serve's session affinity (serve/ray_app.py)


def picture_url(image) -> str:
    """A picture (anything load_image reads) as a PNG data: URL."""
    buffer = io.BytesIO()
    load_image(image).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class RemoteEngine:
    """A served model: `name`, `new_chat(image)`; no local model at all."""

    remote = True

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = TIMEOUT_S):
        try:
            import openai
        except ImportError:
            raise MvlmError("using a server needs the openai package; pip install openai.") from None
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        started = time.perf_counter()
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or "none", max_retries=0, timeout=timeout)
        try:
            served = [entry.id for entry in self.client.models.list().data]
        except openai.AuthenticationError:
            raise MvlmError(f"the server at {self.url} refused the API key; give the right one "
                            "(--api-key, or $OPENAI_API_KEY).") from None
        except openai.APIError as error:
            raise MvlmError(f"no OpenAI-compatible server answered at {self.url} ({type(error).__name__}); "
                            "check the address and that the server runs.") from None
        if model is None:
            if not served:
                raise MvlmError(f"the server at {self.url} serves no model.")
            model = served[0]
        elif model not in served:
            raise MvlmError(f"the server at {self.url} does not serve {model!r}; it serves {', '.join(served)}.")
        self.model = model
        self.compile_seconds = time.perf_counter() - started
        self.was_cached = True

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    def new_chat(self, image=None, prepare: bool = True, own_cache: bool = False) -> RemoteChat:
        return RemoteChat(self, image)

    def ask(self, image, question: str, config: GenerationConfig | None = None, **options) -> Answer:
        return self.new_chat(image).ask(question, config, **options).result()


class RemoteChat:
    """A conversation about one picture, kept here; each question sends it whole."""

    def __init__(self, engine: RemoteEngine, image=None):
        self.engine, self.image = engine, image
        self.history: list[tuple[str, str]] = []
        self._url: str | None = None  # the picture as a data: URL, made at the first question
        # sent with each question: behind Ray Serve with --sticky-sessions, a follow-up reaches the replica that keeps
        # this conversation's KV cache (other servers ignore the header)
        self.session = uuid.uuid4().hex

    def ask(self, question: str, config: GenerationConfig | None = None, stop_event: threading.Event | None = None,
            **options) -> RemoteStream:
        check_question(question)
        if options:
            config = GenerationConfig(**{**(config.__dict__ if config else {}), **options})
        if self.image is not None and self._url is None:
            self._url = picture_url(self.image)
        return RemoteStream(self, question.strip(), config or GenerationConfig(), stop_event)

    def messages(self, question: str) -> list[dict]:
        turns, messages = self.history + [(question, None)], []
        for i, (asked, answered) in enumerate(turns):
            content: list[dict] = [{"type": "text", "text": asked}]
            if i == 0 and self._url is not None:
                content.insert(0, {"type": "image_url", "image_url": {"url": self._url}})
            messages.append({"role": "user", "content": content})
            if answered is not None:
                messages.append({"role": "assistant", "content": answered})
        return messages

    def reset(self) -> None:
        self.history.clear()

    def close(self) -> None:
        pass


class RemoteStream:
    """Text chunks as the server streams them; `stop()` closes the stream (the server stops that answer)."""

    def __init__(self, chat: RemoteChat, question: str, config: GenerationConfig, stop_event=None):
        self.chat, self.question, self.config = chat, question, config
        self.stop_event = stop_event or threading.Event()
        self.answer: Answer | None = None
        self._response = None
        self._chunks = self._generate()

    def stop(self) -> None:
        self.stop_event.set()
        response = self._response
        if response is not None:
            response.close()

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def result(self) -> Answer:
        for _ in self._chunks:
            pass
        return self.answer

    def _generate(self) -> Iterator[str]:
        import openai

        config, chat = self.config, self.chat
        options = {"max_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p}
        if config.seed is not None:
            options["seed"] = config.seed
        if config.stop_strings:
            options["stop"] = list(config.stop_strings)
        timings, started, parts, finish = Timings(), time.perf_counter(), [], "stopped"
        try:
            self._response = chat.engine.client.chat.completions.create(
                model=chat.engine.model, messages=chat.messages(self.question), stream=True,
                stream_options={"include_usage": True}, extra_headers={SESSION_HEADER: chat.session}, **options)
            for chunk in self._response:
                if self.stop_event.is_set():
                    break
                if chunk.usage is not None:
                    timings.prompt_tokens = chunk.usage.prompt_tokens
                    timings.new_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        timings.first_token_ms = timings.first_token_ms or (time.perf_counter() - started) * 1000
                        parts.append(choice.delta.content)
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish = FINISH.get(choice.finish_reason, choice.finish_reason)
        except openai.BadRequestError as error:
            raise MvlmError(f"the server refused the question: {api_message(error)}") from None
        except openai.APIError as error:
            if not self.stop_event.is_set():  # a stream closed by Stop ends quietly
                raise MvlmError(f"the server failed to answer ({api_message(error)}); try again.") from None
        finally:
            if self._response is not None:
                self._response.close()
        if self.stop_event.is_set():
            finish = "stopped"
        text = "".join(parts)
        timings.new_tokens = timings.new_tokens or len(parts)
        if timings.first_token_ms:
            timings.decode_ms = (time.perf_counter() - started) * 1000 - timings.first_token_ms
        timings.picture_seen = bool(chat.history) and chat.image is not None
        chat.history.append((self.question, text))
        self.answer = Answer(self.question, text, [], finish, timings)


def api_message(error) -> str:
    """The server's own words from an API error's body, else the error's."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error).splitlines()[0]
