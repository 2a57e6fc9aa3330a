"""A chat-completions request read and checked before any model work: each refusal is an `ApiError` (4xx) that
names the field and says what to send instead.

A conversation is about one picture (MobileVLM's template has one place for it): the first user message must hold it
as an `image_url` part, a `data:` URL, or a file path (or file:// URL) under the folder the server was started with;
later messages hold text only. `system` and `developer` messages are skipped: the model answers with the system
prompt it was trained with. The client sends the whole history, user and assistant turns alternating, ending with
the user's question.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from ..errors import MvlmError
from ..runtime.chat import check_question
from ..runtime.preprocess import load_image
from ..runtime.sampling import GenerationConfig
from .settings import Settings
from .stream import ApiError

SKIPPED_ROLES = ("system", "developer")
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.S)


@dataclass
class ChatRequest:
    image: Image.Image
    history: list[tuple[str, str]]  # the earlier (question, answer) turns
    question: str
    config: GenerationConfig
    stream: bool
    include_usage: bool


def bad(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, message, "invalid_request_error", param, code)


def parse_chat(body: bytes, settings: Settings) -> ChatRequest:
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise bad(f"the body is not JSON ({str(error)[:100]}); send a JSON object.") from None
    if not isinstance(request, dict):
        raise bad(f"the body is a JSON {type(request).__name__}; send a JSON object with model and messages.")
    model = request.get("model")
    if not isinstance(model, str):
        raise bad(f"model must be a string naming the served model ({settings.model_name!r}).", "model")
    if model != settings.model_name:
        raise ApiError(404, f"the model {model!r} is not served here; this server serves {settings.model_name!r} "
                            "(GET /v1/models).", "invalid_request_error", "model", "model_not_found")
    if request.get("n", 1) != 1:
        raise bad(f"n must be 1 (one answer a request), not {request.get('n')!r}.", "n")
    image, history, question = read_messages(request.get("messages"), settings)
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise bad(f"stream must be true or false, not {stream!r}.", "stream")
    options = request.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object like {\"include_usage\": true}.", "stream_options")
    return ChatRequest(image, history, question, generation(request, settings), stream,
                       bool(options.get("include_usage", False)))


def generation(request: dict, settings: Settings) -> GenerationConfig:
    """temperature, top_p, max_tokens (or max_completion_tokens), seed and stop as runtime/sampling.py takes them."""
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is None:
        max_tokens = settings.default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad(f"max_tokens must be a whole number >= 1, not {max_tokens!r}.", "max_tokens")
    if max_tokens > settings.max_tokens:
        raise bad(f"max_tokens is {max_tokens}, over this server's limit of {settings.max_tokens}; ask for fewer.",
                  "max_tokens")
    temperature = number(request, "temperature", 0.0, 0.0, 2.0)  # greedy unless asked
    top_p = number(request, "top_p", 1.0, 0.0, 1.0)
    stop = request.get("stop")
    stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad(f"stop must be a non-empty string or a list of up to 4, not {stop!r}.", "stop")
    seed = request.get("seed")
    try:
        return GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                seed=seed, stop_strings=tuple(stops))
    except MvlmError as error:
        param = str(error).split(" ", 1)[0]  # runtime/sampling.py's messages begin with the setting's name
        raise bad(str(error), {"top_p": "top_p", "seed": "seed"}.get(param)) from None


def number(request: dict, name: str, default: float, low: float, high: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise bad(f"{name} must be a number from {low:g} to {high:g}, not {value!r}.", name)
    return float(value)


def read_messages(messages, settings: Settings) -> tuple[Image.Image, list[tuple[str, str]], str]:
    """The picture, the earlier turns and the question, from the history the client sent."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects.", "messages")
    image, turns = None, []  # turns: (role, text), system messages skipped
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", *SKIPPED_ROLES):
            raise bad(f"{where} must be an object whose role is user, assistant or system.", where)
        role = message["role"]
        if role in SKIPPED_ROLES:
            continue
        text, pictures = read_content(message.get("content"), where, settings.max_question_chars)
        if pictures and (role != "user" or turns):
            raise bad(f"{where} holds a picture; a conversation is about one picture, given in its first user "
                      "message: start a new conversation for another picture.", where, "picture_misplaced")
        if len(pictures) > 1:
            raise bad(f"{where} holds {len(pictures)} pictures; this model takes one picture a conversation.", where,
                      "too_many_pictures")
        if pictures:
            image = read_picture(pictures[0], f"{where}.content", settings)
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise bad(f"{where} is a {role} message where a {expected} message was expected; user and assistant "
                      "messages alternate, starting with the user.", where)
        turns.append(text.strip() if role == "user" else text)  # as runtime/chat.py keeps a question
    if len(turns) % 2 == 0:
        raise bad("the last message must be the user's question.", "messages")
    if image is None:
        raise bad("this model answers questions about a picture: put an image_url part (a data: URL) in the first "
                  "user message.", "messages", "picture_missing")
    question = turns[-1]
    try:
        check_question(question)
    except MvlmError:
        raise bad("the question (the last user message) has no text; add a text part.", "messages") from None
    return image, list(zip(turns[:-1:2], turns[1:-1:2])), question


def read_content(content, where: str, max_chars: int) -> tuple[str, list[str]]:
    """A message's text (its text parts joined by newlines) and the URLs of its image_url parts."""
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise bad(f"{where}.content must be a string or a list of text and image_url parts.", f"{where}.content")
    texts, pictures = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise bad(f"{where} has an image_url part without a url string.", f"{where}.content")
            pictures.append(url)
        else:
            raise bad(f"{where}.content has a part of type {kind!r}; send text and image_url parts.",
                      f"{where}.content")
    text = "\n".join(texts)
    if len(text) > max_chars:
        raise bad(f"{where} has {len(text)} characters, over this server's limit of {max_chars}; shorten it.",
                  f"{where}.content", "question_too_long")
    return text, pictures


def read_picture(url: str, where: str, settings: Settings) -> Image.Image:
    """A data: URL, or a file under the pictures folder; decoded and checked (size, shape) now, not in the queue."""
    if url.startswith("data:"):
        match = DATA_URL.fullmatch(url)
        if not match:
            raise bad(f"{where}: the data: URL is not base64 (data:image/png;base64,...).", where, "invalid_image")
        try:
            data = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"{where}: the data: URL's base64 is not valid; encode the picture file's bytes in base64.",
                      where, "invalid_image") from None
        return decode(data, where, settings)
    try:
        return decode(read_file(url, where, settings), where, settings)
    except (ValueError, OSError):  # a URL or path that cannot be parsed or read
        raise bad(f"{where}: {url[:100]!r} cannot be read as a file under the pictures folder; send a data: URL.",
                  where, "invalid_image") from None


def read_file(url: str, where: str, settings: Settings) -> bytes:
    scheme = urlparse(url).scheme
    if scheme and scheme != "file" and len(scheme) > 1:  # a one-letter scheme is a Windows drive
        raise bad(f"{where}: the server fetches no {scheme}: URLs; send the picture as a data: URL.", where,
                  "invalid_image")
    if settings.pictures_folder is None:
        raise bad(f"{where}: this server reads no files (started without --pictures-folder); send the picture as a "
                  "data: URL.", where, "invalid_image")
    path = Path(unquote(urlparse(url).path) if scheme == "file" else url)
    path = (settings.pictures_folder / path).resolve()  # an absolute path stays absolute
    if not path.is_relative_to(settings.pictures_folder) or not path.is_file():
        raise bad(f"{where}: {url!r} is not a file under the pictures folder; name a file there or send a data: URL.",
                  where, "invalid_image")
    return path.read_bytes()


def decode(data: bytes, where: str, settings: Settings) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size  # the header only
    except Exception:
        raise bad(f"{where}: the bytes are not a picture file; send a PNG, JPEG or other picture.", where,
                  "invalid_image") from None
    if width * height > settings.max_picture_pixels:
        raise bad(f"{where}: the picture is {width}x{height} pixels, over this server's limit of "
                  f"{settings.max_picture_pixels:,}; scale it down.", where, "picture_too_large")
    try:
        image = load_image(data)
        image.load()
        return image
    except MvlmError as error:
        raise bad(f"{where}: {error}", where, "invalid_image") from None
