"""Pictures made ready before their question (Engine.prepare, runtime/picture_cache.py), on real tiny exports:
OpenVINO's stateful cache (prefix copies kept aside) and our operations' KVAttention (only the latest prefix)."""

from __future__ import annotations

import pytest

from conftest import shapes_picture
from mvlm_magic.errors import MvlmError
from mvlm_magic.ops import cpu
from mvlm_magic.runtime.picture_cache import PICTURES_KEPT, PREFIXES_KEPT

WAIT = 60  # s, for a background preparation of the tiny model (milliseconds when nothing else runs)
QUESTION, FOLLOW_UP = "What is this?", "And the colours?"


@pytest.fixture(scope="module", params=["openvino", "ours"])
def eng(request, engine, exported):
    if request.param == "openvino":
        return engine("v2", "fp32", "f32")
    if not cpu.NEEDED_FLAGS <= cpu.cpu_flags():
        pytest.skip("our operations need an AVX2 CPU")
    from mvlm_magic.runtime.engine import Engine

    ours = Engine(exported("v2", "int4"), ops="on")
    if ours.ops != "int4":
        pytest.skip("our operations could not be built here")
    return ours


def ask(chat, question=QUESTION, tokens=10):
    return chat.ask(question, max_new_tokens=tokens, ignore_eos=True).result()


def prepared(eng, image):
    preparation = eng.prepare(image)
    assert preparation.wait(WAIT) and preparation.failure is None
    return preparation


def test_a_prepared_picture_answers_as_a_cold_one_feeding_only_the_question(eng):
    picture = shapes_picture(seed=30)
    eng.forget_pictures()
    cold_chat = eng.new_chat(picture, prepare=False)
    cold, cold_follow_up = ask(cold_chat), ask(cold_chat, FOLLOW_UP)
    assert not cold.timings.picture_ready and cold.timings.image_encode_ms > 0

    eng.forget_pictures()
    ask(eng.new_chat(shapes_picture(seed=31), prepare=False), tokens=3)  # another picture's chat in the cache
    preparation = prepared(eng, picture)
    assert preparation.prefix and preparation.features is not None
    assert (preparation.key in eng.prefixes) == eng.kv.copyable  # a copy where the cache can be copied

    chat = eng.new_chat(picture)
    warm = ask(chat)
    assert warm.token_ids == cold.token_ids
    assert warm.timings.picture_ready and warm.timings.image_encode_ms == 0 and "picture prepared" in str(
        warm.timings.summary())
    fed = warm.timings.prompt_tokens - eng.kv.positions(eng.prefix_ids)
    assert warm.timings.prefill_tokens == fed < 20  # the question and "ASSISTANT:" only, not 144 image tokens
    follow_up = ask(chat, FOLLOW_UP)
    assert follow_up.token_ids == cold_follow_up.token_ids and follow_up.timings.prefill_tokens < 144


def test_forgetting_pictures_makes_the_next_question_cold_even_after_a_preparation(eng):
    picture = shapes_picture(seed=32)
    prepared(eng, picture)  # its prefix fed (ours: left in the cache)
    eng.forget_pictures()
    cold = ask(eng.new_chat(picture, prepare=False), tokens=3)
    assert cold.timings.image_encode_ms > 0 and cold.timings.prefill_tokens > 144  # picture and prompt, all fed

    chat = eng.new_chat(picture)  # a preparation under way when the pictures are forgotten is cancelled
    eng.forget_pictures()
    assert eng.preparing.cancelled and chat.preparation is eng.preparing
    eng.preparing.done.wait(WAIT)
    again = ask(eng.new_chat(picture, prepare=False), tokens=3)
    assert again.timings.image_encode_ms > 0 and again.timings.prefill_tokens > 144


def test_new_chat_prepares_its_picture_and_its_question_waits_rather_than_encoding_twice(eng):
    picture = shapes_picture(seed=32)
    chat = eng.new_chat(picture)
    assert chat.preparation is eng.preparing and chat.preparation.image is picture
    answer = ask(chat, tokens=4)
    assert chat.preparation.wait(WAIT) and chat.preparation.prefix  # found the prefix the question fed
    assert len(answer.token_ids) == 4 and chat.image_embeds is chat.preparation.features


def test_a_newer_picture_supersedes_an_older_one_and_an_answer_is_never_disturbed(eng):
    eng.forget_pictures()
    talk = shapes_picture(seed=33)
    baseline_chat = eng.new_chat(talk, prepare=False)
    baseline, baseline_follow_up = ask(baseline_chat, tokens=12), ask(baseline_chat, FOLLOW_UP)

    chat = eng.new_chat(talk, prepare=False)
    stream = chat.ask(QUESTION, max_new_tokens=12, ignore_eos=True)
    chunks = iter(stream)
    next(chunks)  # the answer is being generated: preparations wait for it to end
    older, newer = eng.prepare(shapes_picture(seed=34)), eng.prepare(shapes_picture(seed=35))
    assert older.cancelled and not newer.cancelled
    for _ in chunks:
        assert not newer.prefix  # nothing touches the cache while the answer streams
    assert stream.result().token_ids == baseline.token_ids
    assert newer.wait(WAIT) and newer.prefix and older.wait(WAIT) and not older.prefix
    follow_up = ask(chat, FOLLOW_UP)
    assert follow_up.token_ids == baseline_follow_up.token_ids
    if eng.kv.copyable:  # the chat was copied aside while the prefix was fed, and put back
        assert follow_up.timings.prefill_tokens < 144


def test_a_question_cancels_the_preparation_of_another_picture(eng):
    chat = eng.new_chat(shapes_picture(seed=36), prepare=False)
    stream = chat.ask(QUESTION, max_new_tokens=4)
    waiting = eng.prepare(shapes_picture(seed=37))  # before the answer begins
    stream.result()
    assert waiting.wait(WAIT) and waiting.cancelled and not waiting.prefix


def test_prepared_pictures_are_bounded(eng):
    eng.forget_pictures()
    keys = [prepared(eng, shapes_picture(seed=50 + i)).key for i in range(PICTURES_KEPT + 2)]
    assert len(eng.pictures) == PICTURES_KEPT and not eng.pictures.ready(keys[0]) and eng.pictures.ready(keys[-1])
    if eng.kv.copyable:
        assert len(eng.prefixes) == PREFIXES_KEPT and keys[-1] in eng.prefixes and keys[-PREFIXES_KEPT - 1] not in \
            eng.prefixes
    else:  # our operations: only the latest prefix, in the cache itself
        assert len(eng.prefixes) == 0 and eng.kv.holds(eng.prefix_ids, keys[-1])


def test_an_unreadable_picture_fails_at_its_question_not_in_the_background(eng, tmp_path):
    missing = tmp_path / "missing.png"
    preparation = eng.prepare(str(missing))
    assert preparation.wait(WAIT) and isinstance(preparation.error, MvlmError)
    with pytest.raises(MvlmError, match="missing.png"):
        ask(eng.new_chat(str(missing)), tokens=2)


def test_two_chats_about_one_new_picture_asked_at_once_both_answer(eng):
    """A question cancels the other chat's preparation before it encoded the picture; that chat's own question
    then encodes it (the cancelled preparation keeps its pixels for it)."""
    import threading

    picture = shapes_picture(seed=97)
    for _ in range(5):
        eng.forget_pictures()
        answers, errors = {}, []

        def ask(name: str, question: str, answers=answers, errors=errors) -> None:
            try:
                answers[name] = eng.new_chat(picture).ask(question, max_new_tokens=4).result().token_ids
            except Exception as error:  # any failure is the test's finding
                errors.append(error)

        threads = [threading.Thread(target=ask, args=(n, q)) for n, q in (("a", "What is this?"), ("b", "And this?"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and len(answers["a"]) and len(answers["b"])
