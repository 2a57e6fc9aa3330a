"""The IPython magics: `%mvlm_load`, `%%mvlm_ask`, `%mvlm_reset`.

    %load_ext mvlm_magic
    %mvlm_load                              # a panel: model, device, compression, Load
    %mvlm_load mobilevlm-v2-1.7b -c int8    # the same without the panel; progress still shows
    %mvlm_load --list | --delete KEY        # the export cache
    img                                     # a displayed picture is remembered
    %%mvlm_ask                              # or: %%mvlm_ask img   /   %%mvlm_ask path/to.jpg
    What is on the table? Is it {colour}?

The final answer of the latest `%%mvlm_ask` is the variable `_mvlm_answer` (an `Answer`: `.text`,
`.finish_reason`, `.timings`), set when the answer ends. Settings are traitlets (`%config MvlmMagics`).

Each magic parses its line and hands over to one `handle_*` method; the work is done by the engine
(`mvlm_magic.loader`, imported when a model is loaded) and the widgets (`mvlm_magic.widgets`).
Bad input is a plain `UsageError`: IPython prints its one line without a traceback (a subclass would
get a traceback, ipython/ipython#14024).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Enum, Float, Int, TraitError, Unicode, validate

from . import frontend
from .ask_input import expand_question, image_key, resolve_image
from .errors import MvlmError
from .last_image import LastImage

ANSWER_VARIABLE = "_mvlm_answer"
COMPRESSION_HELP = "int4, int8, fp16, fp32, or an int4 label such as int4-sym-g128-r1"

NO_MODEL = "no model loaded; run %mvlm_load first (e.g. %mvlm_load mobilevlm-v2-1.7b)."
EMPTY_QUESTION = "the question is empty; write it in the cell, on the lines below %%mvlm_ask."
ASK_IS_A_CELL_MAGIC = "%%mvlm_ask is a cell magic: put %%mvlm_ask [image] on the first line and the question below it."


@contextmanager
def user_errors():
    """Our own errors are user mistakes: show their one line, no traceback."""
    try:
        yield
    except MvlmError as error:
        raise UsageError(str(error)) from None


@magics_class
class MvlmMagics(Magics):
    """Ask MobileVLM about pictures. Settings: `%config MvlmMagics` (or `c.MvlmMagics.*` in ipython_config.py)."""

    cache_dir = Unicode("", help="Export cache folder ('' = $MVLM_CACHE or ~/.cache/mvlm_magic).").tag(config=True)
    default_model = Unicode("", help="Model %mvlm_load uses when none is named ('' = the bundled model).").tag(config=True)
    device = Unicode("CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO, ...").tag(config=True)
    compression = Unicode("int4", help=f"Weight format of new exports: {COMPRESSION_HELP}.").tag(config=True)
    max_new_tokens = Int(256, help="Longest answer, in tokens (--max-new-tokens overrides).").tag(config=True)
    temperature = Float(0.0, help="Sampling temperature; 0 = greedy (--temperature overrides).").tag(config=True)
    top_p = Float(1.0, help="Nucleus sampling share; 1 = off (--top-p overrides).").tag(config=True)
    update_rate = Float(25.0, help="Most answer-widget updates per second while streaming.").tag(config=True)
    blocking = Enum(("auto", True, False), default_value="auto",
                    help="Generate in the cell's own thread: 'auto' does so where no widget front end listens "
                         "(nbclient, terminal), True always (the kernel's interrupt stops it), False never."
                    ).tag(config=True)

    @validate("compression")
    def _check_compression(self, proposal):
        from .export.compress import Compression

        try:
            Compression.parse(proposal["value"])
        except MvlmError as error:
            raise TraitError(str(error)) from None
        return proposal["value"]

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)  # also registers us in shell.configurables, for %config
        self.engine = None
        self.session = None  # the conversation follow-up cells continue
        self.session_key = None  # fingerprint of its picture
        self.view = None  # the latest answer view
        self.panel = None  # the latest load panel
        self.turn = threading.Lock()  # one answer at a time; a second one waits visibly
        self.last_image = LastImage()
        if shell is not None:
            self.last_image.install(shell)

    # --- %mvlm_load ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("model", nargs="?", default=None,
              help="A preset (mobilevlm-v2-1.7b, ...), a Hugging Face id, a checkpoint folder or an export folder. "
                   "Without it (and without --list/--delete) a panel to choose one is shown.")
    @argument("-d", "--device", default=None, help="OpenVINO device (default: %%config MvlmMagics.device).")
    @argument("-c", "--compression", default=None,
              help=f"Weight format: {COMPRESSION_HELP} (default: %%config MvlmMagics.compression).")
    @argument("--group-size", type=int, default=None, help="INT4 group size (default 128).")
    @argument("--ratio", type=float, default=None, help="INT4 share of layers, the rest INT8 (default 1).")
    @argument("--precision", default="auto", choices=("auto", "f32"),
              help="Inference precision: auto (fast, bf16 where the CPU has it) or f32 (exact).")
    @argument("--list", action="store_true", help="List the cached exports with their sizes.")
    @argument("--delete", metavar="KEY", default=None, help="Delete a cached export (its name from --list).")
    @line_magic
    def mvlm_load(self, line=""):
        """Load a MobileVLM model: export it to OpenVINO (cached) and compile it for a device.

        A cached export is only compiled, and the message says so. In a notebook without a widget
        front end (nbclient) `%mvlm_load` alone loads the default model instead of showing a panel.
        """
        args = parse_argstring(self.mvlm_load, line)
        if args.list:
            return self.handle_list()
        if args.delete:
            return self.handle_delete(args.delete)
        if args.model is None and frontend.output_mode(self.shell) == frontend.WIDGET:
            return self.handle_panel(args)
        return self.handle_load(args)

    def load_options(self, args) -> dict:
        return {"group_size": args.group_size, "ratio": args.ratio, "precision": args.precision,
                "cache_dir": self.cache_dir or None}

    def handle_panel(self, args) -> None:
        from .widgets import LoadPanel

        self.panel = panel = LoadPanel(default_model=self.default_model or None, device=args.device or self.device,
                                       compression=args.compression or self.compression,
                                       loader_options=self.load_options(args))
        panel.on_loaded.append(self.set_engine)
        display(panel)

    def handle_load(self, args) -> None:
        from .loader import load_engine

        device, compression = args.device or self.device, args.compression or self.compression
        options = self.load_options(args)
        with user_errors():
            model = args.model or self.default_model or self._bundled_model()
            if frontend.output_mode(self.shell) == frontend.WIDGET:
                from .widgets import LoadPanel

                self.panel = panel = LoadPanel(load_engine, models=[], default_model=str(model), devices=[device],
                                               device=device, compression=compression, loader_options=options,
                                               show_controls=False)
                display(panel)
                engine = panel.load(blocking=True).engine
            else:
                from .text_output import print_progress

                engine = load_engine(model, compression, device, progress=print_progress, **options)
        self.set_engine(engine)
        how = "cached export: compiled only, nothing converted" if engine.was_cached else "exported and compiled"
        print(f"{engine.name} is ready ({how}; compile {engine.compile_seconds:.1f} s).")

    def handle_list(self) -> None:
        from .store import default_cache_dir, list_exports

        folder = self.cache_dir or default_cache_dir()
        exports = list_exports(folder)
        if not exports:
            print(f"no cached exports in {folder}")
            return
        rows = [(e.key, e.manifest.get("model_id", "?"), e.manifest["compression"]["label"],
                 f"{e.size_bytes / 1e6:.1f} MB") for e in exports]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        print(f"cached exports in {folder}:")
        for row in rows:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])

    def handle_delete(self, key: str) -> None:
        from .store import delete_export

        with user_errors():
            folder = delete_export(key, self.cache_dir or None)
        print(f"deleted {folder}")

    def set_engine(self, engine) -> None:
        self.engine, self.session, self.session_key = engine, None, None

    @staticmethod
    def _bundled_model() -> str:
        from .demo import bundled_model

        return str(bundled_model())

    # --- %%mvlm_ask ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("image", nargs="?", default=None,
              help="A variable (PIL image, numpy HxW / HxWx3 array, path string, bytes) or a file path. "
                   "Default: the last image displayed in this notebook.")
    @argument("--max-new-tokens", type=int, default=None, help="Longest answer in tokens.")
    @argument("--temperature", type=float, default=None, help="0 = greedy (the default).")
    @argument("--top-p", type=float, default=None, help="Nucleus sampling share (1 = off).")
    @argument("--top-k", type=int, default=None, help="Sample among the k likeliest tokens (0 = off).")
    @argument("--seed", type=int, default=None, help="Seed for sampling, for repeatable answers.")
    @argument("--new", action="store_true", help="Start a new conversation even about the same picture.")
    @argument("--blocking", action="store_true",
              help="Generate in the cell's own thread (the kernel's interrupt stops it; the Stop button cannot).")
    @line_cell_magic
    def mvlm_ask(self, line="", cell=None):
        """Ask the loaded model about a picture; the cell body is the question.

        `{name}` in the question is replaced by the value of `name` in the notebook. The answer streams
        into a widget with a Stop button and a stats line; the cell returns at once while it streams
        (unless blocking). A follow-up about the same picture continues the conversation; another
        picture, --new or %mvlm_reset starts a new one. The finished answer is `_mvlm_answer`.
        """
        if cell is None:
            raise UsageError(ASK_IS_A_CELL_MAGIC)
        return self.handle_ask(parse_argstring(self.mvlm_ask, line), cell)

    def handle_ask(self, args, cell: str) -> None:
        if self.engine is None:
            raise UsageError(NO_MODEL)
        namespace = self.shell.user_ns
        with user_errors():
            question = expand_question(cell, namespace).strip()
            if not question:
                raise MvlmError(EMPTY_QUESTION)
            image, _ = resolve_image(args.image, namespace, self.last_image.image)
            stream = self.session_for(image, new=args.new).ask(question, **self.generation_options(args))
            self.show_answer(stream, image, args.blocking)

    def session_for(self, image, new: bool = False):
        """The same picture continues the conversation; another picture (or --new) starts one."""
        key = image_key(image)
        if new or self.session is None or key != self.session_key:
            self.session, self.session_key = self.engine.new_chat(image), key
        return self.session

    def generation_options(self, args) -> dict:
        options = {
            "max_new_tokens": args.max_new_tokens if args.max_new_tokens is not None else self.max_new_tokens,
            "temperature": args.temperature if args.temperature is not None else self.temperature,
            "top_p": args.top_p if args.top_p is not None else self.top_p,
        }
        options.update({name: getattr(args, name) for name in ("top_k", "seed") if getattr(args, name) is not None})
        return options

    def show_answer(self, stream, image, blocking: bool) -> None:
        mode = frontend.output_mode(self.shell)
        if mode == frontend.PRINT:
            from .text_output import PrintedAnswer

            self.view = PrintedAnswer()
            self.view.stream(stream, lock=self.turn)
            self.answer_done(self.view)
            return
        from .widgets import AnswerView

        blocking = blocking or self.blocking is True or (self.blocking == "auto" and mode == frontend.DISPLAY)
        self.view = view = AnswerView(image=image, rate=self.update_rate)
        view.on_done.append(self.answer_done)
        handle = display(view, display_id=True)
        # Without a widget front end the text/plain form is what gets saved; keep that display updated too.
        view.stream(stream, blocking=blocking, lock=self.turn,
                    display_handle=handle if blocking and mode == frontend.DISPLAY else None)

    def answer_done(self, view) -> None:
        if view.answer is not None:
            self.shell.user_ns[ANSWER_VARIABLE] = view.answer

    # --- %mvlm_reset -----------------------------------------------------------------------------

    @line_magic
    def mvlm_reset(self, line=""):
        """Forget the conversation: the next %%mvlm_ask starts a new one (the model stays loaded)."""
        self.stop()
        self.session = self.session_key = None
        print("conversation cleared; the next %%mvlm_ask starts a new one.")

    # --- lifetime --------------------------------------------------------------------------------

    def stop(self) -> None:
        view = self.view
        if view is not None and hasattr(view, "stop"):
            view.stop()

    def close(self) -> None:
        """Undo what __init__ did to the shell (for %unload_ext / %reload_ext)."""
        self.stop()
        self.last_image.uninstall()
        if self.shell is not None and self in self.shell.configurables:
            self.shell.configurables.remove(self)


def load_extension(shell) -> None:
    shell.register_magics(MvlmMagics(shell))


def unload_extension(shell) -> None:
    manager = shell.magics_manager
    magics = manager.registry.pop(MvlmMagics.__name__, None)
    if magics is None:
        return
    for kind, table in manager.magics.items():
        for name, function in list(table.items()):
            if getattr(function, "__self__", None) is magics:
                del table[name]
    magics.close()
