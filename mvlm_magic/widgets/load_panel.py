"""Pick a model, a device and a compression, press Load, and watch each stage's progress.

    panel = LoadPanel()                     # mvlm_magic's loader, presets and devices
    panel.on_loaded.append(lambda engine: ...)
    display(panel)                          # ... Load ...
    panel.engine                            # once loaded

Loading runs in a background thread (an export takes minutes; the notebook stays usable), and a
second thread ticks the elapsed time of each stage, since a download or a conversion may report
no fraction for a long while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w

from ..printing import ready_line
from . import defaults
from .messages import error_html, escape, one_line, text_markdown
from .protocol import Engine, Loader

STAGES = ("download", "convert", "compress", "compile")
# The loader's other stages share a bar: reading the checkpoint belongs to converting it, saving to compressing.
STAGE_BAR = {"download": "download", "load": "convert", "convert": "convert", "compress": "compress",
             "save": "compress", "compile": "compile"}
TICK_SECONDS = 0.5


class StageBar(w.HBox):
    """One stage: a name, a progress bar and the time it has taken."""

    def __init__(self, stage: str):
        self.stage = stage
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="260px"))
        self.elapsed = w.Label("")
        self.started: float | None = None
        self.ended: float | None = None
        super().__init__([w.Label(stage, layout=w.Layout(width="80px")), self.bar, self.elapsed])

    def reset(self) -> None:
        self.bar.value, self.bar.bar_style, self.elapsed.value = 0.0, "", ""
        self.started = self.ended = None

    def update(self, fraction: float | None) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
            self.bar.bar_style = "info"
        if fraction is not None:
            self.bar.value = max(0.0, min(1.0, float(fraction)))
            if fraction >= 1.0:
                self.finish("success")
        self.tick()

    def finish(self, style: str) -> None:
        if self.started is not None and self.ended is None:
            self.ended = time.monotonic()
            self.bar.bar_style = style
            if style == "success":
                self.bar.value = 1.0
        self.tick()

    def tick(self) -> None:
        if self.started is not None:
            self.elapsed.value = f"{(self.ended or time.monotonic()) - self.started:.1f} s"

    @property
    def running(self) -> bool:
        return self.started is not None and self.ended is None


class LoadPanel(w.VBox):
    """Model, device and compression choices, a Load button, a progress bar per stage and a one-line error."""

    def __init__(self, loader: Loader | None = None, *, models: Sequence[str] | None = None,
                 default_model: str | None = None, devices: Sequence[str] | None = None, device: str = "CPU",
                 compression: str = "int4", loader_options: dict[str, Any] | None = None, show_controls: bool = True):
        self.loader = loader
        self.loader_options = dict(loader_options or {})
        self.no_model_note = ""
        if default_model is None and loader is None:
            default_model, self.no_model_note = defaults.bundled_model()
        models = list(defaults.model_choices() if models is None else models)
        devices = list(defaults.device_choices() if devices is None else devices)
        self.model = w.Combobox(value=default_model or "", options=models, ensure_option=False, description="Model",
                                placeholder="a preset, a Hugging Face id or a folder",
                                layout=w.Layout(width="420px"))
        self.device = w.Dropdown(options=devices, value=device if device in devices else devices[0],
                                 description="Device")
        compressions = list(defaults.COMPRESSIONS)
        if compression not in [value for _, value in compressions]:
            compressions.append((compression.upper(), compression))  # e.g. fp32, set in the magics' config
        self.compression = w.Dropdown(options=compressions, value=compression, description="Weights")
        self.load_button = w.Button(description="Load", icon="download", button_style="primary")
        self.load_button.on_click(lambda _: self.load())
        self.bars = {stage: StageBar(stage) for stage in STAGES}
        self.message = w.HTML("")
        self.note = w.HTML("")  # an export that is not exactly what was asked says so here, and it stays
        self.error = w.HTML("")
        self.error_message = ""
        self.ready = ""  # the "ready" line of the last load that succeeded
        self.engine: Engine | None = None
        self.on_loading: list[Callable[[], None]] = []  # called in the loading thread, before loading starts
        self.on_loaded: list[Callable[[Engine], None]] = []  # called in the loading thread
        self.done = threading.Event()
        self.exception: BaseException | None = None
        controls = w.VBox([self.model, w.HBox([self.device, self.compression, self.load_button])])
        if not show_controls:
            controls.layout.display = "none"
        super().__init__([controls, *self.bars.values(), self.note, self.message, self.error])

    @property
    def loading(self) -> bool:
        return self.load_button.disabled

    def load(self, blocking: bool = False) -> LoadPanel:
        """Load what the controls say, in a background thread (or here, when blocking, raising on failure)."""
        if self.loading:
            return self
        model = (self.model.value or "").strip()
        if not model:
            self._show_error(self.no_model_note or "choose a model: a preset, a Hugging Face id or a folder.")
            self.done.set()
            return self
        self.load_button.disabled = True
        self.done.clear()
        self.engine, self.exception, self.error_message, self.ready = None, None, "", ""
        self.error.value, self.note.value, self.message.value = "", "", f"loading {model}…"
        for bar in self.bars.values():
            bar.reset()
        threading.Thread(target=self._tick, name="mvlm-load-clock", daemon=True).start()
        if blocking:
            self._run(model)
            if self.exception is not None:
                raise self.exception
        else:
            threading.Thread(target=self._run, args=(model,), name="mvlm-load", daemon=True).start()
        return self

    def wait(self, timeout: float | None = None) -> Engine | None:
        self.done.wait(timeout)
        return self.engine

    def progress(self, stage: str, fraction: float | None, message: str = "") -> None:
        """The loader's progress callback."""
        if stage == "note":
            self.note.value = f'<span style="color:#8a5a00">note: {escape(message)}</span>'
            return
        bar = self.bars.get(STAGE_BAR.get(stage, ""))
        if bar is not None:
            # Only a bar's own stage moves its fraction; a stage sharing the bar just keeps its clock running.
            bar.update(fraction if STAGE_BAR.get(stage) == stage else None)
        if message:
            self.message.value = f'<span style="color:#666">{escape(message)}</span>'

    def _run(self, model: str) -> None:
        started = time.monotonic()
        try:
            for callback in list(self.on_loading):
                callback()
            loader = self.loader or defaults.default_loader()
            engine = loader(model, compression=self.compression.value, device=self.device.value,
                            progress=self.progress, **self.loader_options)
            for bar in self.bars.values():
                bar.finish("success")
                if bar.started is None:
                    bar.elapsed.value = "not needed"
            self.ready = ready_line(engine, time.monotonic() - started)
            self.message.value = f"✓ {escape(self.ready)}"
            self.engine = engine
            for callback in list(self.on_loaded):
                callback(engine)
        except BaseException as error:  # noqa: BLE001 -- shown as one line; re-raised by load(blocking=True)
            self.exception = error
            for bar in self.bars.values():
                if bar.running:
                    bar.finish("danger")
            self._show_error(one_line(error))
        finally:
            self.load_button.disabled = False
            self.done.set()

    def static_copy(self) -> dict:
        """How the load ended, as one line without widgets: what a saved notebook keeps (a widget needs the kernel
        that made it; reopened without it, JupyterLab shows "Error displaying widget: model not found")."""
        line = f"⚠ {self.error_message}" if self.error_message else f"✓ {self.ready}" if self.ready else ""
        return {"text/plain": line, "text/markdown": text_markdown(line)}

    def _show_error(self, message: str) -> None:
        self.error_message = message
        self.error.value = error_html(message)
        self.message.value = ""

    def _tick(self) -> None:
        while not self.done.wait(TICK_SECONDS):
            for bar in self.bars.values():
                if bar.running:
                    bar.tick()
