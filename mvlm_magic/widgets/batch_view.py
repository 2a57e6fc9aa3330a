"""Many answers in one table: a row per picture and question, filled in as each answer ends, with progress and a
Stop button for the whole batch; at the end a static copy (a Markdown table with thumbnails) that a saved notebook
keeps. Rows are plain values (the magic builds them from `runtime.batch` results), so no model code is needed here.
"""

from __future__ import annotations

import threading

import ipywidgets as w

from .messages import escape, html_table, markdown_table, status_html, text_markdown
from .thumbnail import img_tag

COLUMNS = ("picture", "question", "answer", "finish", "timings")
ROW_THUMBNAIL = 64  # pixels, longest side


class BatchView(w.VBox):
    def __init__(self, total: int):
        self.total = total
        self.rows: list[tuple[bytes | None, str, str, str, str]] = []  # (thumbnail PNG, question, answer, ...)
        self.stop_event = threading.Event()
        self.progress = w.IntProgress(value=0, min=0, max=total, layout=w.Layout(width="240px"))
        self.status = w.HTML(status_html(f"0 of {total}"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning",
                                    tooltip="stop the batch", layout=w.Layout(width="90px"))
        self.stop_button.on_click(lambda _: self.stop())
        self.table = w.HTML("")
        controls = w.HBox([self.stop_button, self.progress, self.status], layout=w.Layout(align_items="center"))
        super().__init__([controls, self.table])

    def stop(self) -> None:
        self.stop_event.set()

    def add_row(self, thumbnail: bytes | None, question: str, answer: str, finish: str, timings: str) -> None:
        self.rows.append((thumbnail, question, answer, finish, timings))
        self.progress.value = len(self.rows)
        self.status.value = status_html(f"{len(self.rows)} of {self.total}")
        self.table.value = self.html()

    def finish(self) -> None:
        self.stop_button.layout.display = "none"  # gone after the end, as on an answer
        stopped = " (stopped)" if self.stop_event.is_set() else ""
        self.status.value = status_html(f"{len(self.rows)} of {self.total}{stopped}")

    def html(self) -> str:
        return html_table(COLUMNS, [[img_tag(thumbnail) if thumbnail else "", *map(escape, cells)]
                                    for thumbnail, *cells in self.rows])

    def static_copy(self) -> dict:
        rows = [[img_tag(thumbnail) if thumbnail else "", *map(text_markdown, cells)]
                for thumbnail, *cells in self.rows]
        text = "\n".join(" | ".join(cells) for _, *cells in self.rows)
        return {"text/markdown": markdown_table(COLUMNS, rows), "text/plain": text}
