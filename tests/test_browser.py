"""A real browser: JupyterLab (headless, on 127.0.0.1) runs examples/stop_an_answer.ipynb in Chromium.

What a student sees is checked from the page itself: the widgets render (not "Loading widget..." or their
text form), the answer of the bundled model, paced by the notebook's `stream_pace`, grows in its box while
Stop is enabled and neither Stop nor the status line moves, a click on Stop ends it mid-answer (the widget
gives way to a static copy whose stats line starts with "stopped", Stop is gone, the kernel's `_mvlm_answer`
agrees), and a screenshot is saved to tests/artifacts/ (or $MVLM_ARTIFACTS). The same with
`%mvlm_load --server` against a real `mvlm serve` of the bundled model: right answers, a follow-up, Stop.
A second notebook is saved, its kernel shut down and the page reloaded: the answers are still there, the
magic's and one of an AnswerView displayed from Python; its stats and error lines keep a 4.5:1 contrast in
the light and the dark theme. In an AskPanel, in JupyterLab and in Notebook 7: Enter asks, Shift+Enter is a new
line, the question box stays put while the answer streams and when the picture changes, and a new picture starts a
new conversation; its saved notebook, opened untrusted as it is and as its handout, shows the conversation alone.

The browser is Debian's chromium (/usr/bin/chromium, or $MVLM_CHROMIUM) driven by Playwright; Playwright's
own browser downloads are never used. Everything Jupyter writes (config, data, runtime, IPython, the
model cache) goes to temporary folders, and nothing is fetched from a network: the example notebooks load the
bundled model (exported into the tests' cache), the notebooks the tests write the tiny model exported by the
conftest fixtures, named by $MVLM_TEST_MODEL.
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
SEED = 1000000190  # stop_an_answer.ipynb's busy picture: the bundled model describes it in 67 tokens
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
def lab(tmp_path_factory, exported, cache_dir):
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
           "MVLM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",  # the bundled model's export is shared
           "MVLM_TEST_MODEL": str(exported("v2", "fp32"))}
    env.pop("JUPYTER_PATH", None)
    env.pop("MVLM_EXAMPLE_MODEL", None)  # the example notebooks run on the bundled model, as a class runs them
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = home / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
               "--LabApp.expose_app_in_browser=True", "--JupyterNotebookApp.expose_app_in_browser=True",
               "--LabApp.news_url=None",
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

# The ask cell's answer view, read from the DOM: the AnswerView is HBox[thumbnail, VBox[question, HBox[Stop,
# stats], answer]]; the answer's HTML is a pre-wrap div (widgets/messages.py text_html). Once the answer has
# ended, the output is its static copy: rendered Markdown. Positions are relative to the cell (scroll-proof).
PROBE = """() => {
    const cell = [...document.querySelectorAll('.jp-CodeCell')].find(c => c.textContent.includes('%%mvlm_ask'));
    if (!cell) return {cell: false};
    const out = cell.querySelector('.jp-Cell-outputArea');
    const stop = [...out.querySelectorAll('button')].find(b => b.textContent.trim() === 'Stop');
    const answer = out.querySelector('.widget-html-content div[style*="pre-wrap"]');
    const controls = stop && stop.closest('.widget-hbox');
    const stats = controls && controls.querySelector('.widget-html-content');
    const markdown = out.querySelector('.jp-RenderedMarkdown');
    const top = element => element ? element.getBoundingClientRect().top - cell.getBoundingClientRect().top : null;
    const thumbnail = out.querySelector('img');
    return {cell: true, widgets: out.querySelectorAll('.jupyter-widgets').length, output: out.innerText,
            stop: stop ? !stop.disabled : null, answer: answer ? answer.textContent : null,
            stats: stats ? stats.textContent : null, thumbnail: thumbnail ? thumbnail.alt : null,
            stopY: top(stop), statsY: top(stats), ariaLive: answer ? answer.getAttribute('aria-live') : null,
            answerPx: answer ? parseFloat(getComputedStyle(answer).fontSize) : null,
            notebookPx: parseFloat(getComputedStyle(document.body).getPropertyValue('--jp-content-font-size1')),
            markdown: markdown ? markdown.innerText : null, runAll: window.__runAll};
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


def save_and_shut_down(page, lab: str, name: str) -> None:
    """Save the open notebook `name` and shut its kernel down: a reload then shows what the saved file keeps."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    wait_until(lambda: not json.loads(api(lab, "/api/kernels")) or name not in api(lab, "/api/sessions").decode(),
               60, "the kernel to shut down", page)


def notebook_text(page) -> str:
    return page.evaluate("() => document.querySelector('.jp-Notebook').innerText")


def upload(lab: str, name: str, notebook) -> None:
    """Put a notebook into the lab's root: its JSON, or code cells (a list of sources) in a new Python notebook."""
    import nbformat

    if isinstance(notebook, list):
        notebook = json.loads(nbformat.writes(nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(c) for c in notebook],
            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})))
    body = json.dumps({"type": "notebook", "format": "json", "content": notebook})
    request = urllib.request.Request(f"{lab}/api/contents/{name}", method="PUT", data=body.encode(),
                                      headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


def described(seed: int) -> str:
    """What the bundled model says to "Describe the picture in detail." about picture `seed` (what it was taught)."""
    from mvlm_magic.demo import conversations, shapes

    return conversations.describe_in_detail(shapes.make_scene(seed).things)


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
        if "first token" in (probe.get("markdown") or ""):
            pytest.fail(f"the answer finished before it could be stopped: {probe}")
        if probe.get("stop") and probe.get("answer") and (not samples or len(probe["answer"]) > samples[-1][0]):
            samples.append((len(probe["answer"]), probe["stats"], probe["runAll"], probe["stopY"], probe["statsY"]))
        return len(samples) >= 3 and samples[-1][2] is True

    try:
        wait_until(streamed_enough, 180, "the answer to stream into the widget", page)
    except BaseException:
        save_screenshot(page, "browser-failed.png")
        raise
    sampled_at = time.monotonic()
    assert all(stats == "streaming…" for _, stats, *_ in samples), samples
    # Stop and the status line stay where they are while the text grows below them: a click never misses.
    assert len({(stop_y, stats_y) for *_, stop_y, stats_y in samples}) == 1, samples
    probe = page.evaluate(PROBE)
    assert probe["widgets"] > 0 and probe["thumbnail"] == "the picture asked about", probe
    assert probe["ariaLive"] == "polite", probe  # a screen reader reads the answer as it grows
    assert probe["answerPx"] >= probe["notebookPx"] > 0, probe  # answer text at least the notebook's text size
    assert "Loading widget" not in probe["output"] and "Error displaying widget" not in probe["output"], probe
    save_screenshot(page, "browser-streaming.png")

    # Stop: the answer ends where it is, well before its token limit.
    stop = page.locator(".jp-CodeCell", has_text="%%mvlm_ask").locator("button", has_text="Stop")
    before = " ".join(page.evaluate(PROBE)["answer"].split())
    stop.click()
    # The widget gives way to the static copy (what a saved notebook keeps): the answer, then the stats line.
    final = wait_until(lambda: "first token" in ((p := page.evaluate(PROBE))["markdown"] or "") and p,
                       60, "the answer to end after Stop", page)
    stats = final["markdown"].strip().splitlines()[-1]
    assert stats.startswith("stopped · "), final["markdown"]
    assert before in " ".join(final["markdown"].split()), "text shown before Stop was lost"
    tokens = int(re.search(r"(\d+) tokens? ·", stats + " ·").group(1))
    assert 0 < tokens < 67, stats  # stopped mid-answer
    assert final["stop"] is None and stop.count() == 0  # Stop is gone, not a pale button
    assert final["thumbnail"] == "the picture asked about", final
    reason = page.evaluate(KERNEL_PRINT, "print(_mvlm_answer.finish_reason, len(_mvlm_answer.token_ids), "
                                         "repr(_mvlm_answer.text))")
    finish, count, text = reason.split(maxsplit=2)
    assert [finish, count] == ["stopped", str(tokens)], reason
    full = described(SEED)  # the right answer, cut short: a strict beginning of the whole description
    assert full.startswith(eval(text)) and len(eval(text)) < len(full), (text, full)

    # Every widget in the notebook rendered, none fell back to its text form; the load panel gave way to its line.
    text = notebook_text(page)
    assert "Loading widget" not in text and "Error displaying widget" not in text
    loaded = page.locator(".jp-CodeCell", has_text="%mvlm_load").locator(".jp-Cell-outputArea")
    assert loaded.locator(".jupyter-widgets").count() == 0 and "is ready" in loaded.inner_text()
    page.locator(".jp-CodeCell", has_text="%%mvlm_ask").scroll_into_view_if_needed()
    save_screenshot(page, "browser.png")
    print(f"streamed {[n for n, *_ in samples]} characters before Stop, {tokens} tokens in all; "
          f"{time.monotonic() - started:.1f} s in the browser "
          f"({time.monotonic() - sampled_at:.1f} s after the samples)")


# --- a saved answer, in both themes ---------------------------------------------------------------

SAVED = "saved_answer.ipynb"
SAVED_CELLS = [
    "import os\nMODEL = os.environ['MVLM_TEST_MODEL']\n%load_ext mvlm_magic\n%mvlm_load {MODEL} --precision f32",
    "from PIL import Image, ImageDraw\npicture = Image.new('RGB', (320, 220), (225, 235, 250))\n"
    "ImageDraw.Draw(picture).ellipse((30, 40, 130, 140), fill=(220, 40, 40))\npicture",
    "%%mvlm_ask --max-new-tokens 24 --show-tokens\nWhat is in the picture?",
    # Two answer views as the widgets show them (inside a box they are no outputs of their own: they stay widgets):
    # a finished answer with its stats, after the one above (it waits its turn), and one whose stream fails, with
    # its error line.
    "import ipywidgets\nfrom mvlm_magic.widgets import AnswerView\n"
    "magics = get_ipython().magics_manager.registry['MvlmMagics']\n"
    "class Failing:\n"
    "    def __iter__(self):\n        yield 'a few words '\n        raise RuntimeError('the device went away')\n"
    "    def stop(self):\n        pass\n"
    "finished, failed = AnswerView(image=picture), AnswerView()\ndisplay(ipywidgets.VBox([finished, failed]))\n"
    "finished.stream(magics.engine.new_chat(picture).ask('What is this?', max_new_tokens=4), lock=magics.turn)\n"
    "failed.stream(Failing());",
    # Issue 14: an answer view displayed from Python, not through the magic: its output ends as a static copy too.
    "view = AnswerView(image=picture, question='What is it?')\ndisplay(view)\n"
    "view.stream(magics.engine.new_chat(picture).ask('What is it?', max_new_tokens=5), lock=magics.turn);",
]

# The contrast of each element's text against what is behind it (WCAG 2: relative luminance of sRGB colours,
# semi-transparent colours composited over the layers below, down to the white canvas).
CONTRASTS = """(targets) => {
    const rgba = text => {
        const n = text.match(/[\\d.]+/g).map(Number);
        return [n[0], n[1], n[2], n.length > 3 ? n[3] : 1];
    };
    const over = (top, below) => [0, 1, 2].map(i => top[i] * top[3] + below[i] * (1 - top[3]));
    const luminance = c => c.map(v => v / 255).map(v => v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
                           .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
    const result = {};
    const cells = window.jupyterapp.shell.currentWidget.content.node.querySelectorAll('.jp-CodeCell');
    for (const [name, [cell, selector]] of Object.entries(targets)) {
        const element = cells[cell] && cells[cell].querySelector('.jp-Cell-outputArea ' + selector);
        if (!element) { result[name] = null; continue; }
        const layers = [];
        for (let node = element; node; node = node.parentElement) {
            const colour = rgba(getComputedStyle(node).backgroundColor);
            if (colour[3] > 0) layers.push(colour);
            if (colour[3] >= 1) break;
        }
        const background = layers.reverse().reduce((below, top) => over(top, below), [255, 255, 255]);
        const text = over(rgba(getComputedStyle(element).color), background);
        const [light, dark] = [luminance(text), luminance(background)].sort((a, b) => b - a);
        result[name] = {ratio: (light + 0.05) / (dark + 0.05), text: element.textContent.trim(),
                        color: getComputedStyle(element).color, background};
    }
    return result;
}"""

CELL = "window.jupyterapp.shell.currentWidget.content.node.querySelectorAll('.jp-CodeCell')"  # this notebook's
CONTRAST_TARGETS = {  # (cell, selector): the ask cell's static copy, the finished view's stats, the failed one's error
    "static stats": (2, ".jp-RenderedMarkdown em"),
    "tinted token": (2, ".jp-RenderedMarkdown span[title]"),  # --show-tokens: a token tinted by its probability
    "stats": (3, 'span[style*="--jp-content-font-color2"]'),
    "error": (3, 'span[style*="--jp-error-color1"]'),
}


def set_theme(page, theme: str) -> None:
    page.evaluate("(theme) => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", theme)
    page.wait_for_function("(theme) => document.body.dataset.jpThemeName === theme", arg=theme, timeout=60_000)
    page.wait_for_timeout(500)  # the theme's stylesheet applies after the attribute changes


def test_a_saved_answer_survives_a_reload_and_reads_well_in_both_themes(lab, page):
    upload(lab, SAVED, SAVED_CELLS)

    page.goto(f"{lab}/lab/tree/{SAVED}?token={TOKEN}&reset")  # reset: no tabs left over from another test
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000, polling=250)
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path") == SAVED
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    ended = f"""() => {{ const cells = {CELL};
        return cells.length === 5 && !!cells[2].querySelector('.jp-RenderedMarkdown em')
            && cells[3].textContent.includes('tokens/s') && cells[3].textContent.includes('device went away')
            && !!cells[4].querySelector('.jp-RenderedMarkdown em'); }}"""
    try:
        page.wait_for_function(ended, timeout=180_000, polling=250)
    except BaseException:
        save_screenshot(page, "browser-saved-failed.png")
        print(page.evaluate(f"() => [...{CELL}].map(c => c.textContent.slice(-300))"))
        raise
    page.evaluate(f"() => {CELL}[3].scrollIntoView()")

    for theme in ("JupyterLab Dark", "JupyterLab Light"):  # the light theme last: the lab's setting stays light
        set_theme(page, theme)
        contrasts = page.evaluate(CONTRASTS, CONTRAST_TARGETS)
        assert all(contrasts.values()), contrasts
        assert "tokens/s" in contrasts["stats"]["text"] and "device went away" in contrasts["error"]["text"], contrasts
        for name, measured in contrasts.items():
            assert measured["ratio"] >= 4.5, (theme, name, measured)
        print(theme, {name: round(measured["ratio"], 2) for name, measured in contrasts.items()})
        if theme == "JupyterLab Dark":
            save_screenshot(page, "browser-dark.png")

    answer = page.evaluate(KERNEL_PRINT, "print(_mvlm_answer.text, end='')")
    assert answer.strip()
    displayed = page.evaluate(KERNEL_PRINT, "print(view.text, end='')")  # the view displayed from Python
    assert displayed.strip()
    before_reload = page.evaluate(f"() => {CELL}[4].querySelector('.jp-Cell-outputArea').innerText")
    assert " ".join(displayed.split()) in " ".join(before_reload.split()), before_reload
    save_and_shut_down(page, lab, SAVED)

    # Reopened without the kernel that made it (a fresh one has no widgets): the answer is still there.
    saved = json.loads(api(lab, f"/api/contents/{SAVED}"))["content"]
    assert "text/markdown" in saved["cells"][2]["outputs"][0]["data"]
    # The view displayed from Python: one output, with the answer in a non-widget form only.
    [kept] = saved["cells"][4]["outputs"]
    assert set(kept["data"]) == {"text/markdown", "text/plain", "image/png"}, kept
    assert displayed in kept["data"]["text/plain"] and "Q: What is it?" in kept["data"]["text/plain"], kept
    page.reload()
    reopened = (f"() => !!(window.jupyterapp && window.jupyterapp.shell.currentWidget"
                f" && window.jupyterapp.shell.currentWidget.content && {CELL}.length === 5"
                f" && {CELL}[2].querySelector('.jp-RenderedMarkdown')"
                f" && {CELL}[4].querySelector('.jp-RenderedMarkdown'))")
    page.wait_for_function(reopened, timeout=120_000, polling=250)
    page.evaluate(f"() => {CELL}[2].scrollIntoView()")
    shown = page.evaluate(f"() => {CELL}[2].querySelector('.jp-Cell-outputArea').innerText")
    assert " ".join(answer.split()) in " ".join(shown.split()), shown
    # The tokens keep their tint and hover text (the top alternatives) in the saved copy, kernel or not.
    tokens = page.evaluate(f"""() => [...{CELL}[2].querySelectorAll('.jp-RenderedMarkdown span[title]')]
        .map(s => [s.title, getComputedStyle(s).backgroundColor])""")
    assert len(tokens) >= 2 and all(title.startswith("p ") and "\n" in title for title, _ in tokens), tokens
    assert any(colour.startswith("rgba(255, 140, 0") for _, colour in tokens), tokens
    assert "first token" in shown and "Error displaying widget" not in shown, shown
    loaded = page.evaluate(f"() => {CELL}[0].querySelector('.jp-Cell-outputArea').innerText")
    assert "is ready" in loaded and "Error displaying widget" not in loaded, loaded  # %mvlm_load's line, kept
    alt = page.evaluate(f"() => [...{CELL}[2].querySelectorAll('.jp-Cell-outputArea img')].map(i => i.alt)")
    save_screenshot(page, "browser-reloaded.png")
    # The view displayed from Python (issue 14 saw "Loading widget..." here): its answer and stats, no widget.
    page.evaluate(f"() => {CELL}[4].scrollIntoView()")
    shown = page.evaluate(f"() => {CELL}[4].querySelector('.jp-Cell-outputArea').innerText")
    assert " ".join(displayed.split()) in " ".join(shown.split()) and "What is it?" in shown, shown
    assert "first token" in shown and "Loading widget" not in shown and "Error displaying widget" not in shown, shown
    save_screenshot(page, "browser-reloaded-python-view.png")
    print(f"after the reload the answer shows, with thumbnails {alt}")


# --- a model on a server (issue 17) ----------------------------------------------------------------

SERVED = "served.ipynb"

# An answer cell of this notebook as the page shows it: the live widget (Stop, streaming text) or its static copy.
ANSWER_CELL = f"""(index) => {{
    const cell = {CELL}[index];
    const out = cell && cell.querySelector('.jp-Cell-outputArea');
    if (!out) return {{}};
    const stop = [...out.querySelectorAll('button')].find(b => b.textContent.trim() === 'Stop');
    const answer = out.querySelector('.widget-html-content div[aria-live]');
    const markdown = out.querySelector('.jp-RenderedMarkdown');
    return {{stop: stop ? !stop.disabled : null, answer: answer ? answer.textContent : null,
            markdown: markdown ? markdown.innerText : null, output: out.innerText}};
}}"""


@pytest.fixture(scope="module")
def nano_server(cache_dir, tmp_path_factory):
    """`mvlm serve` of the bundled model in its own process on 127.0.0.1 (exported into the tests' cache)."""
    from test_serve import running_server

    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(["nano", "--cache-dir", str(cache_dir)], log) as url:
        yield url


def answer_lines(markdown: str) -> list[str]:
    """A static copy's lines as the page shows them: the answer, then its stats line."""
    return [line.strip() for line in markdown.splitlines() if line.strip()]


def test_the_magics_ask_a_real_server_in_the_browser(lab, page, nano_server):
    """`%mvlm_load --server URL` then `%%mvlm_ask` about a picture, in JupyterLab: the answers stream into the widget
    from a real `mvlm serve` of the bundled model and are the right ones, a follow-up continues the conversation,
    and Stop ends a long (paced) answer mid-way."""
    from mvlm_magic.demo import shapes

    scene = shapes.make_scene(SEED)
    cross = next(t for t in scene.things if t.shape == "cross")
    upload(lab, SERVED, [f"%load_ext mvlm_magic\n%mvlm_load --server {nano_server}",
                         f"from mvlm_magic.demo import shapes\npicture, _ = shapes.picture({SEED})\npicture",
                         "%%mvlm_ask\nWhat colour is the cross?",
                         "%%mvlm_ask\nHow many squares are there?",  # a follow-up: the server gets the history
                         "%config MvlmMagics.stream_pace = 8",
                         "%%mvlm_ask --new --max-new-tokens 512\nDescribe the image in detail."])  # server's most: 1024
    page.goto(f"{lab}/lab/tree/{SERVED}?token={TOKEN}&reset")
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000, polling=250)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    probe = lambda index: page.evaluate(ANSWER_CELL, index)  # noqa: E731

    samples = []  # characters of the long answer shown while its Stop was enabled

    def streamed_enough():
        described_cell = probe(5)
        if "⚠" in (described_cell.get("output") or ""):
            pytest.fail(f"the long answer failed: {described_cell['output']}")
        if "first token" in (described_cell.get("markdown") or ""):
            pytest.fail(f"the answer finished before it could be stopped: {described_cell}")
        if described_cell.get("stop") and described_cell.get("answer") and (
                not samples or len(described_cell["answer"]) > samples[-1]):
            samples.append(len(described_cell["answer"]))
        return len(samples) >= 3

    try:
        wait_until(streamed_enough, 180, "the long answer to stream from the server", page)
    except BaseException:
        save_screenshot(page, "browser-server-failed.png")
        print(notebook_text(page)[-3000:])
        raise
    loaded = probe(0)["output"]
    assert "ready: nano" in loaded and "server" in loaded, loaded
    colour, count = answer_lines(probe(2)["markdown"]), answer_lines(probe(3)["markdown"])
    assert colour[0] == cross.colour and "first token" in colour[-1], colour
    assert count[0] == str(scene.count("square")) and "picture already seen" in count[-1], count
    page.evaluate(f"() => {CELL}[5].scrollIntoView({{block: 'center'}})")
    save_screenshot(page, "browser-server-streaming.png")

    page.locator(".jp-CodeCell").nth(5).locator("button", has_text="Stop").click()
    final = wait_until(lambda: "first token" in ((p := probe(5))["markdown"] or "") and p, 60,
                       "the long answer to end after Stop", page)
    lines = answer_lines(final["markdown"])
    assert lines[-1].startswith("stopped · ") and final["stop"] is None, lines
    shown = page.evaluate(KERNEL_PRINT, "print(_mvlm_answer.finish_reason, repr(_mvlm_answer.text))")
    finish, text = shown.split(maxsplit=1)
    full = described(SEED)
    assert finish == "stopped" and full.startswith(eval(text)) and 0 < len(eval(text)) < len(full), (shown, full)
    assert "Loading widget" not in notebook_text(page) and "Error displaying widget" not in notebook_text(page)
    save_screenshot(page, "browser-server.png")
    print(f"from {nano_server}: {colour[0]!r}, {count[0]!r}, then {samples} characters streamed before Stop: "
          f"{eval(text)!r} ({lines[-1]})")


SEE_INSIDE = ROOT / "examples" / "see_inside.ipynb"
SEE_INSIDE_DONE = f"""() => {{ const cells = {CELL};
    return cells.length >= 10 && [...cells].some(c => c.textContent.includes('score:'))
        && [...cells].some(c => c.querySelector('.jp-RenderedMarkdown table')
                               && c.textContent.includes('agrees')); }}"""


def test_see_inside_shows_its_four_views_in_the_browser(lab, page):
    """examples/see_inside.ipynb in JupyterLab: the model's view with its attention switches when a token of the
    answer is clicked; tinted tokens; the many-pictures table; the formats table."""
    upload(lab, SEE_INSIDE.name, json.loads(SEE_INSIDE.read_text()))
    page.goto(f"{lab}/lab/tree/{SEE_INSIDE.name}?token={TOKEN}&reset")
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000, polling=250)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_function(SEE_INSIDE_DONE, timeout=300_000, polling=500)
    except BaseException:
        save_screenshot(page, "browser-see-inside-failed.png")
        print(notebook_text(page)[-3000:])
        raise
    cell = page.locator(".jp-CodeCell", has_text="model_view(engine")
    cell.scroll_into_view_if_needed()
    copy = cell.locator("[class*='mvlm-copy-']")  # the view's saved copy: hidden beside the live view
    assert copy.count() == 1 and not copy.is_visible()
    cell = cell.locator("[class*='mvlm-live-']")
    looked = cell.locator("img[alt*='lit where the answer looked']")
    wait_until(lambda: looked.count() == 1, 60, "the model view with where the answer looked", page)
    before = looked.get_attribute("src")
    cell.locator("select").nth(1).select_option(label="all heads")  # from head 0 of the last layer to all its heads
    wait_until(lambda: looked.get_attribute("src") != before, 30, "the map of all heads", page)
    assert cell.locator("button", has_text="red").count() == 1  # the answer's token, to click for its own map
    assert cell.locator("img[alt='the original picture']").count() == 1
    save_screenshot(page, "browser-see-inside-attention.png")
    tokens = page.locator(".jp-CodeCell", has_text="--show-tokens").locator(".jp-RenderedMarkdown span[title]")
    assert tokens.count() >= 5 and tokens.first.get_attribute("title").startswith("p ")
    table = page.locator(".jp-CodeCell", has_text="%%mvlm_ask stars").locator(".jp-RenderedMarkdown table")
    assert table.locator("tbody tr").count() == 6 and table.locator("img").count() == 6
    compared = page.locator(".jp-CodeCell", has_text="%mvlm_compare").locator(".jp-RenderedMarkdown table")
    assert compared.locator("tbody tr").count() == 2 and "same answer" in compared.inner_text()
    compared.scroll_into_view_if_needed()
    save_screenshot(page, "browser-see-inside-tables.png")

    # Saved and reopened without its kernel: the model view's copy (both pictures, the lit map) in its place.
    save_and_shut_down(page, lab, SEE_INSIDE.name)
    page.reload()
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000, polling=250)
    cell = page.locator(".jp-CodeCell", has_text="model_view(engine")
    cell.scroll_into_view_if_needed()
    wait_until(lambda: copy.is_visible(), 30, "the model view's saved copy", page)
    page.wait_for_timeout(500)  # the widget's renderer gives up once the (kernel-less) widget manager is restored
    shown = cell.locator(".jp-Cell-outputArea").inner_text()
    assert "144 image tokens" in shown and "Error displaying widget" not in shown and "Loading widget" not in shown
    assert copy.locator("img[alt*='lit where the answer looked']").is_visible()
    assert copy.locator("img[alt='the original picture']").is_visible()
    save_screenshot(page, "browser-see-inside-reopened.png")


# --- the ask panel -----------------------------------------------------------------------------------

PANEL = "ask_panel.ipynb"
PANEL_CELLS = [
    "import os\nMODEL = os.environ['MVLM_TEST_MODEL']\n%load_ext mvlm_magic\n%mvlm_load {MODEL} --precision f32",
    "from PIL import Image, ImageDraw\npicture = Image.new('RGB', (320, 220), (225, 235, 250))\n"
    "ImageDraw.Draw(picture).ellipse((30, 40, 130, 140), fill=(220, 40, 40))\n"
    "other = Image.new('RGB', (220, 320), (40, 40, 40))",
    "from mvlm_magic.widgets import AskPanel\nengine = get_ipython().magics_manager.registry['MvlmMagics'].engine\n"
    f"panel = AskPanel(engine, namespace=globals(), image=picture, max_new_tokens={MAX_NEW_TOKENS})\npanel",
]

# The panel as the page shows it; positions relative to its cell (scroll-proof).
PANEL_PROBE = f"""() => {{
    const cell = {CELL}[2];
    const out = cell && cell.querySelector('.jp-Cell-outputArea [class*="mvlm-live-"]');  // the panel, not its copy
    const box = out && out.querySelector('.mvlm-question textarea');
    if (!box) return {{box: false}};
    const stop = [...out.querySelectorAll('button')].find(b => b.textContent.trim() === 'Stop' && b.offsetParent);
    const ask = [...out.querySelectorAll('button')].find(b => b.textContent.trim() === 'Ask' && b.offsetParent);
    const select = out.querySelector('select');
    const scroll = history => {{  // does the history overflow its box, and is the end of the newest answer in view?
        const answers = history.querySelectorAll('div[aria-live]'), box = history.getBoundingClientRect();
        const end = answers.length ? answers[answers.length - 1].getBoundingClientRect().bottom : box.top;
        return {{overflows: history.scrollHeight > history.clientHeight + 1,
                 endInView: end >= box.top && end <= box.bottom + 1}};
    }};
    const top = element => element ? element.getBoundingClientRect().top - cell.getBoundingClientRect().top : null;
    return {{box: true, value: box.value, boxY: top(box), stopY: top(stop), askY: top(ask),
            stop: stop ? !stop.disabled : null, ask: ask ? !ask.disabled : null,
            picked: select && select.selectedIndex >= 0 ? select.options[select.selectedIndex].textContent : null,
            answers: [...out.querySelectorAll('div[aria-live]')].map(a => a.textContent),
            pictures: [...out.querySelectorAll('img[alt="the picture asked about"]')].map(i => i.src),
            headings: [...out.querySelectorAll('.mvlm-conversation')].map(h => h.innerText),
            labels: [...out.querySelectorAll('.widget-html-content code')].map(c => c.textContent),
            scroll: scroll(out.querySelector('.mvlm-history')), text: out.innerText}};
}}"""


# The same server serves Notebook 7 where it is installed; it listens for shortcuts differently from JupyterLab
# (capturing on the document), which a widget's own key handling cannot hold off.
FRONT_ENDS = {"jupyterlab": "lab/tree/{}?reset&", "notebook7": "notebooks/{}?"}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_the_ask_panel_asks_on_enter_and_keeps_its_question_box_in_place(lab, page, front_end, tmp_path):
    if front_end == "notebook7":
        pytest.importorskip("notebook", minversion="7", reason="Notebook 7 is not installed (pip install notebook)")
    name = f"{front_end}_{PANEL}"
    upload(lab, name, PANEL_CELLS)
    page.goto(f"{lab}/{FRONT_ENDS[front_end].format(name)}token={TOKEN}")
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000, polling=250)
    if front_end == "jupyterlab":
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    probe = lambda: page.evaluate(PANEL_PROBE)  # noqa: E731
    try:
        shown = wait_until(lambda: (p := probe())["box"] and p["picked"] and p, 180, "the ask panel", page)
    except BaseException:
        save_screenshot(page, f"browser-panel-{front_end}-failed.png")
        raise
    # The dropdown names the picture in use, once (no note under it repeats the name).
    assert shown["picked"] == "picture" and shown["labels"] == [], shown

    box = page.locator(".mvlm-question textarea")
    box.click()
    page.keyboard.type("What is this?")
    page.keyboard.press("Shift+Enter")  # a new line, not a question
    page.keyboard.type("Be brief.")
    assert box.input_value() == "What is this?\nBe brief." and not probe()["answers"]
    page.keyboard.press("Enter")

    samples = []  # (characters shown, question box y, Stop y, Ask shown) while the answer grows

    def streamed_enough():
        p = probe()
        if p["stop"] and p["answers"] and (not samples or len(p["answers"][-1]) > samples[-1][0]):
            samples.append((len(p["answers"][-1]), p["boxY"], p["stopY"], p["ask"]))
        return len(samples) >= 3

    wait_until(streamed_enough, 120, "the answer to stream into the panel", page)
    # The box and Stop never moved; Stop stands in Ask's place while the answer streams.
    assert len({tuple(sample[1:]) for sample in samples}) == 1 and samples[0][3] is None, samples
    assert probe()["value"] == "", probe()  # asked: the box is empty for the next question
    page.locator(".jp-CodeCell").nth(2).locator("button:visible", has_text="Stop").click()
    ended = wait_until(lambda: (p := probe())["ask"] and p["stop"] is None and p, 60, "the answer to end after Stop",
                       page)
    assert ended["stop"] is None and ended["askY"] == samples[0][2], (ended, samples)  # Stop gone, Ask in its place
    asked = page.evaluate(KERNEL_PRINT, "print(repr(panel.view.question), panel.answer.finish_reason)")
    assert asked.split() == ["'What", "is", "this?\\nBe", "brief.'", "stopped"], asked
    page.evaluate(f"() => {CELL}[2].querySelector('.mvlm-question').scrollIntoView({{block: 'center'}})")
    save_screenshot(page, f"browser-panel-{front_end}.png")

    # Another picture (of another shape): a new conversation, shown by a heading; the question box stays put;
    # the next answer has that picture beside it.
    page.locator(".jp-CodeCell").nth(2).locator("select").select_option(label="other")
    picked = wait_until(lambda: (p := probe())["headings"] and p, 30, "the new conversation's heading", page)
    assert (picked["boxY"], picked["askY"]) == samples[0][1:3], (picked, samples)
    box.click()
    page.keyboard.type("What is this?")
    page.keyboard.press("Enter")
    # While it grows past the history's height, the history scrolls on its own and keeps the answer's end in view.
    grown = wait_until(lambda: len((p := probe())["answers"]) == 2 and (p["scroll"]["overflows"] or p["ask"]) and p, 60,
                       "the second answer to fill the history", page)
    assert grown["scroll"] == {"overflows": True, "endInView": True}, grown
    assert grown["boxY"] == samples[0][1], (grown, samples)
    page.locator(".jp-CodeCell").nth(2).locator("button:visible", has_text="Stop").click()
    wait_until(lambda: probe()["ask"], 60, "the second answer to end", page)
    final = probe()
    # The heading names the new picture's variable as rendered HTML, not its tags.
    assert final["picked"] == "other" and final["labels"] == ["other"] and "<code>" not in final["text"], final
    assert len(final["headings"]) == 1 and "New conversation" in final["headings"][0], final
    assert len(final["pictures"]) == 2 and final["pictures"][0] != final["pictures"][1], final
    state = page.evaluate(KERNEL_PRINT, "print(len(panel.conversations), len(panel.session.history), "
                                        "panel.image is other)")
    assert state.split() == ["2", "1", "True"], state
    page.evaluate(f"() => {CELL}[2].querySelector('.mvlm-conversation').scrollIntoView()")
    save_screenshot(page, f"browser-panel-{front_end}-new-picture.png")

    # An uploaded picture: the dropdown names no variable any more, and the upload button counts no stale file.
    from PIL import Image

    Image.new("RGB", (64, 48), (30, 160, 60)).save(tmp_path / "green.png")
    with page.expect_file_chooser() as chooser:  # the upload's <input type=file> is never in the page
        page.locator(".jp-CodeCell").nth(2).locator("button.widget-upload").click()
    chooser.value.set_files(tmp_path / "green.png")
    uploaded = wait_until(lambda: len((p := probe())["headings"]) == 2 and p, 30, "the uploaded picture", page)
    assert uploaded["picked"].split() == ["(pick", "a", "variable)"] and "(1)" not in uploaded["text"], uploaded
    assert len(uploaded["headings"]) == 2 and "uploaded green.png" in uploaded["headings"][1], uploaded

    # Beside the live panel its saved copy is hidden (saved_copy.py's style rule); saved and reopened without the
    # kernel, the copy shows the conversation in the panel's place, not "Error displaying widget: model not found".
    copy = page.locator(".jp-CodeCell").nth(2).locator("[class*='mvlm-copy-']")
    assert copy.count() == 1 and not copy.is_visible()
    save_and_shut_down(page, lab, name)
    page.reload()
    copied = (f"() => !!(window.jupyterapp && window.jupyterapp.shell.currentWidget"
              f" && window.jupyterapp.shell.currentWidget.content && {CELL}.length === 3"
              f" && {CELL}[2].querySelector('.jp-RenderedMarkdown'))")
    page.wait_for_function(copied, timeout=120_000, polling=250)
    page.evaluate(f"() => {CELL}[2].scrollIntoView()")
    page.wait_for_timeout(500)  # the widget's renderer gives up once the (kernel-less) widget manager is restored
    reopened = page.evaluate(f"() => {CELL}[2].querySelector('.jp-Cell-outputArea').innerText")
    assert copy.is_visible() and "Error displaying widget" not in reopened, reopened
    for answer in final["answers"]:
        assert " ".join(answer.split()) in " ".join(reopened.split()), (answer, reopened)
    assert reopened.count("New conversation") == 2 and "uploaded green.png" in reopened, reopened
    assert page.locator(".jp-CodeCell").nth(2).locator("img[alt='the picture asked about']").count() == 2
    save_screenshot(page, f"browser-panel-{front_end}-reopened.png")
    if front_end == "jupyterlab":
        open_handout(page, lab, name, final["answers"])


def open_handout(page, lab: str, name: str, answers: list[str]) -> None:
    """The saved notebook as a student gets it, opened unsigned (untrusted: no style rule applies, and JupyterLab
    renders no widget output of an untrusted cell): as it was saved, then its `mvlm handout`. Both show the
    conversation in the panel's place and no widget line at all."""
    from mvlm_magic.handout import WIDGET_VIEW, handout

    saved = json.loads(api(lab, f"/api/contents/{name}?content=1"))["content"]
    as_saved = json.loads(json.dumps(saved))
    for cell in as_saved["cells"]:
        cell["metadata"].pop("trusted", None)  # the server signs a notebook only if every cell is trusted
    # This server's notary keeps the signature of the notebook as saved (the teacher's machine); a student's has
    # another secret. One field more makes the content new here too.
    as_saved["metadata"]["copied_to"] = "a student's machine"
    shown = open_unsigned(page, lab, name.replace(".ipynb", ".as-saved.ipynb"), as_saved, answers)
    assert any(WIDGET_VIEW in output.get("data", {}) for output in as_saved["cells"][2]["outputs"])  # still there
    save_screenshot(page, "browser-panel-untrusted.png")

    handed, copied, other = handout(saved)
    assert (copied, other) == (1, 0)
    handed_shown = open_unsigned(page, lab, name.replace(".ipynb", ".handout.ipynb"), handed, answers)
    assert handed_shown.split() == shown.split(), (handed_shown, shown)
    save_screenshot(page, "browser-panel-handout.png")


def open_unsigned(page, lab: str, name: str, notebook: dict, answers: list[str]) -> str:
    """Upload `notebook` as `name` (no cell trusted, so unsigned) and open it: its third cell shows the AskPanel's
    conversation, untrusted, with no widget line. Returns what that cell's outputs show."""
    upload(lab, name, notebook)
    page.goto(f"{lab}/lab/tree/{name}?reset&token={TOKEN}")
    rendered = (f"() => !!(window.jupyterapp && window.jupyterapp.shell.currentWidget"
                f" && window.jupyterapp.shell.currentWidget.content && {CELL}.length === 3"
                f" && {CELL}[2].querySelector('.jp-RenderedMarkdown'))")
    page.wait_for_function(rendered, timeout=120_000, polling=250)
    page.evaluate(f"() => {CELL}[2].scrollIntoView()")
    page.wait_for_timeout(500)  # time for a widget renderer to give up, were one used
    trusted = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.cells.get(2).trusted")
    shown = page.evaluate(f"() => {CELL}[2].querySelector('.jp-Cell-outputArea').innerText")
    assert trusted is False and "widget" not in shown.lower(), (name, trusted, shown)
    for answer in answers:
        assert " ".join(answer.split()) in " ".join(shown.split()), (name, answer, shown)
    assert shown.count("New conversation") == 2 and "uploaded green.png" in shown, (name, shown)
    return shown
