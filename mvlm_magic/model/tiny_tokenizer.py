"""Train a tiny LLaMA-style SentencePiece tokenizer for test checkpoints.

Real MobileVLM checkpoints ship LLaMA's 32000-piece `tokenizer.model`, which we cannot bundle. Tests and
tiny checkpoints need a model with the same *shape* of behaviour instead: BPE, `<unk>`/`<s>`/`</s>` at
ids 0/1/2, byte fallback (so "\\n", accents and emoji become `<0x..>` pieces as in LLaMA), the dummy-prefix
`▁`, no whitespace normalisation, digits split one by one. The corpus is generated here from a fixed
word list, so the same seed gives byte-identical files on every machine with the same sentencepiece.

Only `sentencepiece` and the standard library are used: this runs where torch is absent.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm

from ..errors import MvlmError

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

SHAPES = ("circle", "square", "triangle", "star", "rectangle", "hexagon", "heart", "diamond", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "gray", "pink", "brown")
COUNTS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POSITIONS = (
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
    "in the center",
    "in the top left corner",
    "in the bottom right corner",
    "above the line",
    "below the line",
    "next to the box",
)
QUESTIONS = (
    "What is in the image?",
    "Describe the picture.",
    "How many {shape}s are there?",
    "What colour is the {shape}?",
    "Where is the {colour} {shape}?",
    "Is there a {colour} {shape} in the image?",
    "Count the {colour} shapes.",
    "Which shape is {position}?",
    "What is the number written on the card?",
)
ANSWERS = (
    "There is a {colour} {shape} {position}.",
    "The image shows {count} {colour} {shape}s.",
    "Yes, there is a {colour} {shape}.",
    "No, the {shape} is {colour}.",
    "I can see {digits} shapes: a {shape}, a {colour} {shape2}, and a {shape3}.",
    "The {shape} is {position}; the {shape2} is {position2}.",
    "It is {colour}!",
    "The number is {digits}.",
    "{count}",
)

VOCAB_SIZE = 512
# <unk>, <s>, </s> + 256 byte pieces + the corpus characters must fit below vocab_size.
MIN_VOCAB_SIZE = 384

_ADDED_TOKEN = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def _fill(template: str, rng: random.Random) -> str:
    shape, shape2, shape3 = rng.sample(SHAPES, 3)
    position, position2 = rng.sample(POSITIONS, 2)
    return template.format(
        shape=shape,
        shape2=shape2,
        shape3=shape3,
        colour=rng.choice(COLOURS),
        count=rng.choice(COUNTS),
        position=position,
        position2=position2,
        digits=str(rng.randrange(0, 2000)),
    )


def tiny_corpus(seed: int = 0, n_dialogues: int = 400) -> list[str]:
    """English sentences about shapes, colours, counts and positions, plus v1 chat prompts.

    ASCII only on purpose: any character in the corpus becomes a piece, and tests need accented letters,
    CJK and emoji to fall back to bytes the way rare characters do in LLaMA's vocabulary.
    """
    rng = random.Random(seed)
    sentences = [SYSTEM_PROMPT, "USER:", "ASSISTANT:", "USER: ASSISTANT:"]
    for _ in range(n_dialogues):
        question = _fill(rng.choice(QUESTIONS), rng)
        answer = _fill(rng.choice(ANSWERS), rng)
        kind = rng.randrange(4)
        if kind == 0:
            sentences.append(f"{SYSTEM_PROMPT} USER: <image>\n{question} ASSISTANT: {answer}</s>")
        elif kind == 1:
            sentences.append(f"USER: {question} ASSISTANT: {answer}")
        elif kind == 2:
            sentences.append(f"{answer}\n{_fill(rng.choice(ANSWERS), rng)}")
        else:
            sentences.append(f"{question} {answer}")
    return sentences


def train_tiny_tokenizer(folder, vocab_size: int = VOCAB_SIZE, seed: int = 0, *, legacy: bool | None = None) -> Path:
    """Train the tiny tokenizer and write a tokenizer folder as an mtgv checkpoint has it.

    Writes `tokenizer.model`, `tokenizer_config.json` and `special_tokens_map.json` into `folder`
    (created if needed) and returns `folder` as a Path. `legacy=None` leaves the key out of
    tokenizer_config.json, which transformers 4.33 (and we) read as legacy=True; True/False write it.
    Deterministic: the same seed and vocab_size give byte-identical files.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise MvlmError(f"vocab_size {vocab_size} is too small for the tiny tokenizer; use at least {MIN_VOCAB_SIZE}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    model = io.BytesIO()
    try:
        _train(model, vocab_size, seed)
    except RuntimeError as error:  # sentencepiece says how large the corpus allows, e.g. "<= 1017"
        raise MvlmError(
            f"cannot train a {vocab_size}-piece tiny tokenizer ({error}); use a smaller vocab_size."
        ) from None
    (folder / "tokenizer.model").write_bytes(model.getvalue())

    def added(content: str) -> dict:
        return {**_ADDED_TOKEN, "content": content}

    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": added("</s>"),
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": added("<unk>"),
    }
    if legacy is not None:
        config["legacy"] = bool(legacy)
    special_tokens_map = {
        "bos_token": added("<s>"),
        "eos_token": added("</s>"),
        "pad_token": "<unk>",
        "unk_token": added("<unk>"),
    }
    for name in ("bos_token", "eos_token", "unk_token"):
        special_tokens_map[name].pop("__type")
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special_tokens_map)
    return folder


def _train(model: io.BytesIO, vocab_size: int, seed: int) -> None:
    train_sentencepiece(model, tiny_corpus(seed), vocab_size)


def train_sentencepiece(model: io.BytesIO, sentences, vocab_size: int) -> None:
    """LLaMA's tokenizer settings (BPE, byte fallback, split digits, no whitespace clean-up), one thread
    and no shuffling so that the output is byte-identical from run to run."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
