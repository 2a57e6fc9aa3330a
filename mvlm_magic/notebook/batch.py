"""What `%%mvlm_ask pictures` does when it names many pictures (a list, a folder, a glob): every question about
every picture, into one table with progress and Stop (`widgets.BatchView`), pictures encoded ahead of the answers
(`runtime.batch`). The result becomes `_mvlm_answer`: a pandas DataFrame when pandas is installed (one row per
picture and question), else the list of Answers, so that an exercise can score it."""

from __future__ import annotations

import threading

from IPython.display import display

from ..printing import answer_stats
from . import output_mode
from .ask import ANSWER_VARIABLE


def run(magics, pictures: list, questions: list[str], options: dict, blocking: bool) -> None:
    from ..runtime.batch import ask_many
    from ..runtime.sampling import GenerationConfig

    config = GenerationConfig(**options)
    total = len(pictures) * len(questions)
    mode = output_mode.detect(magics.shell)
    if mode == output_mode.PRINT:
        with magics.turn:
            results = ask_many(magics.engine, pictures, questions, config, on_result=print_row)
        magics.shell.user_ns[ANSWER_VARIABLE] = table(results)
        return
    from ..widgets import BatchView
    from ..widgets.thumbnail import thumbnail_png

    view = BatchView(total)
    handle = display(view, display_id=True)

    def add(result) -> None:
        answer = result.answer
        view.add_row(thumbnail_png(result.picture, 64) if result.picture is not None else None, result.question,
                     answer.text if answer else "", answer.finish_reason if answer else "",
                     answer_stats(answer) if answer else result.error)

    def consume() -> None:
        results = []
        try:
            with magics.turn:
                results = ask_many(magics.engine, pictures, questions, config, view.stop_event, on_result=add)
        finally:
            view.finish()
            handle.update(view.static_copy(), raw=True)  # what a saved notebook keeps
            magics.shell.user_ns[ANSWER_VARIABLE] = table(results)

    blocking = blocking or magics.blocking is True or (magics.blocking == "auto" and mode == output_mode.DISPLAY)
    if blocking:
        consume()
    else:
        threading.Thread(target=consume, name="mvlm-batch", daemon=True).start()


def print_row(result) -> None:
    answer = result.answer
    said = f"{answer.text}  [{answer_stats(answer)}]" if answer else f"[{result.error}]"
    print(f"{result.name} · {result.question}\n  {said}", flush=True)


def table(results):
    """A DataFrame (pandas installed) with a row per picture and question; else the list of Answers."""
    try:
        import pandas as pd
    except ImportError:
        return [result.answer for result in results]
    rows = []
    for result in results:
        answer, timings = result.answer, result.answer.timings if result.answer else None
        rows.append({"picture": result.name, "question": result.question,
                     "answer": answer.text if answer else None,
                     "finish_reason": answer.finish_reason if answer else None,
                     "first_token_ms": timings.first_token_ms if timings else None,
                     "tokens_per_s": timings.decode_tokens_per_s if timings else None,
                     "tokens": timings.new_tokens if timings else None, "error": result.error})
    return pd.DataFrame(rows, columns=["picture", "question", "answer", "finish_reason", "first_token_ms",
                                       "tokens_per_s", "tokens", "error"])
