"""Tokenizer: the transformers 4.33.1 slow-LlamaTokenizer rules, `<image>` splicing, the v1 template."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from mvlm_magic.errors import MvlmError
from mvlm_magic.model.tiny_tokenizer import train_tiny_tokenizer
from mvlm_magic.runtime.tokenizer import (
    IMAGE_TOKEN_INDEX,
    SYSTEM,
    Tokenizer,
    build_conversation,
    conversation_ids,
    render_prompt,
    tokenize_with_image,
)

TWO_TURNS = [("What is it?", "A red star."), ("And the colour?", None)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {legacy: train_tiny_tokenizer(root / str(legacy), legacy=legacy) for legacy in (None, False)}


@pytest.fixture(scope="module")
def legacy_tok(folders):
    return Tokenizer.from_folder(folders[None])


@pytest.fixture(scope="module")
def new_tok(folders):
    return Tokenizer.from_folder(folders[False])


@pytest.fixture(scope="module")
def sp(folders):
    return spm.SentencePieceProcessor(model_file=str(folders[None] / "tokenizer.model"))


# --------------------------------------------------------------------------------- tiny tokenizer helper


def test_tiny_tokenizer_is_deterministic_and_fast(tmp_path):
    start = time.perf_counter()
    first = train_tiny_tokenizer(tmp_path / "a", seed=0)
    assert time.perf_counter() - start < 2.0
    second = train_tiny_tokenizer(tmp_path / "b", seed=0)
    other = train_tiny_tokenizer(tmp_path / "c", seed=1)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "tokenizer.model").read_bytes() != (other / "tokenizer.model").read_bytes()


def test_tiny_tokenizer_looks_like_llama(folders, sp):
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.get_piece_size() == 512
    assert sp.piece_to_id("<0x0A>") != sp.unk_id()  # byte fallback pieces exist
    assert sp.encode("日本", out_type=str)[1:] == ["<0xE6>", "<0x97>", "<0xA5>", "<0xE6>", "<0x9C>", "<0xAC>"]
    assert sp.encode("42", out_type=str)[-2:] == ["4", "2"]  # digits split
    config = json.loads((folders[None] / "tokenizer_config.json").read_text())
    assert "legacy" not in config and config["add_bos_token"] is True and config["bos_token"]["content"] == "<s>"
    assert json.loads((folders[False] / "tokenizer_config.json").read_text())["legacy"] is False
    assert json.loads((folders[None] / "special_tokens_map.json").read_text())["pad_token"] == "<unk>"


def test_tiny_tokenizer_rejects_tiny_vocab(tmp_path):
    with pytest.raises(MvlmError, match="vocab_size"):
        train_tiny_tokenizer(tmp_path, vocab_size=100)
    with pytest.raises(MvlmError, match="smaller vocab_size"):
        train_tiny_tokenizer(tmp_path, vocab_size=100_000)


# --------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("value, expected", [("absent", True), (None, True), (True, True), (False, False)])
def test_legacy_comes_from_tokenizer_config(folders, tmp_path, value, expected):
    (tmp_path / "tokenizer.model").write_bytes((folders[None] / "tokenizer.model").read_bytes())
    config = {} if value == "absent" else {"legacy": value}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_folder(tmp_path).legacy is expected


def test_special_ids_and_pieces(legacy_tok):
    assert (legacy_tok.unk_id, legacy_tok.bos_id, legacy_tok.eos_id) == (0, 1, 2)
    assert legacy_tok.vocab_size == 512
    assert legacy_tok.piece(1) == "<s>" and legacy_tok.piece(13) == "<0x0A>"


def test_loading_errors(tmp_path):
    with pytest.raises(MvlmError, match="does not exist"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(MvlmError, match="not a SentencePiece model"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(MvlmError, match="not valid JSON"):
        Tokenizer.from_folder(tmp_path)


# --------------------------------------------------------------------------------- encoding rules


def test_legacy_encodes_every_segment_with_dummy_prefix(legacy_tok, sp):
    ids = legacy_tok.encode("a</s>USER: x")
    assert ids == [1] + sp.encode("a") + [2] + sp.encode("USER: x")
    assert legacy_tok.piece(ids[3]).startswith("▁")  # the segment after </s> got its own "▁"


def test_special_tokens_in_text_become_their_ids(legacy_tok, sp):
    assert legacy_tok.encode("say <s> now") == [1] + sp.encode("say ") + [1] + sp.encode(" now")
    assert legacy_tok.encode("<unk>") == [1, 0]
    assert legacy_tok.encode("</s>", add_bos=False) == [2]
    assert legacy_tok.encode("", add_bos=True) == [1]
    assert legacy_tok.encode("<s", add_bos=False) == sp.encode("<s")  # not a special token


def test_non_legacy_has_one_dummy_prefix(new_tok, legacy_tok):
    ids = new_tok.encode("a</s>USER: x")
    after_eos = ids[ids.index(2) + 1 :]
    assert not new_tok.piece(after_eos[0]).startswith("▁")
    assert new_tok.encode("Hello there") == legacy_tok.encode("Hello there")  # no special token: same ids
    leading_special = new_tok.encode("<s>hi")
    assert leading_special[:2] == [1, 1]  # the "▁" put in front of the text is dropped before a leading <s>
    assert not new_tok.piece(leading_special[2]).startswith("▁")  # and "hi" after it gets none


# Recorded with transformers 4.33.1 `LlamaTokenizer.from_pretrained(folder)` (sentencepiece 0.2.x) on
# train_tiny_tokenizer(seed=0); only meaningful for that exact model file.
GOLDEN_MODEL_SHA256 = "a7a1986d90b31ba65e599dc4c5629e745bb08c5e4e81cd5d536c7295ab14b6ac"
GOLDEN_ENCODE = {
    None: {
        "Hello <s>. world</s>USER: hi": [1, 453, 500, 450, 462, 453, 1, 453, 469, 391, 396, 463, 470, 2, 301, 475,
                                         453, 441],
        "a</s> b": [1, 260, 2, 453, 280],
        "<unk>x": [1, 0, 453, 494],
        " <s> ": [1, 453, 453, 1, 453, 453],
        "▁x": [1, 453, 453, 494],
        "\nWhat is it?": [1, 453, 482, 486, 305, 264, 262, 457, 480],
        "é 日本 😀 3 apples": [1, 453, 198, 172, 453, 233, 154, 168, 233, 159, 175, 453, 243, 162, 155, 131, 453, 502,
                             260, 473, 473, 463, 270],
    },
    False: {
        "Hello <s>. world</s>USER: hi": [1, 453, 500, 450, 462, 453, 1, 469, 391, 396, 463, 470, 2, 296, 293, 475,
                                         453, 441],
        "a</s> b": [1, 260, 2, 280],
        "<unk>x": [1, 0, 494],
        " <s> ": [1, 453, 453, 1, 453],
        "▁x": [1, 453, 453, 494],
        "\nWhat is it?": [1, 453, 482, 486, 305, 264, 262, 457, 480],
    },
}
GOLDEN_TWO_TURN_TAIL = {  # ids from the </s> of the first answer to the end of the second prompt
    None: [2, 301, 475, 278, 459, 470, 263, 266, 462, 463, 462, 390, 480, 303, 475],
    False: [2, 296, 293, 475, 278, 459, 470, 263, 266, 462, 463, 462, 390, 480, 303, 475],
}
GOLDEN_DECODE = {  # ids -> (decode skipping special tokens, decode keeping them)
    None: [([453, 453, 502], "3", "3"),
           ([1, 453, 453, 502, 2], "3", "<s>  3</s>"),
           ([260, 0, 2, 1, 280], "a b", " a<unk></s><s>b")],
    False: [([453, 453, 502], " 3", " 3"),
            ([1, 453, 453, 502, 2], " 3", "<s>  3</s>"),
            ([260, 0, 2, 1, 280], "a b", "a<unk></s><s> b")],
}


@pytest.mark.parametrize("legacy", [None, False])
def test_matches_transformers_4_33_recording(folders, legacy):
    model = (folders[legacy] / "tokenizer.model").read_bytes()
    if hashlib.sha256(model).hexdigest() != GOLDEN_MODEL_SHA256:
        pytest.skip("this sentencepiece trains a different tiny model than the one the golden ids were recorded on")
    tok = Tokenizer.from_folder(folders[legacy])
    for text, ids in GOLDEN_ENCODE[legacy].items():
        assert tok.encode(text) == ids, text
    two_turns = tok.encode(build_conversation(TWO_TURNS))
    assert two_turns[two_turns.index(2) :] == GOLDEN_TWO_TURN_TAIL[legacy]
    for ids, skipped, kept in GOLDEN_DECODE[legacy]:
        assert tok.decode(ids, skip_special_tokens=True) == skipped
        assert tok.decode(ids, skip_special_tokens=False) == kept


def test_decode(legacy_tok):
    ids = legacy_tok.encode("A red star. é 日本 😀")
    assert legacy_tok.decode(ids) == "A red star. é 日本 😀"
    assert legacy_tok.decode(ids + [2]) == "A red star. é 日本 😀"
    assert legacy_tok.decode([]) == "" and legacy_tok.decode([1, 2, 0]) == ""
    assert legacy_tok.decode([1, 2], skip_special_tokens=False) == "<s></s>"
    for bad in ([5, 512], [-200]):
        with pytest.raises(MvlmError, match="outside the vocabulary"):
            legacy_tok.decode(bad)


# --------------------------------------------------------------------------------- <image> and the template


def test_single_turn_prompt_is_exact():
    expected = SYSTEM + " USER: <image>\nWhat is it? ASSISTANT:"
    assert build_conversation("What is it?") == expected
    assert build_conversation([("What is it?", None)]) == expected
    assert render_prompt([("<image>\nWhat is it?", None)]) == expected
    assert build_conversation("Hi", with_image=False) == SYSTEM + " USER: Hi ASSISTANT:"


def test_later_turns_render_like_template_v1():
    assert build_conversation(TWO_TURNS) == (
        SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A red star.</s>USER: And the colour? ASSISTANT:"
    )
    # An empty answer renders "ASSISTANT:" with no </s>; the next USER follows directly.
    assert render_prompt([("Q1", ""), ("Q2", None)]) == SYSTEM + " USER: Q1 ASSISTANT:USER: Q2 ASSISTANT:"
    with pytest.raises(MvlmError):
        build_conversation([])


def test_tokenize_with_image_structure(legacy_tok):
    prompt = build_conversation("What is it?")
    before, after = prompt.split("<image>")
    ids = tokenize_with_image(legacy_tok, prompt)
    assert ids == [1] + legacy_tok.encode(before)[1:] + [IMAGE_TOKEN_INDEX] + legacy_tok.encode(after)[1:]
    assert ids.count(1) == 1 and ids.count(IMAGE_TOKEN_INDEX) == 1
    assert legacy_tok.piece(ids[ids.index(IMAGE_TOKEN_INDEX) + 1]) == "▁"  # the chunk's own dummy prefix, then "\n"
    assert tokenize_with_image(legacy_tok, "<image>") == [1, IMAGE_TOKEN_INDEX]
    assert tokenize_with_image(legacy_tok, "a<image>b<image>") == [
        1, *legacy_tok.encode("a")[1:], -200, *legacy_tok.encode("b")[1:], -200
    ]
    assert tokenize_with_image(legacy_tok, "no image") == legacy_tok.encode("no image")


def test_conversation_ids_are_the_official_ids_and_typed_image_stays_text(legacy_tok, new_tok):
    for tok in (legacy_tok, new_tok):
        for turns in ("What is it?", TWO_TURNS, [("Q1", ""), ("Q2", None)], " a\nb</s>c 日本"):
            for with_image in (True, False):
                official = tokenize_with_image(tok, build_conversation(turns, with_image=with_image))
                assert conversation_ids(tok, turns, with_image=with_image) == official, (turns, with_image)
        # A typed "<image>" is tokenized as the text it is, in the picture's chunk: one picture, not two.
        question = "What is <image> this?"
        before, after = build_conversation(question).split("<image>", 1)
        ids = conversation_ids(tok, question)
        assert ids == [1, *tok.encode(before)[1:], IMAGE_TOKEN_INDEX, *tok.encode(after)[1:]]
        assert ids.count(IMAGE_TOKEN_INDEX) == 1
        assert conversation_ids(tok, [("<image>", "an <image>"), ("<image>?", None)]).count(IMAGE_TOKEN_INDEX) == 1
        text_only = conversation_ids(tok, question, with_image=False)
        assert text_only == tok.encode(build_conversation(question, with_image=False))
        assert IMAGE_TOKEN_INDEX not in text_only


# --------------------------------------------------------------------------------- transformers 5.x


@pytest.mark.parametrize("legacy", [None, False])
def test_transformers_5_agrees_on_single_turn_prompts(folders, legacy):
    transformers = pytest.importorskip("transformers")
    reference = transformers.LlamaTokenizer.from_pretrained(str(folders[legacy]))
    ours = Tokenizer.from_folder(folders[legacy])
    questions = ["What is it?", "How many red stars are there?", "Describe é 日本 😀.", " leading space", "3 + 4 = 7",
                 "a\nb"]
    for question in questions:
        for chunk in build_conversation(question).split("<image>"):
            assert ours.encode(chunk) == reference(chunk).input_ids, (question, chunk)


def test_runtime_modules_import_without_torch_or_transformers():
    """The runtime must work where only numpy, pillow and sentencepiece are installed."""
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'torchvision'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import mvlm_magic.runtime.preprocess, mvlm_magic.runtime.tokenizer\n"
        "import mvlm_magic.runtime.detokenizer, mvlm_magic.runtime.sampling, mvlm_magic.model.tiny_tokenizer\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
