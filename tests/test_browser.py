"""A real browser: JupyterLab (headless, on 127.0.0.1) runs examples/stop_an_answer.ipynb in Chromium.

What a student sees is checked from the page itself: the widgets render (not "Loading widget..." or their
text form), the answer grows in its box while Stop is enabled, a click on Stop ends it before its token
limit (the stats line then starts with "stopped", the button greys out, the kernel's `_mvlm_answer`
agrees), and a screenshot is saved to tests/artifacts/ (or $MVLM_ARTIFACTS).

The browser is Debian's chromium (/usr/bin/chromium, or $MVLM_CHROMIUM) driven by Playwright; Playwright's
own browser downloads are never used. Everything Jupyter writes (config, data, runtime, IPython, the
model cache) goes to temporary folders, and nothing is fetched from a network: the notebook loads the
tiny model exported by the conftest fixtures, named by $MVLM_EXAMPLE_MODEL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "stop_an_answer.ipynb"
CHROMIUM = os.environ.get("MVLM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MVLM_ARTIFACTS") or ROOT / "tests" / "artifacts")
TOKEN = "mvlm-browser-test"
MAX_NEW_TOKENS = 1500  # the ask cell's --max-new-tokens
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set MVLM_CHROMIUM)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (pip install jupyterlab)")

# --- JupyterLab ----------------------------------------------------------------------------------

# A news toast and an update check would ask the network and cover the page.
PAGE_CONFIG = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when pytest dies (Linux), so no server outlives a killed run."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def api(base: str, path: str, method: str = "GET", timeout: float = 5) -> bytes:
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {TOKEN}"},
                                     data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, exported):
    """A JupyterLab server whose root holds the notebook; yields its base URL. Shut down (kernels too) after."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    config = home / "config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
           "MVLM_CACHE": str(home / "cache"), "HF_HUB_OFFLINE": "1",
           "MVLM_EXAMPLE_MODEL": str(exported("v2", "fp32"))}
    env.pop("JUPYTER_PATH", None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = home / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=die_with_parent)

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log_tail()}")
            try:
                json.loads(api(base, "/api"))
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on {base}/api within 120 s:\n{log_tail()}")
                time.sleep(0.5)
        yield base
    finally:
        stop_server(server, base)
        if server.returncode not in (0, None, -signal.SIGTERM):
            print(f"jupyter lab exited with {server.returncode}:\n{log_tail()}")


def stop_server(server: subprocess.Popen, base: str) -> None:
    """Ask the server to shut down (it stops its kernels), then terminate it, then kill its process group."""
    if server.poll() is None:
        try:
            api(base, "/api/shutdown", method="POST")
            server.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            pass
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(10)


# --- the page --------------------------------------------------------------------------------------

NOTEBOOK_READY = """() => {
    const app = window.jupyterapp;
    const panel = app && app.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!(kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected'
              && panel.context && panel.context.isReady && panel.content.widgets.length > 0);
}"""

# The ask cell's answer view, read from the DOM: the AnswerView is HBox[thumbnail, VBox[question, answer,
# HBox[Stop, stats]]]; the answer's HTML is a pre-wrap div (widgets/messages.py text_html).
PROBE = """() => {
    const cell = [...document.querySelectorAll('.jp-CodeCell')].find(c => c.textContent.includes('%%mvlm_ask'));
    if (!cell) return {cell: false};
    const out = cell.querySelector('.jp-Cell-outputArea');
    const stop = [...out.querySelectorAll('button')].find(b => b.textContent.trim() === 'Stop');
    const answer = out.querySelector('.widget-html-content div[style*="pre-wrap"]');
    const controls = stop && stop.closest('.widget-hbox');
    const stats = controls && controls.querySelector('.widget-html-content');
    return {cell: true, widgets: out.querySelectorAll('.jupyter-widgets').length, output: out.innerText,
            stop: stop ? !stop.disabled : null, answer: answer ? answer.textContent : null,
            stats: stats ? stats.textContent : null, thumbnail: !!out.querySelector('.widget-image'),
            runAll: window.__runAll};
}"""

KERNEL_PRINT = """async (code) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const future = kernel.requestExecute({code, store_history: false});
    let text = '';
    future.onIOPub = msg => {
        if (msg.header.msg_type === 'stream') text += msg.content.text;
        if (msg.header.msg_type === 'error') text += msg.content.ename + ': ' + msg.content.evalue;
    };
    await future.done;
    return text;
}"""


@pytest.fixture
def page(lab):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.errors = []  # what the page reported, for failure messages
            page.on("pageerror", lambda error: page.errors.append(f"pageerror: {error}"))
            page.on("console", lambda msg: page.errors.append(f"console.{msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            yield page
        finally:
            browser.close()


def wait_until(check, timeout: float, what: str, page, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; page said:\n"
                        + "\n".join(page.errors[-20:]))
        time.sleep(interval)


def notebook_text(page) -> str:
    return page.evaluate("() => document.querySelector('.jp-Notebook').innerText")


def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def test_the_answer_streams_into_the_widget_and_stop_stops_it(lab, page):
    started = time.monotonic()
    page.goto(f"{lab}/lab/tree/{NOTEBOOK.name}?token={TOKEN}")
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000, polling=250)
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path") == NOTEBOOK.name
    # More room for the answer in the screenshot: fold the file browser away.
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

    # Run All: the promise resolves when every cell has run; the ask cell returns while its answer streams.
    page.evaluate("""() => { window.__runAll = 'running';
        window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            ok => { window.__runAll = ok; }, error => { window.__runAll = String(error); }); }""")

    # While the answer streams: its text grows in the widget, Stop is enabled, and Run All is over (the
    # ask cell returned at once; the answer is generated in the kernel's background thread).
    samples = []  # (characters shown, stats line, Run All finished) while Stop was enabled

    def streamed_enough():
        probe = page.evaluate(PROBE)
        if probe.get("runAll") not in ("running", True):
            pytest.fail(f"Run All failed ({probe.get('runAll')}); the notebook shows:\n{notebook_text(page)}")
        if probe.get("stop") is False and "tokens/s" in (probe.get("stats") or ""):
            pytest.fail(f"the answer finished before it could be stopped: {probe}")
        if probe.get("stop") and probe.get("answer") and (not samples or len(probe["answer"]) > samples[-1][0]):
            samples.append((len(probe["answer"]), probe["stats"], probe["runAll"]))
        return len(samples) >= 3 and samples[-1][2] is True

    try:
        wait_until(streamed_enough, 180, "the answer to stream into the widget", page)
    except BaseException:
        save_screenshot(page, "browser-failed.png")
        raise
    sampled_at = time.monotonic()
    assert all(stats == "streaming…" for _, stats, _ in samples), samples
    probe = page.evaluate(PROBE)
    assert probe["widgets"] > 0 and probe["thumbnail"], probe
    assert "Loading widget" not in probe["output"] and "Error displaying widget" not in probe["output"], probe
    save_screenshot(page, "browser-streaming.png")

    # Stop: the answer ends where it is, well before its token limit.
    stop = page.locator(".jp-CodeCell", has_text="%%mvlm_ask").locator("button", has_text="Stop")
    before = len(page.evaluate(PROBE)["answer"])
    stop.click()
    final = wait_until(lambda: (p := page.evaluate(PROBE))["stop"] is False and "tokens/s" in (p["stats"] or "") and p,
                       60, "the answer to end after Stop", page)
    assert final["stats"].startswith("stopped · "), final["stats"]
    assert len(final["answer"]) >= before, "text shown before Stop was lost"
    tokens = int(re.search(r"(\d+) tokens$", final["stats"]).group(1))
    assert 0 < tokens < MAX_NEW_TOKENS, final["stats"]
    assert stop.is_disabled()
    reason = page.evaluate(KERNEL_PRINT, "print(_mvlm_answer.finish_reason, len(_mvlm_answer.token_ids))")
    assert reason.split() == ["stopped", str(tokens)], reason

    # Every widget in the notebook rendered (the load panel too), none fell back to its text form.
    text = notebook_text(page)
    assert "Loading widget" not in text and "Error displaying widget" not in text
    loaded = page.locator(".jp-CodeCell", has_text="%mvlm_load").locator(".jp-Cell-outputArea")
    assert loaded.locator(".jupyter-widgets").count() > 0 and "is ready" in loaded.inner_text()
    page.locator(".jp-CodeCell", has_text="%%mvlm_ask").scroll_into_view_if_needed()
    save_screenshot(page, "browser.png")
    print(f"streamed {[n for n, _, _ in samples]} characters before Stop, {tokens} tokens in all; "
          f"{time.monotonic() - started:.1f} s in the browser "
          f"({time.monotonic() - sampled_at:.1f} s after the samples)")
