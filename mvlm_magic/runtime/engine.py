"""The compiled models of one export and the calls a question makes of them; no torch anywhere.

    engine = Engine(export_folder, device="CPU")
    answer = engine.ask(image, "What colour is the circle?")      # one question, one answer
    chat = engine.new_chat(image)                                 # a conversation (chat.py)

The engine compiles the vision, text-embeddings and language IRs (or their copies with our operations,
mvlm_magic/ops), embeds pictures and ids, and holds the language model's one KV cache (kv_state.py); a lock
makes each model call whole.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np

from ..ops import select
from ..store import verify_export
from .chat import Answer, ChatSession
from .device import check_device, compile_model
from .kv_state import KVState, text_before_image
from .memory import shedding
from .preprocess import CLIP_MEAN, CLIP_STD, load_image, preprocess_image
from .sampling import GenerationConfig
from .tokenizer import IMAGE_TOKEN_INDEX, Tokenizer, conversation_ids


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
        vision_xml, language_xml = select(folder, ops if kernels is None else kernels, self.device, precision,
                                          cache_dir)
        self.ops = None if language_xml.name == "language.xml" else "int4"  # whose MatMuls and attention run
        self.vision_ops = vision_xml.name != "vision.xml"
        # OpenVINO copies the vision weights into its own layout while compiling, the language model's on its
        # first inference; shedding the mapped file pages meanwhile keeps them from counting twice (memory.py).
        # Our operations read their weights straight from the mapped file: those pages are in use, not copies.
        with shedding([] if self.vision_ops else [folder / "vision.bin"]):
            self.vision = compile_model(vision_xml, self.device, precision, threads, ov_config)
        self.text_embeddings = compile_model(folder / "text_embeddings.xml", self.device, precision, threads, ov_config)
        language = compile_model(language_xml, self.device, precision, threads, ov_config)
        self.kv = KVState(language.create_infer_request(), self.num_image_tokens)
        self.lock = threading.RLock()  # one model call at a time: the models' requests and the cache are shared
        with shedding([] if self.ops else [folder / "language.bin"]):
            self.prime()
        self.compile_seconds = time.perf_counter() - started
        self.was_cached = True  # load_engine() says whether it had to export first

    @property
    def name(self) -> str:
        ours = [name for name, used in (("int4", self.ops), ("int8 vision", self.vision_ops)) if used]
        with_ours = f" with our {' and '.join(ours)} operations" if ours else ""
        return f"{self.manifest['model_id']} [{self.manifest['compression']['label']}] on {self.device}{with_ours}"

    def new_chat(self, image=None) -> ChatSession:
        return ChatSession(self, image)

    def ask(self, image, question: str, config: GenerationConfig | None = None, **options) -> Answer:
        """One question, one blocking answer (a new chat each time)."""
        return self.new_chat(image).ask(question, config, **options).result()

    # --- model calls (callers hold self.lock) ----------------------------------------------------

    def encode_image(self, image) -> np.ndarray:
        pixel_values = preprocess_image(load_image(image), self.image_size, self.image_mean, self.image_std)
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
            if getattr(self, "_attention_probe", None) is None:
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
