"""Pictures made ready before their question: image features, and the cache's keys/values up to the question.

MobileVLM's prompt is `system · USER: <image>\\n QUESTION ASSISTANT:`: everything before the question depends on
the picture alone. So when a picture is shown, picked or given to `new_chat`, the engine (`Engine.prepare`)
encodes it and feeds `system + picture` in a background thread; the question then needs only its own tokens.

- `PictureCache`: the image features of the last few pictures, keyed by a hash of the preprocessed pixels (the
  same picture from a path, a PIL image or an array is one entry). It has the vision model's own infer request
  and lock, so a picture is encoded while an answer streams on the language model. A picture being encoded is a
  pending entry that a second asker waits on instead of encoding it twice.
- `PrefixSnapshots`: copies of the KV cache holding `system + picture` for the last few pictures, so a new chat
  about any of them restores its prefix instead of recomputing it. Only OpenVINO's stateful cache can be copied
  (kv_state.py); our KVAttention operation keeps its cache inside the operation, so on that path only the
  latest prepared prefix is kept: the live cache itself.
- `Preparation`: one picture's way through: pixels and key, features, then its prefix.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

PICTURES_KEPT = 8  # image features (1, 144, C): 1.2 MB each for the 1.7B model's C = 2048
PREFIXES_KEPT = 3  # KV copies of system + picture: ~75 MB each for the 1.7B model in f32 (24 layers, ~185 positions)


def picture_key(pixels: np.ndarray) -> str:
    """The picture as the model sees it: equal pixels, equal features."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


class _Entry:
    def __init__(self):
        self.done = threading.Event()
        self.features: np.ndarray | None = None
        self.error: BaseException | None = None


class PictureCache:
    """Image features of the last `size` pictures; `features(key, pixels)` encodes a picture at most once."""

    def __init__(self, vision, size: int = PICTURES_KEPT):
        self.request = vision.create_infer_request()  # our own: the engine's lock is not needed to encode
        self.lock = threading.Lock()  # one picture at a time on that request
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._guard = threading.Lock()  # the dictionary only, never held while encoding

    def ready(self, key: str) -> bool:
        with self._guard:
            entry = self._entries.get(key)
        return entry is not None and entry.features is not None

    def features(self, key: str, pixels: np.ndarray) -> np.ndarray:
        """(1, 144, C) for `pixels`; waits for a pending encoding of the same picture rather than repeating it."""
        with self._guard:
            entry = self._entries.get(key)
            mine = entry is None
            if mine:
                entry = self._entries[key] = _Entry()
            self._entries.move_to_end(key)
        if not mine:
            entry.done.wait()
            if entry.error is not None:
                raise entry.error
            return entry.features
        try:
            with self.lock:
                self.request.infer({0: pixels})
                entry.features = self.request.get_output_tensor(0).data.copy()
        except BaseException as error:
            entry.error = error
            with self._guard:
                self._entries.pop(key, None)
            raise
        finally:
            entry.done.set()
        self._evict()
        return entry.features

    def clear(self) -> None:
        with self._guard:
            self._entries = OrderedDict((k, e) for k, e in self._entries.items() if not e.done.is_set())

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        with self._guard:
            finished = [k for k, e in self._entries.items() if e.done.is_set()]  # oldest first
            for key in finished[: max(0, len(self._entries) - self.size)]:
                del self._entries[key]


class PrefixSnapshots:
    """KV copies (kv_state.Snapshot) of `system + picture` for the last `size` pictures. Callers hold the
    engine's lock."""

    def __init__(self, size: int = PREFIXES_KEPT):
        self.size = size
        self._snapshots: OrderedDict[str, object] = OrderedDict()

    def get(self, key: str | None):
        snapshot = self._snapshots.get(key) if key is not None else None
        if snapshot is not None:
            self._snapshots.move_to_end(key)
        return snapshot

    def put(self, key: str, snapshot) -> None:
        self._snapshots[key] = snapshot
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > self.size:
            self._snapshots.popitem(last=False)

    def clear(self) -> None:
        self._snapshots.clear()

    def __contains__(self, key) -> bool:
        return key in self._snapshots

    def __len__(self) -> int:
        return len(self._snapshots)


class Preparation:
    """One picture made ready: `settled` once its pixels, key and (unless cancelled first) features are known;
    `done` once the background thread has finished (its prefix fed, found already there, or cancelled)."""

    def __init__(self, image):
        self.image = image
        self.pixels: np.ndarray | None = None
        self.key: str | None = None
        self.features: np.ndarray | None = None
        self.was_cached = False  # its features were in the cache already
        self.error: BaseException | None = None  # a picture that cannot be read: raised at its question
        self.failure: BaseException | None = None  # the prefix could not be fed (the question feeds it)
        self.cancelled = False  # a newer picture or another chat's question: skip what is not done yet
        self.prefix = False  # the prefix was fed (or found in the cache) by this preparation
        self.settling = threading.Lock()  # pixels and features are made once, by the thread or by the asker
        self.settled = threading.Event()
        self.done = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        """Until the background work is over (tests, benchmarks)."""
        return self.done.wait(timeout)
