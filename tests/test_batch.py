"""One question over many pictures: a list, a folder or a glob; pictures encoded ahead; a table; Stop; a DataFrame."""

from __future__ import annotations

import sys
import threading

import pytest

from conftest import DisplayRecorder, shapes_picture
from mvlm_magic.errors import MvlmError
from mvlm_magic.notebook.cell import resolve_pictures
from mvlm_magic.runtime.batch import ask_many
from mvlm_magic.runtime.sampling import GenerationConfig


@pytest.fixture(scope="module")
def eng(engine):
    return engine("v2", "fp32", "f32")


PICTURES = [(f"p{i}", shapes_picture(seed=20 + i)) for i in range(4)]


def test_each_answer_equals_asking_alone_and_each_picture_is_encoded_once(eng, monkeypatch):
    encodes = []
    encode = eng.encode_image
    monkeypatch.setattr(eng, "encode_image", lambda picture: encodes.append(1) or encode(picture))
    questions = ["What is this?", "What colour is the circle?"]
    results = ask_many(eng, PICTURES, questions, GenerationConfig(max_new_tokens=6))
    monkeypatch.undo()
    assert len(encodes) == len(PICTURES)  # two questions, one encode per picture
    assert [(r.name, r.question) for r in results] == [(n, q) for n, _ in PICTURES for q in questions]
    for result in results:
        alone = eng.ask(dict(PICTURES)[result.name], result.question, max_new_tokens=6)
        assert result.answer.token_ids == alone.token_ids and not result.error
        # encoded ahead of its question, once: "picture prepared" (not "already seen": nobody asked about it before)
        assert result.answer.timings.summary().startswith("picture prepared · ")


def test_an_unreadable_picture_is_one_row_and_the_rest_are_answered(eng, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    results = ask_many(eng, [PICTURES[0], ("notes.png", tmp_path / "notes.png"), PICTURES[1]], ["What is this?"])
    assert [bool(r.answer) for r in results] == [True, False, True]
    assert "not a readable picture" in results[1].error


def test_stop_ends_the_batch(eng):
    stop = threading.Event()
    results = ask_many(eng, PICTURES, ["Describe the picture."], GenerationConfig(max_new_tokens=400),
                       stop_event=stop, on_result=lambda result: stop.set())
    assert results[0].answer is not None and all(r.answer is None for r in results[1:])
    assert all("stopped" in r.error for r in results[1:])


def test_many_pictures_are_a_list_a_folder_or_a_glob(tmp_path):
    for i, (_, picture) in enumerate(PICTURES[:3]):
        picture.save(tmp_path / f"{i}.png")
    (tmp_path / "readme.txt").write_text("not a picture")
    namespace = {"pics": [p for _, p in PICTURES[:2]], "one": PICTURES[0][1], "empty": [], "mixed": [PICTURES[0][1], 3]}
    assert [name for name, _ in resolve_pictures("pics", namespace)] == ["pics[0]", "pics[1]"]
    assert [name for name, _ in resolve_pictures(str(tmp_path), namespace)] == ["0.png", "1.png", "2.png"]
    assert [name for name, _ in resolve_pictures(f"{tmp_path}/[01].png", namespace)] == ["0.png", "1.png"]
    assert resolve_pictures("one", namespace) is None and resolve_pictures(None, namespace) is None
    with pytest.raises(MvlmError, match="is empty"):
        resolve_pictures("empty", namespace)
    with pytest.raises(MvlmError, match=r"holds a int at \[1\]"):
        resolve_pictures("mixed", namespace)
    with pytest.raises(MvlmError, match="matches no picture files"):
        resolve_pictures(f"{tmp_path}/*.jpg", namespace)


def test_the_magic_fills_a_table_with_stop_and_scores_as_a_dataframe(magic_shell, monkeypatch):
    import pandas as pd

    from mvlm_magic.notebook import batch, output_mode

    magic_shell.user_ns["pics"] = [p for _, p in PICTURES[:3]]
    display = DisplayRecorder()
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
    monkeypatch.setattr(batch, "display", display)
    magic_shell.run_cell("%%mvlm_ask pics --each-line --max-new-tokens 4\nWhat is this?\nWhat colour is it?")
    view, frame = display.shown[0], magic_shell.user_ns["_mvlm_answer"]
    assert len(view.rows) == 6 and view.progress.value == 6 and view.stop_button.layout.display == "none"
    assert isinstance(frame, pd.DataFrame) and len(frame) == 6 and list(frame.question[:2]) == [
        "What is this?", "What colour is it?"]
    assert (frame.answer == frame.answer).mean() == 1.0  # an exercise scores it like this
    copy = display.updates[-1]["text/markdown"]
    assert copy.count("<img") == 6 and copy.count("\n|") == 7  # the table a saved notebook keeps
    monkeypatch.setitem(sys.modules, "pandas", None)  # without pandas: the list of Answers
    magic_shell.run_cell("%%mvlm_ask pics --max-new-tokens 2\nWhat is this?")
    answers = magic_shell.user_ns["_mvlm_answer"]
    assert isinstance(answers, list) and len(answers) == 3 and all(a.token_ids for a in answers)
