"""Prompt text -> token ids, exactly as the official MobileVLM code gets them (transformers 4.33.1).

The official code loads LLaMA's `tokenizer.model` through the *slow* `LlamaTokenizer` of transformers
4.33.1. Newer transformers tokenize some prompts differently (every prompt after a `</s>`, and special
tokens typed by the user), and a model answers differently when fed different ids. So this module drives
the `sentencepiece` model directly and reproduces the 4.33.1 rules:

* `<s>`, `</s>`, `<unk>` written in the text are split out first and become their ids;
* legacy mode (`legacy` absent or null in tokenizer_config.json): every text segment is encoded on its
  own, so each one, including the one right after `</s>`, gets SentencePiece's dummy-prefix `▁`;
* non-legacy mode: one `▁` for the whole text, and segments are encoded without a dummy prefix;
* `<image>` becomes the single id -200 between separately tokenized chunks, with one BOS in front; in a
  chat (`conversation_ids`) only the picture's own place does, and a typed "<image>" stays text.

Only the standard library and `sentencepiece` are used: this runs where torch is absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from ..errors import MvlmError

SPIECE_UNDERLINE = "▁"
IMAGE_TOKEN_INDEX = -200
IMAGE_PLACEHOLDER = "<image>"

# Conversation template "v1" (vicuna_v1): sep " " after user turns, sep2 "</s>" after assistant turns.
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = ("USER", "ASSISTANT")
SEP = " "
SEP2 = "</s>"

# A serialized NormalizerSpec {add_dummy_prefix: false} wrapped as ModelProto field 3 (normalizer_spec).
# Protobuf merges a repeated embedded message into the earlier one, so appending these bytes to a model
# file is what transformers 4.33 does with `model.normalizer_spec.MergeFrom(...)` for legacy=False,
# without needing the protobuf package.
_NO_DUMMY_PREFIX_PATCH = b"\x1a\x02\x18\x00"


class Tokenizer:
    """A LLaMA SentencePiece model with the encode/decode rules of transformers 4.33.1's slow LlamaTokenizer."""

    def __init__(self, model_path, legacy: bool = True):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise MvlmError(
                f"tokenizer model {model_path} does not exist; point to a checkpoint folder with tokenizer.model."
            )
        data = model_path.read_bytes()
        if not legacy:
            data += _NO_DUMMY_PREFIX_PATCH
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as error:
            raise MvlmError(
                f"{model_path} is not a SentencePiece model ({error}); "
                "replace it with the checkpoint's tokenizer.model."
            ) from None
        self.legacy = bool(legacy)
        self.vocab_size = self._sp.get_piece_size()
        self.unk_id = self._sp.unk_id()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        if min(self.unk_id, self.bos_id, self.eos_id) < 0:
            raise MvlmError(f"{model_path} lacks <unk>, <s> or </s>; use a LLaMA-style tokenizer.model.")
        self.unk_piece = self._sp.id_to_piece(self.unk_id)
        self.bos_piece = self._sp.id_to_piece(self.bos_id)
        self.eos_piece = self._sp.id_to_piece(self.eos_id)
        self.special_ids = frozenset((self.bos_id, self.eos_id, self.unk_id))
        self._special_by_piece = {self._sp.id_to_piece(i): i for i in self.special_ids}
        # Longest first so that no special token is cut by a shorter one that is its prefix.
        alternatives = sorted(self._special_by_piece, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(re.escape(p) for p in alternatives) + ")")
        self._unk_length = len(self._sp.encode(self.unk_piece))

    @classmethod
    def from_folder(cls, folder) -> Tokenizer:
        """Load `tokenizer.model`; `legacy` comes from `tokenizer_config.json` (absent or null means True)."""
        folder = Path(folder)
        legacy = True
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                raise MvlmError(f"{config_path} is not valid JSON ({error}); fix or delete it.") from None
            if config.get("legacy") is not None:
                legacy = bool(config["legacy"])
        return cls(folder / "tokenizer.model", legacy=legacy)

    # ----------------------------------------------------------------------------------------- encoding

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, with BOS first unless add_bos is False (`tokenizer(text).input_ids` in 4.33.1)."""
        if not isinstance(text, str):
            raise MvlmError(f"text to tokenize must be a str, not {type(text).__name__}.")
        ids = [self.bos_id] if add_bos else []
        return ids + self._tokenize(text)

    def _tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        ids: list[int] = []
        drop_first = False
        for segment in self._special_split.split(text):
            if not segment:
                continue
            special = self._special_by_piece.get(segment)
            if special is None:
                ids.extend(self._encode_segment(segment))
                continue
            # Non-legacy 4.33 drops the "▁" it put in front of the text when a special token follows it.
            if not self.legacy and len(ids) == 1 and self._sp.id_to_piece(ids[0]) == SPIECE_UNDERLINE:
                drop_first = True
            ids.append(special)
        return ids[1:] if drop_first else ids

    def _encode_segment(self, segment: str) -> list[int]:
        if self.legacy or not segment.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp.encode(segment)
        # Without a dummy prefix SentencePiece would eat the leading space; 4.33 encodes "<unk>" + segment
        # and drops the pieces of "<unk>" to keep it.
        ids = self._sp.encode(self.unk_piece + segment)
        return ids[self._unk_length :] if len(ids) >= self._unk_length else ids

    # ----------------------------------------------------------------------------------------- decoding

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` as 4.33.1's `tokenizer.decode` gives it (no clean-up of tokenization spaces).

        With skip_special_tokens, `<s>`, `</s>` and `<unk>` ids are dropped; otherwise they are written as
        their text. The first piece loses its leading `▁` before SentencePiece decodes the rest.
        """
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        if not ids:
            return ""
        pieces = self._pieces(ids)
        if skip_special_tokens:
            return self.decode_pieces(pieces)
        if pieces[0].startswith(SPIECE_UNDERLINE):
            pieces[0] = pieces[0][1:]
        text, run, previous_special = "", [], False
        for position, (token_id, piece) in enumerate(zip(ids, pieces)):
            if token_id in self.special_ids:
                if not previous_special and position != 0 and self.legacy:
                    text += " "
                text += self._sp.decode_pieces(run) + piece
                run, previous_special = [], True
            else:
                run.append(piece)
                previous_special = False
        return text + self._sp.decode_pieces(run)

    def decode_pieces(self, pieces: Sequence[str]) -> str:
        """Text of pieces holding no special token, as `decode(..., skip_special_tokens=True)` gives it.

        For callers that keep pieces rather than ids, e.g. the incremental detokenizer.
        """
        if not pieces:
            return ""
        first = pieces[0][1:] if pieces[0].startswith(SPIECE_UNDERLINE) else pieces[0]
        return self._sp.decode_pieces([first, *pieces[1:]])

    def _pieces(self, ids: list[int]) -> list[str]:
        try:
            return self._sp.id_to_piece(ids)
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise MvlmError(
                f"token id {bad} is outside the vocabulary 0..{self.vocab_size - 1}; pass model token ids only."
            ) from None

    def piece(self, token_id: int) -> str:
        """The SentencePiece piece of one id, e.g. '▁the' or '<0x0A>'."""
        return self._pieces([int(token_id)])[0]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, legacy={self.legacy})"


def tokenize_with_image(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Ids of a prompt with `<image>` placeholders, as MobileVLM's `tokenizer_image_token` builds them.

    Each chunk between placeholders is tokenized on its own (so the chunk after `<image>` gets its own
    dummy prefix); the output has one BOS, then chunk 0, then for each later chunk IMAGE_TOKEN_INDEX and
    that chunk without its BOS. Every `<image>` in the text is a picture here: for a chat whose text was
    typed by someone, use `conversation_ids`, where a typed "<image>" stays text.
    """
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    parts: list[str | int] = [chunks[0]]
    for chunk in chunks[1:]:
        parts += [IMAGE_TOKEN_INDEX, chunk]
    return tokenize_parts(tokenizer, parts)


def tokenize_parts(tokenizer: Tokenizer, parts: Sequence[str | int]) -> list[int]:
    """Ids of a prompt given as text parts and IMAGE_TOKEN_INDEX where a picture goes.

    The text between two pictures is joined and tokenized as one chunk, as `tokenize_with_image` does with
    the text between two placeholders; a picture's place is never found by searching the text.
    """
    chunks = [""]
    for part in parts:
        if isinstance(part, str):
            chunks[-1] += part
        else:
            chunks.append("")
    ids = [tokenizer.bos_id] + tokenizer.encode(chunks[0], add_bos=True)[1:]
    for chunk in chunks[1:]:
        ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(tokenizer.encode(chunk, add_bos=True)[1:])
    return ids


def render_prompt(turns: Sequence[tuple[str, str | None]], system: str = SYSTEM) -> str:
    """The v1 conversation text for (user message, assistant answer) turns.

    A filled message renders as "ROLE: message" plus " " after a user turn or "</s>" after an assistant
    turn; an empty or None message renders as "ROLE:" alone (the official SeparatorStyle.TWO rule), which
    is how the open last turn ends the prompt with "ASSISTANT:".
    """
    return "".join(_render_parts(turns, with_image=False, system=system))


def _render_parts(turns: Sequence[tuple[str, str | None]], with_image: bool, system: str) -> list[str | int]:
    """render_prompt's text in parts; with_image, IMAGE_TOKEN_INDEX then "\n" begin the first question."""
    parts: list[str | int] = [system + SEP]
    for index, (user_message, answer) in enumerate(turns):
        if with_image and index == 0:  # the official text is "<image>\n" + question: never empty
            parts += [f"{ROLES[0]}: ", IMAGE_TOKEN_INDEX, f"\n{user_message}{SEP}"]
        else:
            parts.append(f"{ROLES[0]}: {user_message}{SEP}" if user_message else f"{ROLES[0]}:")
        parts.append(f"{ROLES[1]}: {answer}{SEP2}" if answer else f"{ROLES[1]}:")
    return parts


def conversation_parts(
    questions_and_answers: Sequence[tuple[str, str | None]] | str, with_image: bool = True, system: str = SYSTEM
) -> list[str | int]:
    """The v1 prompt for a chat as text parts, with IMAGE_TOKEN_INDEX where the picture goes (before the
    first question, when with_image). Questions and answers stay text, whatever they hold.

    A bare string is a single question with the answer still open.
    """
    if isinstance(questions_and_answers, str):
        questions_and_answers = [(questions_and_answers, None)]
    turns = list(questions_and_answers)
    if not turns:
        raise MvlmError("a conversation needs at least one question; pass [(question, None)].")
    return _render_parts(turns, with_image=with_image, system=system)


def build_conversation(
    questions_and_answers: Sequence[tuple[str, str | None]] | str, with_image: bool = True, system: str = SYSTEM
) -> str:
    """The v1 prompt text for a chat; the first question gets "<image>\n" in front when with_image.

    A bare string is a single question with the answer still open. The text is for reading: its ids come
    from `conversation_ids`, which keeps a "<image>" typed in a question as text.
    """
    parts = conversation_parts(questions_and_answers, with_image=with_image, system=system)
    return "".join(part if isinstance(part, str) else IMAGE_PLACEHOLDER for part in parts)


def conversation_ids(
    tokenizer: Tokenizer,
    questions_and_answers: Sequence[tuple[str, str | None]] | str,
    with_image: bool = True,
    system: str = SYSTEM,
) -> list[int]:
    """The prompt ids of a chat: `tokenize_with_image(build_conversation(...))` for every text without
    "<image>" in it, and a typed "<image>" is tokenized as the text it is, not as a second picture."""
    return tokenize_parts(tokenizer, conversation_parts(questions_and_answers, with_image=with_image, system=system))
