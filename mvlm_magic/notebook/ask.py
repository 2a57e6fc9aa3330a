"""What `%%mvlm_ask` does: find the picture and the question, continue or start the chat, show the answer.

The answer is shown as the front end allows (`output_mode`): printed where no kernel listens, else
an answer widget, streaming in the background where a widget front end can press its Stop button.
When the answer ends the widget's output is replaced by a static copy (Markdown, text, thumbnail) that a
saved notebook keeps. The finished answer becomes the notebook variable `_mvlm_answer`.
"""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.display import display

from ..errors import MvlmError
from . import output_mode
from .cell import expand_question, image_key, resolve_image, resolve_pictures
from .usage_errors import EMPTY_QUESTION, NO_MODEL, user_errors

ANSWER_VARIABLE = "_mvlm_answer"
SHOWN_ALTERNATIVES = 5  # --show-tokens: the likeliest tokens shown for each answer token


def run(magics, args, cell: str) -> None:
    """`%%mvlm_ask`'s parsed line and its cell."""
    if magics.engine is None:
        raise UsageError(NO_MODEL)
    namespace = magics.shell.user_ns
    with user_errors():
        question = expand_question(cell, namespace).strip()
        if not question:
            raise MvlmError(EMPTY_QUESTION)
        pictures = resolve_pictures(args.image, namespace)
        if pictures is not None:  # many pictures: a table, not a conversation
            from . import batch

            questions = [q for q in question.splitlines() if q.strip()] if args.each_line else [question]
            return batch.run(magics, pictures, questions, generation_options(magics, args), args.blocking)
        image, _ = resolve_image(args.image, namespace, magics.last_image.image)
        shown_input = show_input(magics, image) if args.show_input else None
        chat = session_for(magics, image, new=args.new)
        stream = chat.ask(question, **generation_options(magics, args))
        looked = None if shown_input is None else (lambda view: show_where_it_looked(magics, chat, view, shown_input))
        show_answer(magics, stream, image, args.blocking, args.show_tokens, on_done=looked)


def session_for(magics, image, new: bool = False):
    """The same picture continues the conversation; another picture (or --new) starts one."""
    key = image_key(image)
    if new or magics.session is None or key != magics.session_key:
        magics.session, magics.session_key = magics.engine.new_chat(image, prepare=magics.prepare_pictures), key
    return magics.session


def prepare_picture(magics, image) -> None:
    """A picture was displayed: have it encoded and its prompt prefix fed in the background, so a question
    about it answers sooner (Engine.prepare returns at once and keeps its own errors for the question)."""
    if magics.prepare_pictures and magics.engine is not None and hasattr(magics.engine, "prepare"):
        magics.engine.prepare(image)


def generation_options(magics, args) -> dict:
    """The line's options, else the settings (`%config MvlmMagics`)."""
    options = {
        "max_new_tokens": args.max_new_tokens if args.max_new_tokens is not None else magics.max_new_tokens,
        "temperature": args.temperature if args.temperature is not None else magics.temperature,
        "top_p": args.top_p if args.top_p is not None else magics.top_p,
    }
    options.update({name: getattr(args, name) for name in ("top_k", "seed") if getattr(args, name) is not None})
    if args.show_tokens:
        options["alternatives"] = SHOWN_ALTERNATIVES
    return options


def show_answer(magics, stream, image, blocking: bool, show_tokens: bool = False, on_done=None) -> None:
    mode = output_mode.detect(magics.shell)
    if mode == output_mode.PRINT:
        from .printed import PrintedAnswer

        magics.add_answer(PrintedAnswer(show_tokens=show_tokens))
        magics.view.stream(stream, lock=magics.turn)
        keep_answer(magics.shell, magics.view)
        return
    from ..widgets import AnswerView

    blocking = blocking or magics.blocking is True or (magics.blocking == "auto" and mode == output_mode.DISPLAY)
    # Paced only where someone watches the widget; a notebook run unattended (nbclient) runs at the model's speed.
    pace = magics.stream_pace if mode == output_mode.WIDGET else 0.0
    view = AnswerView(image=image, rate=magics.update_rate, font_scale=magics.font_scale, show_tokens=show_tokens,
                      pace=pace)
    magics.add_answer(view)
    view.on_done.append(lambda view: keep_answer(magics.shell, view))
    if on_done is not None:
        view.on_done.append(on_done)
    # The view displays itself under its own display id and replaces its output by a static copy when the answer
    # ends, so a saved notebook shows the answer without a kernel. Where no widget renders (nbclient), the text
    # form is updated as it grows.
    display(view)
    view.stream(stream, blocking=blocking, lock=magics.turn, text_updates=mode == output_mode.DISPLAY)


def show_input(magics, image):
    """The picture as the model gets it, as a static output (it survives saving), whose display handle is returned;
    printed as one line where no front end shows pictures (None returned)."""
    from ..inspect import model_view

    view = model_view(magics.engine, image)
    if output_mode.detect(magics.shell) == output_mode.PRINT:
        print(view.caption)
        return None
    return display(view.static_copy(), raw=True, display_id=True)


def show_where_it_looked(magics, chat, view, handle) -> None:
    """When the answer has ended: the model's view gains where the answer looked (from the answer's thread: a
    display update by its id is safe there)."""
    from ..inspect import model_view

    if view.answer is not None and view.answer.token_ids and chat.image_embeds is not None:
        handle.update(model_view(magics.engine, chat=chat, answer=view.answer).static_copy(), raw=True)


def keep_answer(shell, view) -> None:
    """The finished answer becomes `_mvlm_answer` (a failed one leaves the previous in place)."""
    if view.answer is not None:
        shell.user_ns[ANSWER_VARIABLE] = view.answer
