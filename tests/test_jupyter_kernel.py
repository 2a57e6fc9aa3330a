"""The magics in a real ipykernel, driven like a front end: an interactive one (the cell returns while the
answer streams in a background thread, and a Stop click sent over the widget comm, as JupyterLab sends it,
stops it), and one that cannot click (the answer runs in the cell, and the kernel's interrupt stops it).
Either way the answer's output ends as a static copy (Markdown, text, PNG) that a saved notebook keeps.
"""

from __future__ import annotations

import base64
import os
import time

import nbformat
import pytest

from conftest import shapes_picture
from mvlm_magic.widgets.messages import text_markdown

pytestmark = pytest.mark.slow
LONG = 1500  # far more tokens than the tiny model writes in the moment a stop takes


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, exported):
    from jupyter_client.manager import start_new_kernel

    folder = tmp_path_factory.mktemp("kernel")
    shapes_picture().save(folder / "picture.png")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(folder),
                                       env={**os.environ, "IPYTHONDIR": str(folder / "ipython")})
    client.manager = manager  # for interrupt_kernel
    execute(client, f"%load_ext mvlm_magic\n%mvlm_load {exported('v2', 'fp32')} --precision f32")
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def execute(client, code: str, interactive: bool = True, timeout: float = 120) -> str:
    """Run code; return its stdout. `interactive` sets allow_stdin as JupyterLab does (nbclient clears it)."""
    messages = []
    reply = client.execute_interactive(code, allow_stdin=interactive, timeout=timeout, output_hook=messages.append,
                                       stdin_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")


def test_stop_click_from_the_front_end_stops_a_streaming_answer(kernel):
    started = time.monotonic()
    execute(kernel, f"%%mvlm_ask picture.png --max-new-tokens {LONG}\nDescribe the picture.")
    assert time.monotonic() - started < 5  # the cell returned; the answer streams in the background
    view = "get_ipython().magics_manager.registry['MvlmMagics'].view"
    stop_id, streaming = execute(kernel, f"import time\nv = {view}\nwhile not v.text: time.sleep(0.01)\n"
                                         "print(v.stop_button.model_id, v.streaming)").split()
    assert streaming == "True"
    click = {"comm_id": stop_id, "data": {"method": "custom", "content": {"event": "click"}}}
    kernel.shell_channel.send(kernel.session.msg("comm_msg", click))  # what a click on Stop sends
    # Every iopub message from here on, whichever cell it names: the static copy comes from the answer's thread.
    msg_id = kernel.execute("a = v.wait(60)\nprint(a.finish_reason, len(a.token_ids), _mvlm_answer is a)\n"
                            "print(repr(a.text))", allow_stdin=True)
    messages = []
    while not ((msg := kernel.get_iopub_msg(timeout=60))["parent_header"].get("msg_id") == msg_id
               and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"):
        messages.append(msg)
    result = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    reason, tokens, same, text = result.split(maxsplit=3)
    assert reason == "stopped" and 0 < int(tokens) < LONG and same == "True", result
    # The widget's display was replaced by the static copy, sent to its display id (a front end updates the
    # answer's own output, whichever cell the message names).
    copies = [m["content"] for m in messages if m["msg_type"] == "update_display_data"]
    assert len(copies) == 1 and copies[0]["transient"]["display_id"], copies
    data = copies[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" not in data and "image/png" in data
    assert text_markdown(eval(text)) in data["text/markdown"] and "*stopped · " in data["text/markdown"]


def test_the_kernel_interrupt_stops_a_blocking_answer(kernel):
    # No widget front end listening (as under nbclient): the answer runs in the cell; ■ interrupts it.
    msg_id = kernel.execute(f"%%mvlm_ask picture.png --new --max-new-tokens {LONG}\nDescribe the picture.",
                            allow_stdin=False)
    # Interrupt once the answer is streaming (a fixed sleep raced a fast CI machine, which finished all LONG tokens).
    while not ((msg := kernel.get_iopub_msg(timeout=60))["parent_header"].get("msg_id") == msg_id
               and msg["msg_type"] == "update_display_data"):  # the saved text form, updated as tokens come
        pass
    kernel.manager.interrupt_kernel()
    while (reply := kernel.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != msg_id:
        pass
    assert reply["content"]["status"] == "ok", reply["content"]  # the answer ended; the cell did not fail
    result = execute(kernel, "print(_mvlm_answer.finish_reason, len(_mvlm_answer.token_ids))", interactive=False)
    reason, tokens = result.split()
    assert reason == "stopped" and 0 < int(tokens) < LONG, result


def test_misused_magics_get_our_help_in_a_real_kernel(kernel):
    """What a student types by mistake gets one line of our own, not IPython's inspector or its cell-magic hint."""
    def run(code: str) -> tuple[dict, list]:
        messages = []
        reply = kernel.execute_interactive(code, timeout=60, output_hook=messages.append)
        return reply["content"], messages

    for code, expected in [("%mvlm_ask What colour is the flower?", "is a cell magic"),
                           ("%%mvlm_ask", "write it on the lines below %%mvlm_ask")]:
        reply, messages = run(code)
        shown = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
        assert reply["status"] == "error" and reply["ename"] == "UsageError", reply
        assert expected in reply["evalue"] and shown.count("UsageError") == 1 and "Traceback" not in shown, shown
        assert not reply.get("payload") and "Did you mean" not in shown  # no pager, no hint
    reply, _ = run("%%mvlm_ask?")  # help on the magic still opens the pager, with a %% usage line
    pages = [p["data"]["text/plain"] for p in reply["payload"] if p["source"] == "page"]
    assert pages and "%%mvlm_ask [--each-line]" in pages[0], reply


def test_a_run_notebook_keeps_the_answer_as_markdown_text_and_picture(tmp_path, exported):
    """nbclient runs a notebook (as nbconvert --execute and papermill do); its saved answer is a static copy."""
    from nbclient import NotebookClient
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    shapes_picture().save(tmp_path / "picture.png")
    cells = ["%load_ext mvlm_magic\n%config MvlmMagics.font_scale = 1.5\n"
             f"%mvlm_load {exported('v2', 'fp32')} --precision f32",
             "%%mvlm_ask picture.png --max-new-tokens 8\nWhat is in the picture?",
             "print(repr(_mvlm_answer.text))\nview = get_ipython().magics_manager.registry['MvlmMagics'].view\n"
             "print(view.answer_box.value)"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")})
    [loaded] = notebook.cells[0].outputs  # the load's progress line replaced itself by the ready line
    assert loaded.output_type == "display_data" and " is ready in " in loaded.data["text/plain"], loaded
    printed = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    text = eval(printed.splitlines()[0])
    assert text and "calc(var(--jp-content-font-size1,14px) * 1.5)" in printed  # %config font_scale reached the view

    outputs = [o for o in notebook.cells[1].outputs if o.output_type == "display_data"]
    assert len(outputs) == 1, notebook.cells[1].outputs  # one output: the widget's, replaced by the copy
    data = outputs[0].data
    assert set(data) == {"text/markdown", "text/plain", "image/png"}
    markdown = data["text/markdown"]
    assert text_markdown(text) in markdown and "font-size:150%" in markdown
    assert "tokens/s" in markdown2html_mistune(markdown)  # the stats line, as a viewer renders it
    assert 'alt="the picture asked about"' in markdown
    assert text in data["text/plain"] and "tokens/s" in data["text/plain"]
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")


def test_an_answer_view_displayed_from_python_is_saved_as_its_static_copy(tmp_path, exported):
    """Issue 14: `view = AnswerView(...); display(view)` (or the view as a cell's last line) and an answer streamed
    into it, not through the magics: the saved notebook holds the answer in a non-widget output."""
    from nbclient import NotebookClient

    shapes_picture().save(tmp_path / "picture.png")
    cells = [f"from mvlm_magic.loader import load_engine\nengine = load_engine({str(exported('v2', 'fp32'))!r})\n"
             "from PIL import Image\nfrom mvlm_magic.widgets import AnswerView\npicture = Image.open('picture.png')",
             "view = AnswerView(image=picture, question='What is this?')\ndisplay(view)\n"
             "view.stream(engine.new_chat(picture).ask('What is this?', max_new_tokens=6));",
             "last = AnswerView()\nlast.stream(engine.new_chat(picture).ask('And this?', max_new_tokens=5))\nlast",
             "view.wait(60), last.wait(60)\nprint(repr(view.text))\nprint(repr(last.text))"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute(env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")})
    printed = "".join(o.get("text", "") for o in notebook.cells[3].outputs).splitlines()
    texts = [eval(line) for line in printed]
    assert all(texts), printed
    for cell, text in zip(notebook.cells[1:3], texts):
        outputs = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
        assert len(outputs) == 1, cell.outputs  # one output, the widget's, replaced by the copy
        data = outputs[0].data
        assert set(data) <= {"text/markdown", "text/plain", "image/png"}, data  # no widget view left
        assert text_markdown(text) in data["text/markdown"] and text in data["text/plain"]
        assert "tokens/s" in data["text/plain"] or "1 token" in data["text/plain"]
    assert "image/png" in notebook.cells[1].outputs[0].data
