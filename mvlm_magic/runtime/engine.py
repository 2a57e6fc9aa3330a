"""Answer questions about an image with the three exported IRs; no torch anywhere.

    engine = Engine(export_folder, device="CPU")
    chat = engine.new_chat(image)
    stream = chat.ask("What colour is the circle?")
    for chunk in stream:            # text as it is generated
        print(chunk, end="")
    answer = stream.result()        # text, finish reason, timings
    chat.ask("And the square?")     # a follow-up reuses the KV state of the first turn

One engine holds one language-model InferRequest whose state is the KV cache of one chat at a
time; a lock keeps answers from interleaving, and a chat whose state was displaced is re-prefilled.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MvlmError
from ..store import read_manifest
from .detokenizer import IncrementalDetokenizer, answer_text
from .device import check_device, compile_model
from .memory import shed, shedding
from .preprocess import load_image, preprocess_image
from .sampling import GenerationConfig, Sampler
from .tokenizer import IMAGE_TOKEN_INDEX, Tokenizer, build_conversation, tokenize_with_image

BEAM_IDX = np.zeros(1, dtype=np.int32)  # one sequence: its cache rows stay where they are
OFFICIAL_STOP = "</s>"  # the v1 template's sep2; the official keyword check looks at the newest token only


@dataclass
class Timings:
    image_encode_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0  # from the question to the first new token, image encode included
    decode_ms: float = 0.0
    prompt_tokens: int = 0  # positions in the KV cache before the first new token (image tokens included)
    prefill_tokens: int = 0  # of those, how many this turn had to feed (the rest were cached)
    new_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / (self.decode_ms / 1000) if steps > 0 and self.decode_ms > 0 else 0.0

    def summary(self) -> str:
        return (f"image {self.image_encode_ms:.0f} ms · first token {self.first_token_ms:.0f} ms · "
                f"{self.decode_tokens_per_s:.1f} tokens/s · {self.new_tokens} tokens")


@dataclass
class Answer:
    question: str
    text: str
    token_ids: list[int]
    finish_reason: str  # eos | stop_string | max_new_tokens | stopped | context
    timings: Timings = field(default_factory=Timings)

    def __str__(self) -> str:
        return self.text


class Engine:
    """The compiled vision, text-embeddings and language models of one export, plus its tokenizer."""

    def __init__(self, folder: Path | str, device: str = "CPU", precision: str = "auto", threads: int | None = None,
                 ov_config: dict | None = None, kernels: str = "auto"):
        folder = Path(folder)
        self.manifest = read_manifest(folder)
        if not self.manifest:
            raise MvlmError(f"{folder} is not a complete export (no manifest.json); export the model again.")
        self.folder, self.device, self.precision = folder, check_device(device), precision
        spec = self.manifest["model"]
        self.num_image_tokens = spec["num_image_tokens"]
        self.context_length = spec["context_length"]
        self.image_size = spec["image_size"]
        self.eos_token_id = spec["eos_token_id"]
        started = time.perf_counter()
        self.tokenizer = Tokenizer.from_folder(folder)
        vision_xml, language_xml = self.model_files(kernels)
        self.kernels = None if language_xml.name == "language.xml" else "int4"  # whose MatMuls and attention run
        self.vision_kernels = vision_xml.name != "vision.xml"
        # OpenVINO copies the vision weights into its own layout while compiling, the language model's on its
        # first inference; shedding the mapped file pages meanwhile keeps them from counting twice (memory.py).
        # Our operations read their weights straight from the mapped file: those pages are in use, not copies.
        with shedding([] if self.vision_kernels else [folder / "vision.bin"]):
            self.vision = compile_model(vision_xml, self.device, precision, threads, ov_config)
        self.text_embeddings = compile_model(folder / "text_embeddings.xml", self.device, precision, threads, ov_config)
        language = compile_model(language_xml, self.device, precision, threads, ov_config)
        self.language = language.create_infer_request()
        self.beam_inputs = {"beam_idx": BEAM_IDX} if any("beam_idx" in p.names for p in language.inputs) else {}
        self.lock = threading.RLock()
        self.state_owner: ChatSession | None = None  # whose KV cache the language request holds
        self.past_length = 0
        # (With our operations, the keys and values are kept by our attention operation: query_state() is empty.)
        with shedding([] if self.kernels else [folder / "language.bin"]):
            self.prime()
        self.compile_seconds = time.perf_counter() - started
        self.was_cached = True  # load_engine() says whether it had to export first

    def model_files(self, kernels: str) -> tuple[Path, Path]:
        """vision.xml and language.xml, or their copies with our operations (runtime/kernels.py) where faster:
        `kernels` is "auto" (where they are faster: kernels.helps_here()), "on" (wherever they build) or "off".
        The language copy needs an int4 export, the vision one an int4 or int8 export (kernels.copies)."""
        if kernels not in ("auto", "on", "off"):
            raise MvlmError(f"kernels must be 'auto', 'on' or 'off', not {kernels!r}.")
        plain = self.folder / "vision.xml", self.folder / "language.xml"
        if kernels == "off" or self.device != "CPU" or self.precision != "auto":
            return plain  # f32 answers must match the reference: no int8 activations
        from . import kernels as ours

        if not ((kernels == "on" or ours.helps_here()) and ours.extension() is not None):
            return plain
        try:
            vision, language = ours.copies(self.folder)
        except OSError:  # a read-only cache: OpenVINO's own path
            return plain
        finally:  # making a copy read the original's weights, whose file OpenVINO keeps mapped
            shed([self.folder / "vision.bin", self.folder / "language.bin"])
        return vision or plain[0], language or plain[1]

    @property
    def name(self) -> str:
        ours = [name for name, used in (("int4", self.kernels), ("int8 vision", self.vision_kernels)) if used]
        kernel = f" with our {' and '.join(ours)} kernels" if ours else ""
        return f"{self.manifest['model_id']} [{self.manifest['compression']['label']}] on {self.device}{kernel}"

    def new_chat(self, image=None) -> ChatSession:
        return ChatSession(self, image)

    def ask(self, image, question: str, config: GenerationConfig | None = None, **options) -> Answer:
        """One question, one blocking answer (a new chat each time)."""
        return self.new_chat(image).ask(question, config, **options).result()

    # --- model calls (callers hold self.lock) ----------------------------------------------------

    def encode_image(self, image) -> np.ndarray:
        pixel_values = preprocess_image(load_image(image), image_size=self.image_size)  # (1, 3, 336, 336)
        return self.vision(pixel_values)[0]  # (1, 144, C)

    def embed(self, ids: list[int], image_embeds: np.ndarray | None) -> np.ndarray:
        """Token ids (IMAGE_TOKEN_INDEX where the image goes) -> (1, L, C)."""
        pieces = []
        for is_image, group in itertools.groupby(ids, key=lambda t: t == IMAGE_TOKEN_INDEX):
            group = list(group)
            if is_image:
                pieces += [image_embeds[0]] * len(group)  # (144, C) each
            else:
                pieces.append(self.text_embeddings(np.array([group], dtype=np.int64))[0][0])  # (T, C)
        return np.concatenate(pieces)[None]  # (1, L, C)

    def prime(self) -> None:
        """Start from the system prompt: every picture chat begins with the same text before its picture, so
        its keys and values are computed once, here, and each new chat reuses them (ChatSession._prefill).
        While loading, this is also the language model's first inference, when OpenVINO makes its one-time
        copy of the weights (seconds for a 1.7B model on two cores) — then, and not in the first answer."""
        with self.lock:
            self.reset_state()
            system = ChatSession(self)
            ids = tokenize_with_image(self.tokenizer, build_conversation([("?", None)], with_image=True))
            system.state_ids = ids[: text_before_image(ids)]  # BOS, the system prompt, "USER:"
            self.feed(self.embed(system.state_ids, None))
            self.state_owner = system

    def reset_state(self) -> None:
        self.language.reset_state()
        self.past_length = 0
        self.state_owner = None

    def truncate_state(self, positions: int) -> None:
        """Forget the cached keys/values after the first `positions` positions."""
        import openvino as ov

        for state in self.language.query_state():
            kept = state.state.data[:, :, :positions, :]  # (B, KV, P, D)
            state.state = ov.Tensor(np.ascontiguousarray(kept))
        self.past_length = positions

    def feed(self, inputs_embeds: np.ndarray) -> np.ndarray:
        """Run the language model on new positions after the cached ones; logits of the last one."""
        new = inputs_embeds.shape[1]
        total = self.past_length + new
        self.language.infer({
            "inputs_embeds": inputs_embeds,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(self.past_length, total, dtype=np.int64)[None],
            **self.beam_inputs,  # exports before format 2 have no beam_idx
        })
        self.past_length = total
        return self.language.get_tensor("logits").data[0, -1]  # (V,)

    def positions(self, ids: list[int]) -> int:
        return len(ids) + ids.count(IMAGE_TOKEN_INDEX) * (self.num_image_tokens - 1)


class ChatSession:
    """A conversation about one image. Each `ask` continues it; the KV cache is kept between turns."""

    def __init__(self, engine: Engine, image=None):
        self.engine = engine
        self.image = image
        self.history: list[tuple[str, str]] = []
        self.image_embeds: np.ndarray | None = None
        self.state_ids: list[int] = []  # the ids whose keys/values sit in the engine's state

    def ask(self, question: str, config: GenerationConfig | None = None, stop_event: threading.Event | None = None,
            **options) -> AnswerStream:
        check_question(question)
        if options:
            config = GenerationConfig(**{**(config.__dict__ if config else {}), **options})
        return AnswerStream(self, question.strip(), config or GenerationConfig(), stop_event)

    def prompt_ids(self, question: str) -> list[int]:
        turns = self.history + [(question, None)]
        prompt = build_conversation(turns, with_image=self.image is not None)
        return tokenize_with_image(self.engine.tokenizer, prompt)

    def reset(self) -> None:
        self.history.clear()
        self.state_ids = []
        if self.engine.state_owner is self:
            self.engine.state_owner = None


class AnswerStream:
    """Iterate for text chunks; `result()` finishes the answer and returns it; `stop()` from any thread."""

    def __init__(self, session: ChatSession, question: str, config: GenerationConfig, stop_event=None):
        self.session, self.question, self.config = session, question, config
        self.stop_event = stop_event or threading.Event()
        self._answer: Answer | None = None
        self._chunks = self._generate()

    def stop(self) -> None:
        self.stop_event.set()

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def result(self) -> Answer:
        for _ in self._chunks:
            pass
        return self._answer

    @property
    def answer(self) -> Answer | None:
        return self._answer

    def _generate(self) -> Iterator[str]:
        engine = self.session.engine
        with engine.lock:
            timings = Timings()
            started = time.perf_counter()
            ids, logits = self._prefill(timings, started)
            generated: list[int] = []
            shown = []  # the text handed out so far, as chunks
            try:
                finish = yield from self._decode(logits, ids, generated, shown, timings, started)
            except KeyboardInterrupt:
                finish = "stopped"  # the kernel's interrupt ends the answer, not the session
                if engine.past_length != engine.positions(self.session.state_ids):
                    engine.reset_state()  # interrupted between a model call and its bookkeeping
            final = answer_text(engine.tokenizer, generated)
            if finish == "stop_string" and self.config.stop_strings:
                cut = first_stop(final, tuple(self.config.stop_strings))
                final = final[:cut].strip() if cut is not None else final
            shown_text = "".join(shown)
            if final.startswith(shown_text) and len(final) > len(shown_text):
                yield final[len(shown_text):]
            if timings.first_token_ms:
                timings.decode_ms = (time.perf_counter() - started) * 1000 - timings.first_token_ms
            timings.new_tokens = len(generated)
            self.session.history.append((self.question, final))
            self._answer = Answer(self.question, final, generated, finish, timings)

    def _prefill(self, timings: Timings, started: float) -> tuple[list[int], np.ndarray]:
        """Encode the image (once per chat), then feed the prompt positions the KV state lacks."""
        session, engine = self.session, self.session.engine
        if session.image is not None and session.image_embeds is None:
            session.image_embeds = engine.encode_image(session.image)
            timings.image_encode_ms = (time.perf_counter() - started) * 1000
        ids = session.prompt_ids(self.question)
        needed = engine.positions(ids)
        if needed >= engine.context_length:
            raise MvlmError(f"the conversation needs {needed} positions but the model's context holds "
                            f"{engine.context_length}; start a new conversation or ask something shorter.")
        # Keep the cached positions this prompt shares with the state. The previous answer may
        # re-tokenize differently from how it was generated: from there on, recompute. Another chat's
        # state shares the text before its picture (the system prompt), never the picture onwards.
        owner = engine.state_owner
        held = owner.state_ids if owner is not None else []
        shareable = held if owner is session else held[: text_before_image(held)]
        cached = min(common_prefix(shareable, ids), len(ids) - 1)  # feed at least one position to get logits
        if cached == 0:
            engine.reset_state()
        elif cached < len(held):
            engine.truncate_state(engine.positions(ids[:cached]))
        new_ids = ids[cached:]
        timings.prefill_tokens = engine.positions(new_ids)
        prefill_start = time.perf_counter()
        logits = engine.feed(engine.embed(new_ids, session.image_embeds))
        engine.state_owner, session.state_ids = session, list(ids)
        timings.prefill_ms = (time.perf_counter() - prefill_start) * 1000
        timings.prompt_tokens = engine.past_length
        return ids, logits

    def _decode(self, logits, ids, generated, shown, timings, started) -> Iterator[str]:
        """Sample, check the stop rules, feed the token back; yield text that can no longer change.
        Returns the finish reason."""
        session, engine, config = self.session, self.session.engine, self.config
        sampler = Sampler(config)
        previous = [t for t in ids if t >= 0]  # for the repetition penalty
        detok = IncrementalDetokenizer(engine.tokenizer)
        stops = tuple(config.stop_strings)
        text = ""  # the whole answer so far, stop strings not yet cut
        while len(generated) < config.max_new_tokens:
            if self.stop_event.is_set():
                return "stopped"
            token = sampler.next_token(logits, previous)
            if not timings.first_token_ms:
                timings.first_token_ms = (time.perf_counter() - started) * 1000
            if token == engine.eos_token_id and not config.ignore_eos:
                return "eos"
            generated.append(token)
            previous.append(token)
            text += detok.push(token)
            if OFFICIAL_STOP in engine.tokenizer.piece(token):
                return "stop_string"
            if first_stop(text, stops) is not None:
                return "stop_string"
            safe = len(text) - held_back(text, stops)
            done = sum(map(len, shown))
            if safe > done:
                shown.append(text[done:safe])
                yield shown[-1]
            if len(generated) >= config.max_new_tokens:
                break
            if engine.past_length + 1 >= engine.context_length:
                return "context"
            logits = engine.feed(engine.embed([token], None))
            session.state_ids.append(token)
        return "max_new_tokens"


def check_question(question) -> None:
    if not isinstance(question, str) or not question.strip():
        raise MvlmError("the question is empty; write it in the cell (or pass a non-empty string).")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def text_before_image(ids: list[int]) -> int:
    """How many ids come before the first image position (all of them in a text-only chat)."""
    return ids.index(IMAGE_TOKEN_INDEX) if IMAGE_TOKEN_INDEX in ids else len(ids)


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string (so must not be shown yet)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
