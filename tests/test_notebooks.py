"""Every notebook in examples/ runs top to bottom in a real kernel (nbclient), and the saved notebook holds the
answers: in its widget state, and as a static copy (Markdown, text, PNG) that `jupyter nbconvert --to html` shows.

nbclient is a client that cannot press buttons (it sends allow_stdin=False), so the magics run the
answers blocking there and the widget state it records is final.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from mvlm_magic.handout import COPY_CLASS, handout
from mvlm_magic.widgets.messages import CONTROL_CHARACTERS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def execute(path: Path, workdir: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    for extra in EXAMPLES.iterdir():  # the pictures the notebooks name by file (cat.jpg), where they run
        if extra.suffix != ".ipynb" and extra.is_file():
            shutil.copy(extra, workdir)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook


def stream_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def as_html_text(notebook) -> str:
    """The notebook as `jupyter nbconvert --to html` writes it, reduced to the text a reader sees."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(notebook)
    page = BeautifulSoup(body, "html.parser")
    for hidden in page(["script", "style"]):  # the widget state travels in a script: not what a reader sees
        hidden.decompose()
    return " ".join(page.get_text(" ").split())


def html_values(notebook) -> list[str]:
    state = notebook.metadata["widgets"][WIDGET_STATE]["state"]
    return [model["state"].get("value", "") for model in state.values() if model["model_name"] == "HTMLModel"]


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """The kernel inherits MVLM_CACHE: the notebooks export the bundled model into an empty cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MVLM_CACHE", str(cache))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return cache


def test_there_is_a_classroom_notebook():
    assert EXAMPLES / "classroom.ipynb" in NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_saves_the_answers_in_the_widget_state(path, tmp_path, kernel_cache):
    notebook = execute(path, tmp_path)
    values = html_values(notebook)
    assert values, "no widget state was saved"
    # Each answer's output ended as a static copy: no widget view left that a viewer without the kernel cannot show.
    asks = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("%%mvlm_ask")]
    shown = [[o.data for o in c.outputs if o.output_type == "display_data"] for c in asks]
    assert asks and all(shown), [c.outputs for c in asks]  # each ask shows its answer (a table for many pictures)
    for data in (d for outputs in shown for d in outputs):  # --show-input's picture too
        assert "text/markdown" in data and WIDGET_VIEW not in data
        assert "image/png" in data or "<img" in data["text/markdown"]  # the thumbnail: its own PNG, or in a table
    # Only the answer cells, without the widget state: what they show is their static copy alone.
    page = as_html_text(nbformat.v4.new_notebook(cells=asks, metadata={}))
    assert page.count("first token") >= len(asks)  # every answer's stats line
    answers = {c.id: c for c in notebook.cells if c.cell_type == "code"}
    if path.name == "classroom.ipynb":
        check_classroom(answers, values, page)
    elif path.name == "stop_an_answer.ipynb":
        check_stop_an_answer(answers)
    check_handout(notebook, len(asks), panels={"classroom.ipynb": 1, "see_inside.ipynb": 1}.get(path.name, 0))


def check_handout(notebook, asks: int, panels: int) -> None:
    """`mvlm handout` of the run notebook: no widget output left, each live widget's saved copy in its place (the
    AskPanel's with its conversation), every answer still there."""
    handed, copied, other = handout(json.loads(nbformat.writes(notebook)))
    outputs = [o for cell in handed["cells"] for o in cell.get("outputs", [])]
    assert (copied, other) == (panels, 0) and not any(WIDGET_VIEW in o.get("data", {}) for o in outputs)
    copies = [o["data"] for o in outputs if COPY_CLASS in "".join(o.get("data", {}).get("text/markdown", ""))]
    assert len(copies) == panels and all("<style>" not in copy["text/markdown"] for copy in copies)
    if any("AskPanel(" in cell.source for cell in notebook.cells):
        conversation = "".join(copies[0]["text/plain"])  # (saved text: a list of lines)
        assert "yes" in conversation.partition("Q: Is there a blue cross?")[2].split(), conversation
    assert as_html_text(nbformat.reads(json.dumps(handed), as_version=4)).count("first token") >= asks


def answer_of(cell) -> str:
    """The answer a %%mvlm_ask cell shows, from its static copy (the text form: answer, then the stats line)."""
    texts = [o.data["text/plain"] for o in cell.outputs if o.output_type == "display_data"]
    assert len(texts) == 1 and "first token" in texts[0], cell.outputs
    return CONTROL_CHARACTERS.sub("", texts[0]).rsplit("\n[", 1)[0]


def check_classroom(cells, values, page):
    """The bundled model answers every question of the walk-through right: what the picture generator knows."""
    from mvlm_magic.demo import conversations, shapes

    scene = shapes.make_scene(1000000002)  # the notebook's SEED
    thing = {t.shape: t for t in scene.things if scene.count(t.shape) == 1}
    assert answer_of(cells["ask"]) == thing["cross"].colour == "blue"
    assert answer_of(cells["follow-up"]) == thing["square"].where == "bottom right"  # about another object
    assert answer_of(cells["count"]) == str(len(scene.things)) == "4"
    assert "circle" not in {t.shape for t in scene.things}
    assert answer_of(cells["absent"]) == "There is no circle."
    busy = shapes.make_scene(1000000190)
    described = answer_of(cells["describe"])
    assert described == conversations.describe_in_detail(busy.things) and described.count(". ") == 6  # 7 objects
    assert answer_of(cells["photo"]) == conversations.OUTSIDE_ANSWER
    compared = cells["compare"].outputs[-1]["data"]["text/plain"].splitlines()
    rows = {line.split()[0].split("-")[0]: line.split()[1] for line in compared[1:]}
    assert rows == {"int8": "4", "int4": "4"} and "same answer" in compared[2], compared
    assert stream_text(cells["panel-ask"]).strip() == "yes"  # the AskPanel: "Is there a blue cross?"
    # the exercise's check, and its answer saved in the widget state and in the notebook converted to HTML
    printed = stream_text(cells["check"]).splitlines()
    assert printed[0] == "the model says: bottom right" and printed[-1] == "right: True", printed
    answer = "bottom right"
    assert any(html.escape(answer) in value for value in values), "the answer is not in the saved widget state"
    assert answer in page, "the answer is not in the notebook converted to HTML"
    assert any("yes" in value for value in values)  # the panel's answer, saved with the notebook


def check_stop_an_answer(cells):
    """Unattended, no one presses Stop: the busy picture's description runs to its end, every object named."""
    from mvlm_magic.demo import conversations, shapes

    things = shapes.make_scene(1000000190).things  # the notebook's SEED
    assert answer_of(cells["ask"]) == conversations.describe_in_detail(things)
    stats = cells["ask"].outputs[-1].data["text/plain"].splitlines()[-1]
    assert " 67 tokens " in stats, stats  # long enough to watch it stream


@pytest.mark.slow
def test_see_inside_walks_a_class_through_the_four_views_with_right_answers(tmp_path, kernel_cache):
    notebook = execute(EXAMPLES / "see_inside.ipynb", tmp_path)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    show_input = next(c for c in cells if "--show-input" in c.source)
    picture, answer = [o.data for o in show_input.outputs if o.output_type == "display_data"]
    assert "144 image tokens" in picture["text/plain"] and "where the whole answer looked" in picture["text/plain"]
    assert answer["text/plain"].startswith("red")  # the cross is red
    view = next(c for c in cells if "model_view(" in c.source).outputs[-1]["data"]
    assert "where the whole answer looked" in view["text/plain"]  # the interactive view, with a saved picture
    tokens = next(c for c in cells if "--show-tokens" in c.source)
    assert "<span title=" in tokens.outputs[-1]["data"]["text/markdown"]  # tinted tokens, kept when saved
    assert "least sure:" in stream_text(next(c for c in cells if "least = min(" in c.source))
    assert "score: 100%" in stream_text(next(c for c in cells if "score:" in c.source))  # every star's colour
    compared = next(c for c in cells if c.source.startswith("%mvlm_compare")).outputs[-1]["data"]["text/plain"]
    assert "int8" in compared and "int4" in compared and "same answer" in compared
