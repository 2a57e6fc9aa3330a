"""What `%mvlm_compare` does: the loaded model's weight formats side by side (mvlm_magic/compare.py), in a table
that fills in as each format is loaded and asked, then stays in the notebook as a static Markdown table."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.display import display

from ..printing import print_progress
from . import output_mode
from .cell import resolve_image
from .usage_errors import NO_MODEL, user_errors


def run(magics, args, cell: str | None) -> None:
    from ..compare import COLUMNS, DEFAULT_QUESTION, compare_formats, table_rows, text_table

    if magics.engine is None:
        raise UsageError(NO_MODEL)
    question = (cell or "").strip() or unquote(args.question or "") or DEFAULT_QUESTION
    with user_errors():
        image, _ = resolve_image(args.image, magics.shell.user_ns, magics.last_image.image)
        model = magics.engine.manifest["model_id"]
        options = {"device": magics.engine.device, "cache_dir": magics.cache_dir or None,
                   "max_new_tokens": args.max_new_tokens}
        if output_mode.detect(magics.shell) == output_mode.PRINT:
            rows = compare_formats(model, args.formats, image, question, progress=print_progress, **options)
            print(f"Q: {question}\n{text_table(rows)}")
            return
        import ipywidgets as w

        from ..widgets.messages import escape, html_table, markdown_table, status_html, text_markdown

        status, table = w.HTML(status_html(f"comparing {' '.join(args.formats)} on: {question}")), w.HTML()
        handle = display(w.VBox([status, table]), display_id=True)

        def progress(stage, fraction, message=""):
            status.value = status_html(f"[{stage}] {message}")

        def on_row(rows):
            table.value = html_table(COLUMNS, [[escape(cell) for cell in row] for row in table_rows(rows)])

        rows = compare_formats(model, args.formats, image, question, progress=progress, on_row=on_row, **options)
        cells = [[text_markdown(cell) for cell in row] for row in table_rows(rows)]
        handle.update({"text/markdown": f"**Q:** {text_markdown(question)}\n\n" + markdown_table(COLUMNS, cells),
                       "text/plain": text_table(rows)}, raw=True)


def unquote(text: str) -> str:
    """IPython's magic arguments keep the quotes around `--question 'What colour?'`."""
    text = text.strip()
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
