"""Batched decoding (runtime/batching.py): chats on cache rows of their own decode their next tokens in one call of
our KVAttention model, and answer exactly as each would alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mvlm_magic.ops import cpu
from mvlm_magic.runtime.sampling import GenerationConfig

pytestmark = pytest.mark.skipif(not cpu.NEEDED_FLAGS <= cpu.cpu_flags(), reason="needs an AVX2 CPU")

ROW_TOLERANCE = 2e-3  # a row's logits in a batch vs alone, relative to their range: int8 activations, other order


@pytest.fixture(scope="module")
def nano_ours(cache_dir):
    """The bundled model's int4 export with our operations (cache rows)."""
    from mvlm_magic.demo import bundled_model
    from mvlm_magic.loader import load_engine

    eng = load_engine(bundled_model(), "int4", cache_dir=cache_dir, ops="on")
    assert eng.rows is not None and eng.batcher is not None
    return eng


def ask_together(engine, pairs, config, follow_up=None):
    """Each (picture, question) on its own row, all at once in threads; the answers in order."""
    answers = [None] * len(pairs)
    start = threading.Barrier(len(pairs))

    def one(i):
        picture, question = pairs[i]
        chat = engine.new_chat(picture, prepare=False, own_cache=True)
        start.wait()
        answers[i] = [chat.ask(question, config).result()]
        if follow_up:
            answers[i].append(chat.ask(follow_up, config).result())
        chat.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pairs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_chats_decoding_together_answer_as_each_alone(nano_ours):
    from mvlm_magic.demo import shapes

    pictures = [shapes.render(shapes.make_scene(seed)) for seed in shapes.HELDOUT_SEEDS[:6]]
    questions = ["Describe the picture in every detail.", "How many shapes are there?", "What colour is the circle?",
                 "Where is the star?", "Is there a red square?", "What shape is the blue object?"]
    config = GenerationConfig(max_new_tokens=40)
    alone = [nano_ours.ask(p, q, config).text for p, q in zip(pictures, questions)]
    calls, rows = nano_ours.batcher.calls, nano_ours.batcher.rows
    together = ask_together(nano_ours, list(zip(pictures, questions)), config, follow_up="How many shapes are there?")
    assert [answers[0].text for answers in together] == alone
    # the follow-ups continued each row's own conversation: their prompts fed only the new turn
    assert all(answers[1].timings.prefill_tokens < 40 for answers in together)
    made, held = nano_ours.batcher.calls - calls, nano_ours.batcher.rows - rows
    assert made and held / made > 1.5, (made, held)  # steps really ran together
    assert nano_ours.rows.in_use == 0  # every row given back


def test_a_row_in_a_batch_gets_the_logits_it_gets_alone(exported):
    """Rows of different lengths in one call (the mask's zeros tell each row its length) on the tiny checkpoint."""
    from conftest import shapes_picture
    from mvlm_magic.runtime.engine import Engine
    from mvlm_magic.runtime.kv_state import KVState

    eng = Engine(exported("v2", "int4"), ops="on")
    prompts = [[1, 5, 9, 14], [1, 7], [1, 3, 3, 8, 2, 6, 4]]
    features = eng.encode_image(shapes_picture())
    chats = [eng.new_chat(own_cache=True) for _ in prompts]
    rows = [chat.cache(ids) for chat, ids in zip(chats, prompts)]
    assert sorted(kv.row for kv in rows) == [1, 2, 3]
    with eng.lock:
        for kv, chat, ids in zip(rows, chats, prompts):
            kv.extend(chat, ids, lambda new: eng.embed(new, features))
        nxt = [11, 12, 13]
        embeds = eng.text_embeddings(np.array([[t] for t in nxt]))[0]
        together = KVState.run_rows(rows, [kv.length for kv in rows], embeds).copy()
        for kv, chat, ids, token in zip(rows, chats, prompts, nxt):
            kv.advanced(chat, ids + [token], None)
        alone = [eng.kv.extend(None, ids + [token], lambda new: eng.embed(new, features)).copy()
                 for ids, token in zip(prompts, nxt)]
    for row, single in zip(together, alone):
        assert np.abs(row - single).max() / (single.max() - single.min()) < ROW_TOLERANCE
    assert [kv.length for kv in rows] == [5, 3, 8]


def test_rows_are_reused_for_a_conversation_sent_again(nano_ours):
    """A client of the server sends the whole history again: the row that holds its start is the one it gets."""
    from mvlm_magic.demo import shapes

    picture = shapes.render(shapes.make_scene(shapes.HELDOUT_SEEDS[7]))
    config = GenerationConfig(max_new_tokens=16)
    first = nano_ours.new_chat(picture, prepare=False, own_cache=True)
    answer = first.ask("How many shapes are there?", config).result()
    row = first.kv.row
    first.close()
    other = nano_ours.new_chat(picture, prepare=False, own_cache=True)  # a new conversation: a new row
    other.ask("Where is the star?", config).result()
    again = nano_ours.new_chat(picture, prepare=False, own_cache=True)
    again.history = list(first.history)
    follow = again.ask("What colour is the star?", config).result()
    assert again.kv.row == row != other.kv.row  # the row whose ids start this prompt
    assert follow.timings.prefill_tokens < 30 and answer.text
    again.close()
    # the last answer sent back as text that tokenizes otherwise (here: changed at its end): still this row
    retold = nano_ours.new_chat(picture, prepare=False, own_cache=True)
    (question, text), = again.history[-1:]
    retold.history = again.history[:-1] + [(question, text + " Yes.")]
    follow = retold.ask("What colour is the star?", config).result()
    assert retold.kv.row == row and follow.timings.prefill_tokens < 40, follow.timings
    retold.close(), other.close()


def test_a_new_conversation_about_a_picture_another_row_holds_copies_its_start(nano_ours):
    """A class asking about the picture on the board: the second conversation feeds only its own question (the system
    text and the picture's positions are copied from the first one's row) and answers as it does alone."""
    from mvlm_magic.demo import shapes

    picture = shapes.render(shapes.make_scene(shapes.HELDOUT_SEEDS[9]))
    config = GenerationConfig(max_new_tokens=24)
    expected = nano_ours.ask(picture, "Where is the star?", config)  # the engine's own row 0
    assert expected.timings.prefill_tokens > 144  # nothing to copy from yet: the picture was computed
    with nano_ours.lock:
        nano_ours.kv.reset()  # row 0 forgets it
    first = nano_ours.new_chat(picture, prepare=False, own_cache=True)
    first.ask("How many shapes are there?", config).result()
    second = nano_ours.new_chat(picture, prepare=False, own_cache=True)  # first holds its row: a new one
    got = second.ask("Where is the star?", config).result()
    assert second.kv.row != first.kv.row
    assert got.timings.prefill_tokens < 20 and got.text == expected.text, got.timings
    first.close(), second.close()


def test_without_our_attention_every_chat_shares_the_one_cache(exported):
    from mvlm_magic.runtime.engine import Engine

    eng = Engine(exported("v2", "int4"), ops="off")
    assert eng.rows is None and eng.batcher is None
    chat = eng.new_chat(own_cache=True)
    assert chat.cache([1, 2]) is eng.kv
    assert chat.ask("Hello?", max_new_tokens=3, ignore_eos=True).result().token_ids
    chat.close()


def test_many_pictures_decode_together_and_come_back_in_order(nano_ours):
    from mvlm_magic.demo import shapes
    from mvlm_magic.runtime.batch import ask_many

    pictures = [(f"scene {seed}", shapes.render(shapes.make_scene(seed))) for seed in shapes.HELDOUT_SEEDS[10:16]]
    questions = ["How many shapes are there?", "Describe the picture in every detail."]
    config = GenerationConfig(max_new_tokens=30)
    alone = [nano_ours.ask(picture, question, config).text for _, picture in pictures for question in questions]
    calls, rows = nano_ours.batcher.calls, nano_ours.batcher.rows
    seen = []
    results = ask_many(nano_ours, pictures, questions, config, on_result=lambda result: seen.append(result))
    assert [result.answer.text for result in results] == alone
    assert seen == results and [r.name for r in results[::2]] == [name for name, _ in pictures]
    assert (nano_ours.batcher.rows - rows) / (nano_ours.batcher.calls - calls) > 1.5


def test_one_token_through_the_static_copy_equals_the_model_itself(nano_ours):
    """kv_state.one_token_model: a copy with static shapes that shares the cache rows its prompts wrote."""
    kv = nano_ours.kv
    assert kv.step is not None and kv.width == nano_ours.context_length
    width = nano_ours.text_embeddings.outputs[0].get_partial_shape()[-1].get_length()
    rng = np.random.default_rng(0)
    prompt = rng.standard_normal((1, 40, width)).astype(np.float32)
    tokens = rng.standard_normal((6, 1, 1, width)).astype(np.float32)

    def logits(static: bool) -> np.ndarray:
        kept, kv.width = kv.width, kv.width if static else 0
        try:
            with nano_ours.lock:
                kv.reset()
                kv.run(prompt, 0)  # the prompt through the model itself, the tokens after it through either
                return np.array([kv.run(token, 40 + i) for i, token in enumerate(tokens)])
        finally:
            kv.width = kept
            kv.reset()

    np.testing.assert_array_equal(logits(static=True), logits(static=False))
