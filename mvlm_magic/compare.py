"""Weight formats side by side: the same question about the same picture, answered by each format of one model.

    rows = compare_formats("mobilevlm-v2-1.7b", ["int4", "int8", "fp16"], picture, "What is on the table?")

Each format is exported where needed (with the loader's progress), compiled, asked greedily, measured and released
before the next: size on disk (the export's own files; our operations' derived copy apart), load time, first
token, tokens/s, peak memory, and agreement with the most precise format asked (the same answer? the first token
where they part). `%mvlm_compare` and `mvlm compare` show the rows; docs/notebook.md explains the columns.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MvlmError
from .export.compress import Compression
from .loader import load_engine
from .model.checkpoint import Progress, no_progress
from .printing import token_label
from .runtime.confidence import token_text
from .store import export_bytes

DEFAULT_QUESTION = "Describe the image."  # a question every format answers at length: where they part shows
# Most precise first: agreement is measured against the first of these that was asked for.
PRECISION_ORDER = ("fp32", "fp16", "int8", "int4")


@dataclass
class FormatRow:
    label: str  # the compression label asked, e.g. int4-sym-g128-r1
    written: str = ""  # the label of what the export holds (export/written.py), e.g. int4-sym-g128/64-r1
    answer: str = ""
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    export_mb: float = 0.0  # the export's files on disk
    copy_mb: float = 0.0  # our operations' derived copy beside it (0 where OpenVINO's own operations run)
    load_s: float = 0.0  # export (if needed) + compile
    exported: bool = False  # the load had to export first
    first_token_ms: float = 0.0
    tokens_per_s: float = 0.0
    peak_mb: float | None = None  # most memory held answering, above what the process held before (after any export)
    same_answer: bool | None = None  # as the most precise format's (None for that one itself)
    first_difference: int | None = None  # index of the first answer token that differs
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.load_s > 0 and not self.error


def rank(label: str) -> int:
    mode = Compression.parse(label).mode
    return PRECISION_ORDER.index(mode) if mode in PRECISION_ORDER else len(PRECISION_ORDER)


def resident_mb() -> float | None:
    """The process's resident memory now (Linux), MB."""
    return _status_mb("VmRSS")


def reset_peak() -> bool:
    """Start measuring the peak afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> float | None:
    return _status_mb("VmHWM")


def _status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def compare_formats(model, formats, image, question: str, *, device: str = "CPU", cache_dir=None,
                    max_new_tokens: int = 64, progress: Progress = no_progress, on_row=None) -> list[FormatRow]:
    """One row per format, most precise first; `on_row(rows)` after each (for a table that fills in)."""
    labels = []
    for name in formats:
        label = Compression.parse(name).label
        if label not in labels:
            labels.append(label)
    if not labels:
        raise MvlmError("name at least one weight format to compare, e.g. int4 int8 fp16.")
    labels.sort(key=rank)
    rows = [FormatRow(label) for label in labels]
    for row in rows:
        progress("compare", None, f"{row.label}: loading")
        measure(row, model, image, question, device, cache_dir, max_new_tokens, progress)
        agree(rows)
        if on_row is not None:
            on_row(rows)
    return rows


def measure(row: FormatRow, model, image, question, device, cache_dir, max_new_tokens, progress) -> None:
    gc.collect()
    start_mb = resident_mb()
    started = time.perf_counter()
    engine = None
    try:
        engine = load_engine(model, row.label, device, cache_dir=cache_dir, progress=progress)
        row.load_s, row.exported = time.perf_counter() - started, not engine.was_cached
        if row.exported:  # what the export leaves resident (torch, its heap) is not the format's: load it again
            del engine
            gc.collect()
            start_mb = resident_mb()
            engine = load_engine(model, row.label, device, cache_dir=cache_dir)
        row.written = engine.manifest["compression"]["label"]
        measured = reset_peak()  # after the load: an export's own transient memory is not the format's
        own, derived = export_bytes(engine.folder)
        row.export_mb, row.copy_mb = own / 1e6, derived / 1e6 if engine.ops or engine.vision_ops else 0.0
        answer = engine.ask(image, question, max_new_tokens=max_new_tokens)
        row.answer, row.token_ids = answer.text, list(answer.token_ids)
        row.tokens = [token_text(engine.tokenizer, t) for t in answer.token_ids]
        row.first_token_ms, row.tokens_per_s = answer.timings.first_token_ms, answer.timings.decode_tokens_per_s
        if measured and start_mb is not None and (peak := peak_mb()) is not None:
            row.peak_mb = max(0.0, peak - start_mb)
    except MvlmError as error:
        row.error = str(error)
    finally:
        del engine
        gc.collect()


def agree(rows: list[FormatRow]) -> None:
    """Each answered row against the first answered one (the most precise)."""
    answered = [row for row in rows if row.answered]
    if not answered:
        return
    reference = answered[0]
    for row in answered[1:]:
        row.same_answer = row.token_ids == reference.token_ids
        row.first_difference = None if row.same_answer else next(
            (i for i, (a, b) in enumerate(zip(row.token_ids, reference.token_ids)) if a != b),
            min(len(row.token_ids), len(reference.token_ids)))


COLUMNS = ("format", "answer", "size", "load", "first token", "tokens/s", "peak memory", "agrees")


def row_cells(row: FormatRow, reference: FormatRow | None) -> list[str]:
    """The table's cells of one row, as words (shared by the terminal, the notebook and the widget)."""
    if row.error:
        return [row.label, f"⚠ {row.error}", "", "", "", "", "", ""]
    size = f"{row.export_mb:.1f} MB" + (f" + {row.copy_mb:.1f} MB operations copy" if row.copy_mb else "")
    load = f"{row.load_s:.1f} s" + (" (exported)" if row.exported else "")
    peak = f"{row.peak_mb:.0f} MB" if row.peak_mb is not None else "n/a"
    if row.same_answer is None:
        agrees = "reference" if reference is row else ""
    elif row.same_answer:
        agrees = "same answer"
    else:
        theirs = row.tokens[row.first_difference] if row.first_difference < len(row.tokens) else "(end)"
        agrees = f"parts at token {row.first_difference + 1} ({token_label(theirs)})"
    rate = f"{row.tokens_per_s:.1f}" if row.tokens_per_s else "—"
    return [row.written or row.label, row.answer, size, load, f"{row.first_token_ms:.0f} ms", rate, peak, agrees]


def table_rows(rows: list[FormatRow]) -> list[list[str]]:
    reference = next((row for row in rows if row.answered), None)
    return [row_cells(row, reference) for row in rows if row.load_s or row.error]


def text_table(rows: list[FormatRow]) -> str:
    """The comparison as aligned text, for a terminal."""
    cells = [list(COLUMNS)] + table_rows(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)
