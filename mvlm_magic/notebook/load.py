"""What `%mvlm_load` does: the panel, the export cache (--list, --delete), or loading a model with progress."""

from __future__ import annotations

import time

from IPython.display import display

from . import output_mode
from .usage_errors import user_errors

# An answer ends within a token of being stopped (a prefill at most); loading waits no longer than this for it.
STOP_WAIT_S = 10.0


def run(magics, args) -> None:
    """`%mvlm_load`'s parsed line: list or delete cached exports, show the panel, or load the model named."""
    if args.list:
        return list_cache(magics.cache_dir, magics.shell)
    if args.delete:
        return delete_cached(args.delete, magics.cache_dir)
    if args.server:
        return connect(magics, args.server, args.served_model)
    if args.model is None and output_mode.detect(magics.shell) == output_mode.WIDGET:
        return show_panel(magics, args)
    return load(magics, args)


def loader_options(magics, args) -> dict:
    return {"group_size": args.group_size, "ratio": args.ratio, "precision": args.precision,
            "cache_dir": magics.cache_dir or None}


def show_panel(magics, args) -> None:
    from ..widgets import LoadPanel

    magics.panel = panel = LoadPanel(default_model=magics.default_model or None, device=args.device or magics.device,
                                     compression=args.compression or magics.compression,
                                     loader_options=loader_options(magics, args))
    panel.on_loading.append(lambda: stop_answers(magics))
    panel.on_loaded.append(magics.set_engine)
    display(panel)


def load(magics, args) -> None:
    from ..loader import load_engine

    stop_answers(magics)
    device, compression = args.device or magics.device, args.compression or magics.compression
    options = loader_options(magics, args)
    with user_errors():
        model = args.model or magics.default_model or bundled_model()
        mode = output_mode.detect(magics.shell)
        if mode == output_mode.WIDGET:
            from ..widgets import LoadPanel

            # The panel shows the progress, then gives way to its one "ready" line (or its error), which a saved
            # notebook keeps without the kernel.
            magics.panel = panel = LoadPanel(load_engine, models=[], default_model=str(model), devices=[device],
                                             device=device, compression=compression, loader_options=options,
                                             show_controls=False)
            handle = display(panel, display_id=True)
            try:
                engine = panel.load(blocking=True).engine
            finally:
                handle.update(panel.static_copy(), raw=True)
        else:
            from ..printing import progress_line, ready_line

            def show(line: str) -> None:  # a line each, as in a terminal
                print(line, flush=True)

            if mode == output_mode.DISPLAY:
                # Nobody watches (nbclient, papermill): one line that replaces itself, so the saved notebook keeps
                # the ready line, not the sixty progress lines of an export before it.
                handle = display({"text/plain": f"[load] {model}"}, raw=True, display_id=True)

                def show(line: str) -> None:
                    handle.update({"text/plain": line}, raw=True)

            started = time.monotonic()
            engine = load_engine(model, compression, device, progress=lambda *report: show(progress_line(*report)),
                                 **options)
            show(ready_line(engine, time.monotonic() - started))
    magics.set_engine(engine)


def connect(magics, url: str, model: str | None) -> None:
    """`%mvlm_load --server URL`: the served model answers from now on; nothing is loaded here."""
    import os

    from ..runtime.remote import RemoteEngine

    stop_answers(magics)
    with user_errors():
        engine = RemoteEngine(url, model, magics.api_key or os.environ.get("OPENAI_API_KEY"))
    print(f"ready: {engine.name} (a server answers; nothing loaded here)")
    magics.set_engine(engine)


def stop_answers(magics) -> None:
    """A running answer would compete with the load for the CPU and keep the next question waiting its turn."""
    magics.stop(wait=STOP_WAIT_S)


def list_cache(cache_dir: str, shell=None) -> None:
    """The cached exports: aligned text in a terminal, a table in a notebook (its cells would wrap as text)."""
    from ..loader import LISTING_COLUMNS, cached_exports
    from ..store import default_cache_dir

    folder = cache_dir or default_cache_dir()
    rows = cached_exports(folder)
    if not rows:
        print(f"no cached exports in {folder}")
        return
    table = [LISTING_COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(LISTING_COLUMNS) - 1)]
    text = "\n".join([f"cached exports in {folder}:"] + [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in table])
    if shell is None or output_mode.detect(shell) == output_mode.PRINT:
        print(text)
        return
    from ..widgets.messages import markdown_table, text_markdown

    cells = [[text_markdown(cell) for cell in row] for row in rows]
    markdown = f"cached exports in {text_markdown(str(folder))}:\n\n" + markdown_table(LISTING_COLUMNS, cells)
    display({"text/markdown": markdown, "text/plain": text}, raw=True)


def delete_cached(key: str, cache_dir: str) -> None:
    from ..store import delete_export

    with user_errors():
        folder = delete_export(key, cache_dir or None)
    print(f"deleted {folder}")


def bundled_model() -> str:
    from ..demo import bundled_model as find

    return str(find())
