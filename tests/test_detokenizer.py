"""Incremental detokenizer: streamed chunks add up to exactly the official answer text."""

import random

import pytest
import sentencepiece as spm

from mvlm_magic.errors import MvlmError
from mvlm_magic.model.tiny_tokenizer import train_tiny_tokenizer
from mvlm_magic.runtime.detokenizer import IncrementalDetokenizer, answer_text
from mvlm_magic.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module", params=[None, False], ids=["legacy", "non-legacy"])
def folder(request, tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("detok"), legacy=request.param)


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def literal_ids(folder):
    """Ids that spell the text with plain pieces, "</s>" included (as a model can generate them)."""
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return sp.encode


def stream(tok, ids):
    detokenizer = IncrementalDetokenizer(tok)
    chunks = [detokenizer.push(i) for i in ids]
    chunks.append(detokenizer.flush())
    return chunks


def answer_ids(tok, text):
    return tok.encode(text, add_bos=False)


@pytest.mark.parametrize(
    "text",
    ["A red star is on the left.", "Café au lait, 日本, 😀!", "two  spaces and\nnewline", "42 shapes", "é", "😀😀"],
)
def test_stream_equals_answer_text(tok, text):
    ids = answer_ids(tok, text) + [tok.eos_id]
    chunks = stream(tok, ids)
    assert "".join(chunks) == answer_text(tok, ids) == text


def test_no_partial_utf8_characters(tok):
    ids = answer_ids(tok, "日本 😀")
    assert sum(tok.piece(i).startswith("<0x") for i in ids) == 10  # the tiny vocabulary falls back to bytes
    for chunk in stream(tok, ids):
        assert "\ufffd" not in chunk


def test_spaces_between_words_survive(tok):
    ids = answer_ids(tok, "the red circle")
    chunks = stream(tok, ids)
    assert "".join(chunks) == "the red circle"
    assert sum(bool(c) for c in chunks) >= 3  # it really streams, word by word or finer


def test_leading_and_trailing_whitespace_dropped(tok):
    ids = answer_ids(tok, "  blue   ") + [tok.eos_id]
    chunks = stream(tok, ids)
    assert "".join(chunks) == "blue" == answer_text(tok, ids)
    # Trailing spaces are held back, not lost, while more text may follow.
    ids = answer_ids(tok, "blue   green")
    assert "".join(stream(tok, ids)) == "blue   green"


def test_literal_end_marker_is_removed(tok, literal_ids):
    ids = literal_ids("A star </s>")
    assert tok.eos_id not in ids
    chunks = stream(tok, ids)
    assert answer_text(tok, ids) == "A star" == "".join(chunks)
    assert all("<" not in chunk for chunk in chunks)  # never shown, even in part
    ids = literal_ids("a </s> b")
    assert "".join(stream(tok, ids)) == "a </s> b" == answer_text(tok, ids)


def test_special_ids_are_skipped(tok):
    ids = [tok.bos_id] + answer_ids(tok, "yes") + [tok.unk_id, tok.eos_id]
    assert "".join(stream(tok, ids)) == "yes" == answer_text(tok, ids)


def test_random_id_sequences(tok, literal_ids):
    """Property: for any ids, the concatenated chunks equal answer_text and no chunk is lost or altered."""
    rng = random.Random(1234)
    tricky = [tok.unk_id, tok.bos_id, tok.eos_id, *literal_ids("é 日 😀 </s> <\n. the")]
    for _ in range(1500):
        ids = [rng.choice(tricky) if rng.random() < 0.6 else rng.randrange(tok.vocab_size)
               for _ in range(rng.randrange(12))]
        assert "".join(stream(tok, ids)) == answer_text(tok, ids), ids


def test_push_after_flush_and_bad_ids(tok):
    detokenizer = IncrementalDetokenizer(tok)
    detokenizer.push(answer_ids(tok, "hi")[0])
    with pytest.raises(MvlmError, match="outside the vocabulary"):
        detokenizer.push(tok.vocab_size)
    detokenizer.flush()
    assert detokenizer.flush() == ""
    with pytest.raises(MvlmError, match="flushed"):
        detokenizer.push(5)


def test_answer_text(tok, literal_ids):
    assert answer_text(tok, []) == ""
    assert answer_text(tok, literal_ids(" ok </s> ")) == "ok"
    assert answer_text(tok, literal_ids("ok</s></s>")) == "ok</s>"  # only one trailing marker is removed
    assert answer_text(tok, answer_ids(tok, "ok</s>")) == "ok"  # the special id is skipped anyway
