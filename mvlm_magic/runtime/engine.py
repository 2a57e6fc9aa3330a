"""The compiled models of one export and the calls a question makes of them; no torch anywhere.

    engine = Engine(export_folder, device="CPU")
    answer = engine.ask(image, "What colour is the circle?")      # one question, one answer
    chat = engine.new_chat(image)                                 # a conversation (chat.py)
    engine.prepare(image)                                         # ready that picture in the background

The engine compiles the vision, text-embeddings and language IRs (or their copies with our operations,
mvlm_magic/ops), embeds pictures and ids, and holds the language model's one KV cache (kv_state.py); a lock
makes each model call whole. `prepare` encodes a picture and feeds `system + picture` before the question is
asked (picture_cache.py), in a thread of its own that touches the cache only while no answer streams.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np

from ..ops import select
from ..store import verify_export
from .batching import Batcher, CacheRows
from .chat import Answer, ChatSession
from .device import check_device, compile_model, core
from .kv_state import common_prefix, compiled_state, text_before_image
from .memory import shedding
from .picture_cache import PictureCache, PrefixSnapshots, Preparation, picture_key
from .preprocess import CLIP_MEAN, CLIP_STD, load_image, preprocess_image
from .sampling import GenerationConfig
from .tokenizer import IMAGE_TOKEN_INDEX, Tokenizer, conversation_ids

# While a prefix is prepared, the chat in the cache is copied aside and put back (OpenVINO's cache only) when its
# copy is at most this big (a long 1.7B conversation in f32 is ~0.4 MB a position); a bigger one is displaced
# and, if continued, re-fed from its history.
SAVED_BYTES = 256 << 20
WAIT_STEP = 0.5  # s: how often a preparation waiting for an answer to end checks whether it was cancelled


class Engine:
    """The compiled vision, text-embeddings and language models of one export, plus its tokenizer."""

    def __init__(self, folder: Path | str, device: str = "CPU", precision: str = "auto", threads: int | None = None,
                 ov_config: dict | None = None, ops: str = "auto", *, kernels: str | None = None,
                 cache_dir: Path | str | None = None):
        folder = Path(folder)
        self.manifest = verify_export(folder)  # one line for a missing, short or incomplete file
        self.folder, self.device, self.precision = folder, check_device(device), precision
        spec = self.manifest["model"]
        self.num_image_tokens = spec["num_image_tokens"]
        self.context_length = spec["context_length"]
        self.image_size = spec["image_size"]
        self.image_mean, self.image_std = spec.get("image_mean", CLIP_MEAN), spec.get("image_std", CLIP_STD)
        self.eos_token_id = spec["eos_token_id"]
        started = time.perf_counter()
        self.tokenizer = Tokenizer.from_folder(folder)
        # vision.xml and language.xml, or their copies with our operations where those are faster (the library
        # built in cache_dir, None: default_cache_dir())
        self.ops_mode = ops if kernels is None else kernels
        self.ops_choice = select(folder, self.ops_mode, self.device, precision, cache_dir)
        vision_xml, language_xml = self.ops_choice.vision, self.ops_choice.language
        self.ops = "int4" if "int4" in self.ops_choice.ours else None  # whose MatMuls and attention run
        self.vision_ops = "int8 vision" in self.ops_choice.ours
        self.ops_why = self.ops_choice.why  # why OpenVINO's run the language model, when ours do not
        # OpenVINO copies the vision weights into its own layout while compiling, the language model's on its
        # first inference; shedding the mapped file pages meanwhile keeps them from counting twice (memory.py).
        # Our operations read their weights straight from the mapped file: those pages are in use, not copies.
        with shedding([] if self.vision_ops else [folder / "vision.bin"]):
            self.vision = compile_model(vision_xml, self.device, precision, threads, ov_config)
        self.pictures = PictureCache(self.vision)  # image features of the last pictures, with their own request
        self.text_embeddings = compile_model(folder / "text_embeddings.xml", self.device, precision, threads, ov_config)
        self._embedding = self.text_embeddings.create_infer_request()  # embed_ids'
        # with our KVAttention, one token of one chat runs through a copy with static shapes sharing the cache
        self.kv = compiled_state(core().read_model(str(language_xml)),
                                 lambda model: compile_model(model, self.device, precision, threads, ov_config),
                                 self.num_image_tokens, self.context_length)
        # more cache rows for chats that decode together (batching.py): only with our KVAttention
        batched = "cache_rows" in self.kv.beam_inputs
        self.rows = CacheRows(self.kv) if batched else None
        self.batcher = Batcher(self) if batched else None
        self.lock = threading.RLock()  # one model call at a time: the models' requests and the cache are shared
        self.prefixes = PrefixSnapshots()  # system + picture in the cache, for the last prepared pictures
        self.prefix_ids = picture_prefix(self.tokenizer)
        self.streams = 0  # answers being generated: a preparation waits for none before it touches the cache
        self._idle = threading.Condition(self.lock)
        self.preparing: Preparation | None = None  # the latest; a newer one cancels it
        self._attention_probe = None  # compiled on first use by the inspect views (attention_probe)
        with shedding([] if self.ops else [folder / "language.bin"]):
            self.prime()
        self.compile_seconds = time.perf_counter() - started
        self.was_cached = True  # load_engine() says whether it had to export first

    @property
    def name(self) -> str:
        """The model, the weights it holds (export/written.py's label), the device and whose operations run; why
        not ours where they were asked for (ops="on") and cannot run."""
        ours = self.ops_choice.ours
        runs = f"our {' and '.join(ours)} operations" if ours else "OpenVINO's operations"
        why = ""
        if self.ops_mode == "on" and self.ops_why:
            why = f" (language model: OpenVINO's, {self.ops_why})" if ours else f" ({self.ops_why})"
        label = self.manifest["compression"]["label"]
        return f"{self.model_name} [{label}] on {self.device} with {runs}{why}"

    @property
    def model_name(self) -> str:
        """The model as a class reads it: a checkpoint folder by its name (`nano`, `MobileVLM_V2-1.7B`), never
        its path; a Hugging Face id or a preset as given."""
        model_id = str(self.manifest["model_id"])
        return Path(model_id).name if Path(model_id).expanduser().is_absolute() else model_id

    def new_chat(self, image=None, prepare: bool = True, own_cache: bool = False) -> ChatSession:
        """A conversation about `image`; the picture is made ready in the background meanwhile (`prepare`).
        `own_cache`: a cache row of its own, so that it decodes together with other such chats (batching.py;
        the row goes back with `chat.close()`); where the engine has no rows, the shared cache."""
        preparation = self.prepare(image) if image is not None and prepare else None
        return ChatSession(self, image, preparation, own_cache)

    def prepare(self, image) -> Preparation:
        """Encode `image` and feed `system + picture` into the cache in a background thread, so that its first
        question feeds only the question. Returns at once; a newer preparation or another chat's question
        cancels what this one has not done yet; an answer being generated is never disturbed."""
        preparation = Preparation(image)
        previous, self.preparing = self.preparing, preparation
        if previous is not None:
            previous.cancelled = True
        threading.Thread(target=self._prepare, args=(preparation,), name="mvlm-prepare", daemon=True).start()
        return preparation

    def forget_pictures(self) -> None:
        """Drop every prepared picture (features, prefixes, a preparation under way): the next question about one
        starts cold. Positions a chat fed about its picture stay its own (its follow-ups continue them) but serve
        no other chat about that picture."""
        self.pictures.clear()
        with self.lock:
            if self.preparing is not None:
                self.preparing.cancelled = True  # (else it could feed its prefix after this: a "cold" start warm)
            self.prefixes.clear()
            for state in self.rows.states() if self.rows is not None else [self.kv]:
                state.picture = None

    def ask(self, image, question: str, config: GenerationConfig | None = None, **options) -> Answer:
        """One question, one blocking answer (a new chat each time, its picture encoded now: nothing to prepare
        ahead, and no thread left behind when a script ends)."""
        return self.new_chat(image, prepare=False).ask(question, config, **options).result()

    # --- preparing pictures ------------------------------------------------------------------------

    def settle(self, preparation: Preparation) -> None:
        """A preparation's pixels, key and (unless cancelled first) features, made once: by its thread, or by
        its question if that comes first. A picture that cannot be read keeps its error for the question."""
        with preparation.settling:
            if preparation.settled.is_set():
                return
            try:
                preparation.pixels = preprocess_image(load_image(preparation.image), self.image_size,
                                                      self.image_mean, self.image_std)
                preparation.key = picture_key(preparation.pixels)
                preparation.was_cached = self.pictures.ready(preparation.key)
                if not preparation.cancelled:
                    preparation.features = self.pictures.features(preparation.key, preparation.pixels)
            except Exception as error:
                preparation.error = error
            finally:
                preparation.settled.set()

    def picture_features(self, preparation: Preparation) -> np.ndarray:
        """(1, 144, C) for a chat's picture: prepared, pending (waited for), or encoded now."""
        self.settle(preparation)
        if preparation.error is not None:
            raise preparation.error
        if preparation.features is None:  # cancelled before it was encoded
            preparation.features = self.pictures.features(preparation.key, preparation.pixels)
        return preparation.features

    def use_prefix(self, owner, ids: list[int], picture: str | None) -> None:
        """Before a chat feeds `ids`: restore its picture's prepared prefix where that saves more positions than
        the cache holds for it (caller holds self.lock)."""
        if self.kv.owner is owner or picture not in self.prefixes:  # each next token: the cache is the chat's
            return
        snapshot = self.prefixes.get(picture)
        if (ids[: len(snapshot.ids)] == snapshot.ids
                and self.kv.reusable(owner, ids, picture) < len(snapshot.ids)):
            self.kv.restore(snapshot)

    def stream_started(self, preparation: Preparation | None) -> None:
        """An answer begins: a preparation of another picture that has not fed its prefix yet is cancelled."""
        with self.lock:
            self.streams += 1
            latest = self.preparing
            if latest is not None and latest is not preparation and (
                    preparation is None or latest.key is None or latest.key != preparation.key):
                latest.cancelled = True

    def stream_ended(self) -> None:
        with self._idle:
            self.streams -= 1
            self._idle.notify_all()

    def _prepare(self, preparation: Preparation) -> None:
        try:
            self.settle(preparation)
            if preparation.error is None and preparation.features is not None:
                self._prepare_prefix(preparation)
        except Exception as error:  # a model call that failed: the question will meet it again and say so
            preparation.failure = error
        finally:
            if preparation.features is not None:  # (a cancelled one keeps them: its question encodes them)
                preparation.pixels = None
            preparation.done.set()

    def _prepare_prefix(self, preparation: Preparation) -> None:
        """Feed `system + picture` once no answer streams: kept as a copy where the cache can be copied (the
        chat in the cache is put back), else left in the cache (our operations: only the latest prefix)."""
        kv, key, prefix = self.kv, preparation.key, self.prefix_ids
        with self._idle:
            while self.streams and not preparation.cancelled:
                self._idle.wait(WAIT_STEP)
            if preparation.cancelled:
                return
            if kv.holds(prefix, key):  # a chat about this picture fed it already
                if kv.copyable and key not in self.prefixes:
                    self.prefixes.put(key, kv.snapshot(prefix))
            elif key not in self.prefixes:
                saved = None
                if kv.copyable and kv.length * kv.bytes_per_position() <= SAVED_BYTES:
                    saved = kv.snapshot()
                kv.extend(None, prefix, lambda new: self.embed(new, preparation.features), key)
                if kv.copyable:
                    self.prefixes.put(key, kv.snapshot())
                    if saved is not None:
                        kv.restore(saved)
            preparation.prefix = True

    # --- model calls (callers hold self.lock) ----------------------------------------------------

    def encode_image(self, image) -> np.ndarray:
        pixel_values = preprocess_image(load_image(image), self.image_size, self.image_mean, self.image_std)
        return self.pictures.features(picture_key(pixel_values), pixel_values)  # (1, 144, C)

    def embed(self, ids: list[int], image_embeds: np.ndarray | None) -> np.ndarray:
        """Token ids (IMAGE_TOKEN_INDEX where the image goes) -> (1, L, C)."""
        pieces = []
        for is_image, group in itertools.groupby(ids, key=lambda t: t == IMAGE_TOKEN_INDEX):
            group = list(group)
            if is_image:
                pieces += [image_embeds[0]] * len(group)  # (144, C) each
            else:
                pieces.append(self.embed_ids([group])[0])  # (T, C)
        return np.concatenate(pieces)[None]  # (1, L, C)

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Rows of token ids (B, T) -> (B, T, C), a copy. The ids are written into the request's own input tensor:
        calling the compiled model checks its input's shape through an iterator that ends by raising a C++
        exception, ~30 µs a call, as KVState._step's inputs (measured: docs/benchmarks.md)."""
        tensor = self._embedding.get_input_tensor()
        tensor.shape = [len(ids), len(ids[0])]
        tensor.data[...] = ids
        self._embedding.infer()
        return self._embedding.get_output_tensor().data.copy()

    def prime(self) -> None:
        """Start from the system prompt: every picture chat begins with the same text before its picture, so
        its keys and values are computed once, here, and each new chat reuses them (kv_state.py).
        While loading, this is also the language model's first inference, when OpenVINO makes its one-time
        copy of the weights (seconds for a 1.7B model on two cores) — then, and not in the first answer."""
        ids = conversation_ids(self.tokenizer, [("?", None)], with_image=True)
        with self.lock:
            self.kv.reset()
            self.kv.extend(None, ids[: text_before_image(ids)], lambda new: self.embed(new, None))  # BOS..."USER:"

    def attention_probe(self):
        """The language model compiled again with its attention probabilities as outputs (runtime/attention.py):
        made on the first call, for the inspect views; answering never uses it."""
        with self.lock:
            if self._attention_probe is None:
                from .attention import AttentionProbe

                self._attention_probe = AttentionProbe(self.folder / "language.xml", self.device)
            return self._attention_probe

    def prompt_logits(self, ids: list[int], image_embeds: np.ndarray | None = None) -> np.ndarray:
        """The last position's logits for a whole prompt from an empty cache (the fidelity checks' oracle call)."""
        with self.lock:
            self.kv.reset()
            logits = self.kv.extend(None, ids, lambda new: self.embed(new, image_embeds)).copy()
            self.kv.reset()
        return logits


def picture_prefix(tokenizer: Tokenizer) -> list[int]:
    """The ids every picture chat's first prompt begins with, up to its question: `system · USER: <image>`
    and whatever of the text after the picture does not depend on the question."""
    one, other = (conversation_ids(tokenizer, [(q, None)], with_image=True) for q in ("What is it?", "Describe."))
    return one[: common_prefix(one, other)]
