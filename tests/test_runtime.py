"""The torch-free runtime on a real exported model: streaming, stopping, chat state, guards, timings."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import shapes_picture
from mvlm_magic.errors import MvlmError
from mvlm_magic.printing import answer_stats
from mvlm_magic.runtime.engine import Engine
from mvlm_magic.runtime.kv_state import text_before_image
from mvlm_magic.runtime.tokenizer import IMAGE_TOKEN_INDEX


@pytest.fixture(scope="module")
def eng(engine):
    return engine("v2", "fp32", "f32")


def test_runtime_imports_no_torch(exported, tmp_path):
    picture_path = tmp_path / "p.png"
    shapes_picture().save(picture_path)
    script = textwrap.dedent(f"""
        import sys
        from mvlm_magic.loader import load_engine
        engine = load_engine({str(exported("v2", "fp32"))!r})
        answer = engine.ask({str(picture_path)!r}, "What is this?", max_new_tokens=4)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "nncf"))
        print("heavy:", heavy, "tokens:", answer.timings.new_tokens)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout


def test_streamed_chunks_add_up_to_the_answer(eng, picture):
    stream = eng.new_chat(picture).ask("Describe the image.", max_new_tokens=40)
    chunks = list(stream)
    answer = stream.result()
    assert "".join(chunks) == answer.text
    assert answer.finish_reason in ("eos", "max_new_tokens")
    t = answer.timings
    assert t.image_encode_ms > 0 and t.first_token_ms >= t.image_encode_ms and t.prompt_tokens > 144
    if t.new_tokens > 1:
        assert t.decode_tokens_per_s > 0
    assert "tokens/s" in t.summary()


def test_answer_tokens_only_when_asked_and_sampling_shows_in_them(eng, picture):
    assert eng.new_chat(picture).ask("Describe the image.", max_new_tokens=6).result().tokens == []
    greedy = eng.new_chat(picture).ask("Describe the image.", max_new_tokens=12, alternatives=3).result()
    assert [t.id for t in greedy.tokens] == greedy.token_ids
    for token in greedy.tokens:
        assert token.likeliest and len(token.alternatives) == 3
        assert token.alternatives[0].probability == token.probability
        assert 1.0 >= sum(a.probability for a in token.alternatives) and token.alternatives[2].probability >= 0
    assert "".join(t.text for t in greedy.tokens).strip() == greedy.text  # the tokens read as the answer
    hot = eng.new_chat(picture).ask("Describe the image.", max_new_tokens=40, alternatives=3, temperature=5.0,
                                    seed=1).result()
    assert not all(t.likeliest for t in hot.tokens)  # sampling picked tokens the model did not like best


def test_max_new_tokens(eng, picture):
    answer = eng.ask(picture, "What is this?", max_new_tokens=3)
    assert answer.timings.new_tokens <= 3
    if answer.finish_reason != "eos":
        assert answer.finish_reason == "max_new_tokens" and answer.timings.new_tokens == 3


def test_stop_from_another_thread(eng, picture):
    stream = eng.new_chat(picture).ask("Describe the image.", max_new_tokens=1500, stop_strings=())
    first_chunk = threading.Event()
    chunks = []

    def consume():
        for chunk in stream:
            chunks.append(chunk)
            first_chunk.set()

    worker = threading.Thread(target=consume)
    worker.start()
    first_chunk.wait(30)
    stream.stop()
    worker.join(30)
    answer = stream.result()
    if answer.finish_reason != "eos":
        assert answer.finish_reason == "stopped" and answer.timings.new_tokens < 1500


def test_kernel_interrupt_ends_the_answer_not_the_session(eng, picture):
    chat = eng.new_chat(picture)
    stream = chat.ask("Describe the image.", max_new_tokens=1500)
    main = threading.get_ident()
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    answer = stream.result()  # the SIGINT lands here as KeyboardInterrupt
    timer.cancel()
    assert answer.finish_reason in ("stopped", "eos")
    follow_up = chat.ask("And then?", max_new_tokens=3).result()
    assert follow_up.timings.new_tokens >= 1


def test_stop_strings_cut_the_answer_and_are_never_shown(eng, picture):
    plain = eng.ask(picture, "Describe the image.", max_new_tokens=30).text
    if len(plain) < 12:
        pytest.skip("answer too short to pick a stop string from")
    stop = plain[6:9]
    stream = eng.new_chat(picture).ask("Describe the image.", max_new_tokens=30, stop_strings=(stop,))
    shown = "".join(stream)
    answer = stream.result()
    assert answer.text == plain[: plain.find(stop)].strip()
    assert stop not in shown and answer.finish_reason == "stop_string" and shown == answer.text


def test_seeded_sampling_repeats(eng, picture):
    def sample(seed):
        return eng.ask(picture, "What is this?", max_new_tokens=12, temperature=1.0, top_p=0.9, seed=seed).token_ids

    assert sample(3) == sample(3)


def test_follow_up_reuses_the_kv_cache(eng, picture):
    chat = eng.new_chat(picture)
    first = chat.ask("What colour is the circle?", max_new_tokens=8).result()
    second = chat.ask("And the square?", max_new_tokens=8).result()
    assert second.timings.prefill_tokens < 144 < second.timings.prompt_tokens  # no image, no first turn re-fed
    assert second.timings.prompt_tokens > first.timings.prompt_tokens
    assert [q for q, _ in chat.history] == ["What colour is the circle?", "And the square?"]


def test_a_new_image_starts_a_new_conversation(eng):
    first_chat = eng.new_chat(shapes_picture(seed=10), prepare=False)
    first_chat.ask("What is this?", max_new_tokens=4).result()
    other = eng.new_chat(shapes_picture(seed=11), prepare=False)
    answer = other.ask("What is this?", max_new_tokens=4).result()
    # only the system prompt before the picture is reused from the first chat's state
    system = text_before_image(other.prompt_ids("What is this?"))
    assert len(other.history) == 1 and answer.timings.prefill_tokens == answer.timings.prompt_tokens - system
    # the first chat's KV state was displaced: it is rebuilt from its history, image included
    again = first_chat.ask("Tell me more.", max_new_tokens=4).result()
    assert again.timings.prefill_tokens > 144


def test_a_reused_system_prompt_gives_the_same_answer(eng):
    eng.kv.reset()
    alone = eng.new_chat(shapes_picture(seed=12), prepare=False).ask("What is this?", max_new_tokens=12).result()
    eng.new_chat(shapes_picture(seed=13)).ask("Describe the image.", max_new_tokens=6).result()
    after = eng.new_chat(shapes_picture(seed=12), prepare=False).ask("What is this?", max_new_tokens=12).result()
    assert after.timings.prefill_tokens < alone.timings.prefill_tokens == alone.timings.prompt_tokens
    assert after.token_ids == alone.token_ids


def test_a_loaded_engine_has_the_system_prompt_computed_already(exported):
    fresh = Engine(exported("v2", "fp32"), precision="f32")
    chat = fresh.new_chat(shapes_picture(seed=14), prepare=False)
    first = chat.ask("What is this?", max_new_tokens=12).result()
    system = text_before_image(chat.prompt_ids("What is this?"))
    assert system > 3 and first.timings.prefill_tokens == first.timings.prompt_tokens - system
    fresh.kv.reset()  # cold: the whole prompt in one go gives the same answer
    cold = fresh.new_chat(shapes_picture(seed=14), prepare=False).ask("What is this?", max_new_tokens=12).result()
    assert cold.timings.prefill_tokens == cold.timings.prompt_tokens and cold.token_ids == first.token_ids


def test_an_abandoned_answer_holds_no_lock_and_interleaved_answers_are_exact(eng):
    alone = [eng.ask(shapes_picture(seed=s), "Describe the image.", max_new_tokens=10, ignore_eos=True).token_ids
             for s in (20, 21)]
    abandoned = iter(eng.new_chat(shapes_picture(seed=22)).ask("Describe the image.", max_new_tokens=50))
    next(abandoned, None)  # started, then left: another thread must still get the engine
    done = threading.Event()
    worker = threading.Thread(target=lambda: (eng.ask(shapes_picture(seed=20), "Hi?", max_new_tokens=2), done.set()))
    worker.start()
    assert done.wait(60), "an abandoned answer kept the engine's lock"
    # Two answers stepped in turn share one cache: each step re-feeds what the other displaced.
    streams = [eng.new_chat(shapes_picture(seed=s)).ask("Describe the image.", max_new_tokens=10, ignore_eos=True)
               for s in (20, 21)]
    iterators = [iter(stream) for stream in streams]
    while any([next(it, None) is not None for it in iterators]):
        pass
    assert [stream.result().token_ids for stream in streams] == alone


def test_prompt_beyond_the_context_is_refused(eng, picture):
    full = r"the conversation is full: this question needs \d+ tokens of the model's 2048; start a new one \(%%mvlm_ask"
    with pytest.raises(MvlmError, match=full):
        eng.ask(picture, "circle " * 3000)


def test_stats_are_words_a_student_reads(eng, picture):
    """No `0.0 tokens/s` for one token, no `image 0 ms` on a follow-up."""
    chat = eng.new_chat(picture)
    first = chat.ask("What colour is the circle?", max_new_tokens=1).result()
    stats = answer_stats(first)
    assert "· picture " in stats and stats.endswith("· 1 token") and "tokens/s" not in stats, stats
    second = chat.ask("And the square?", max_new_tokens=6).result()
    stats = answer_stats(second)
    assert "picture already seen" in stats and "image" not in stats and " ms" in stats, stats
    if second.timings.new_tokens > 1:
        assert f"{second.timings.new_tokens} tokens · " in stats and "tokens/s" in stats
    text_only = eng.new_chat().ask("Hello", max_new_tokens=2).result()
    assert "picture" not in answer_stats(text_only)


def test_an_answer_cut_by_a_full_context_says_how_to_go_on(eng, picture):
    chat = eng.new_chat(picture)
    words = max(k for k in range(1, 3000) if eng.kv.positions(chat.prompt_ids("circle " * k)) < eng.context_length - 8)
    answer = chat.ask("circle " * words, max_new_tokens=400, ignore_eos=True).result()
    assert answer.finish_reason == "context"
    assert answer_stats(answer).startswith("the conversation is full: start a new one (%%mvlm_ask --new, "
                                           "%mvlm_reset, or a new chat)")
    assert "context full" not in answer_stats(answer)


def test_bad_questions_and_images(eng):
    with pytest.raises(MvlmError, match="question is empty"):
        eng.new_chat(shapes_picture()).ask("   ")
    with pytest.raises(MvlmError, match="at least one pixel|no pixels"):
        eng.ask(Image.new("RGB", (0, 5)), "What is this?")
    with pytest.raises(MvlmError, match="at least one pixel|no pixels"):
        eng.ask(np.zeros((0, 0, 3), dtype=np.uint8), "What is this?")
    with pytest.raises(MvlmError):
        eng.ask("/no/such/picture.png", "What is this?")


def test_typed_image_text_stays_text(eng):
    question = "What is <image> this?"
    chat = eng.new_chat(shapes_picture())
    ids = chat.prompt_ids(question)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1  # the picture's own place only
    after_picture = ids[ids.index(IMAGE_TOKEN_INDEX) + 1 :]
    assert eng.tokenizer.decode(after_picture) == "\nWhat is <image> this? ASSISTANT:"
    assert chat.ask(question, max_new_tokens=3).result().token_ids
    assert chat.prompt_ids("And <image>?").count(IMAGE_TOKEN_INDEX) == 1  # a follow-up: still one picture
    assert chat.ask("And <image>?", max_new_tokens=3).result().token_ids
    text_only = eng.new_chat()
    assert IMAGE_TOKEN_INDEX not in text_only.prompt_ids(question)
    assert text_only.ask(question, max_new_tokens=3).result().token_ids  # was a TypeError (no picture to splice)


# A lone surrogate typed in Python, and "caf\xe9" from a Latin-1 terminal (Python keeps the byte as "\udce9").
@pytest.mark.parametrize("question, where", [("What is \ud800 this?", "character 9, '\\ud800'"),
                                             ("caf\udce9?", "character 4, '\\udce9'")])
def test_text_that_is_not_unicode_is_one_line(eng, question, where):
    with pytest.raises(MvlmError) as caught:
        eng.new_chat(shapes_picture()).ask(question)
    assert str(caught.value) == (
        f"the question holds text that is not valid Unicode ({where}, e.g. a byte the terminal did not send as "
        "UTF-8); retype it, or set the terminal to UTF-8."
    )


def test_unknown_device_lists_the_available_ones(exported):
    with pytest.raises(MvlmError, match=r"unknown device 'TPU'; available: CPU.*AUTO"):
        Engine(exported("v2", "fp32"), device="TPU")


def test_an_incomplete_export_does_not_load(tmp_path):
    with pytest.raises(MvlmError, match="not a complete export"):
        Engine(tmp_path)


# --- memory ------------------------------------------------------------------------------------


def test_shedding_drops_mapped_file_pages_and_keeps_the_data(tmp_path):
    import mmap

    from mvlm_magic.runtime.memory import resident_bytes, shed, shedding

    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(mapping, dtype=np.uint8)
        assert int(view.sum()) == int(data.sum())  # every page read: resident
        assert resident_bytes([path]) >= 7 << 20
        assert shed([path]) >= 8 << 20
        assert resident_bytes([path]) < 1 << 20
        with shedding([path], every=0.001):
            assert np.array_equal(view, data)  # pages come back from the file, unchanged
        assert resident_bytes([path]) < 1 << 20
        del view
        mapping.close()


def test_a_loaded_engine_holds_no_copied_weight_pages(exported, picture):
    from mvlm_magic.runtime.memory import resident_bytes, shed

    folder = exported("v2", "int8")
    engine = Engine(folder)
    weights = [folder / "vision.bin", folder / "language.bin"]
    assert resident_bytes(weights) < 0.1 * sum(p.stat().st_size for p in weights)
    first = engine.ask(picture, "What is this?", max_new_tokens=6).token_ids
    shed(weights)  # again, after an answer read what it needed
    assert engine.ask(picture, "What is this?", max_new_tokens=6).token_ids == first


# --- long use ------------------------------------------------------------------------------------------


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


LONG_USE_QUESTIONS = ("What is in the picture?", "What colour is the largest circle?", "And the background?",
                      "Describe it in one sentence.")


@pytest.mark.slow
def test_two_hundred_questions_keep_memory_flat_and_answers_exact(eng):
    """A class's worth of use in one kernel: 5 rounds of 10 chats (a new picture object each) of 4 questions.

    Each round gives the model the same prompt lengths, so once the first round has met them (OpenVINO keeps
    what it prepares for each new input shape) memory must stay flat: the peak of round 5 against the peak of
    round 3 (peaks, because RSS saws by ~5 MB as buffers come and go; round 2 can still add a few MB of allocator
    arenas when the suite has run many threads before: peaks 2030, 2051, 2053, 2054, 2054 MB in one full run).
    Every answer equals the first round's, and each round's last conversation, prefilled again from an empty
    cache, gives the same tokens.
    """
    import gc

    first_round: list[list[int]] = []
    peaks = []
    for round_number in range(5):
        gc.collect()
        peak = 0.0
        for i in range(40):
            chat_index, turn = divmod(i, len(LONG_USE_QUESTIONS))
            if turn == 0:
                chat = eng.new_chat(shapes_picture(seed=chat_index))
            answer = chat.ask(LONG_USE_QUESTIONS[turn], max_new_tokens=8, ignore_eos=True).result()
            if round_number == 0:
                first_round.append(answer.token_ids)
            assert len(answer.token_ids) == 8 and answer.token_ids == first_round[i], (round_number, i)
            peak = max(peak, resident_mb())
        peaks.append(peak)
        eng.kv.reset()
        eng.prefixes.clear()  # no prepared prefix either (the features may stay)
        fresh = eng.new_chat(chat.image, prepare=False)
        fresh.history = list(chat.history[:-1])
        again = fresh.ask(LONG_USE_QUESTIONS[-1], max_new_tokens=8, ignore_eos=True).result()
        assert again.timings.prefill_tokens == again.timings.prompt_tokens  # really from an empty cache
        assert again.token_ids == answer.token_ids, round_number
    grown = peaks[-1] - peaks[2]
    assert grown < 3.0, f"RSS grew {grown:.1f} MB from round 3 to round 5 (peaks {[round(p) for p in peaks]} MB)"
