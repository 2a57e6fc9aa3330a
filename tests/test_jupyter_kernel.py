"""The magics in a real ipykernel, driven like a front end: an interactive one (the cell returns while the
answer streams in a background thread, and a Stop click sent over the widget comm, as JupyterLab sends it,
stops it), and one that cannot click (the answer runs in the cell, and the kernel's interrupt stops it).
"""

from __future__ import annotations

import os
import time

import pytest

from conftest import shapes_picture

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
    result = execute(kernel, "a = v.wait(60)\nprint(a.finish_reason, len(a.token_ids), _mvlm_answer is a)")
    reason, tokens, same = result.split()
    assert reason == "stopped" and 0 < int(tokens) < LONG and same == "True", result


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
