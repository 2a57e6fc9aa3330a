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

This class only declares: the options (magic_arguments) and the settings (traitlets). Each magic
parses its line and hands over to the module that does its job: `load.py` for %mvlm_load, `ask.py`
for %%mvlm_ask. The engine (`mvlm_magic.loader`) and the widgets are imported when first needed.
"""

from __future__ import annotations

import threading
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Enum, Float, Int, TraitError, Unicode, observe, validate

from ..errors import MvlmError
from . import ask, compare, load
from .last_image import LastImage
from .usage_errors import ASK_IS_A_CELL_MAGIC, EMPTY_QUESTION, reach_our_help

COMPRESSION_HELP = "int4, int8, fp16, fp32, or an int4 label such as int4-sym-g64-r0.9"


@magics_class
class MvlmMagics(Magics):
    """Ask MobileVLM about pictures. Settings: `%config MvlmMagics` (or `c.MvlmMagics.*` in ipython_config.py)."""

    cache_dir = Unicode("", help="Export cache folder ('' = $MVLM_CACHE or ~/.cache/mvlm_magic).").tag(config=True)
    default_model = Unicode("", help="Model %mvlm_load uses when none is named ('' = the bundled model)."
                            ).tag(config=True)
    device = Unicode("CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO, ...").tag(config=True)
    compression = Unicode("int4", help=f"Weight format of new exports: {COMPRESSION_HELP}.").tag(config=True)
    max_new_tokens = Int(256, help="Longest answer, in tokens (--max-new-tokens overrides).").tag(config=True)
    temperature = Float(0.0, help="Sampling temperature; 0 = greedy (--temperature overrides).").tag(config=True)
    top_p = Float(1.0, help="Nucleus sampling share; 1 = off (--top-p overrides).").tag(config=True)
    update_rate = Float(25.0, help="Most answer-widget updates per second while streaming.").tag(config=True)
    stream_pace = Float(0.0, min=0.0, help="Most tokens shown per second while an answer streams, so a class can "
                                           "read along and press Stop (8 reads well); 0 = as fast as the model. "
                                           "Also the AskPanel's pace.").tag(config=True)
    font_scale = Float(1.0, min=0.5, max=4.0,
                       help="Answer text size in notebook text sizes: 1.5 for a projector.").tag(config=True)
    blocking = Enum(("auto", True, False), default_value="auto",
                    help="Generate in the cell's own thread: 'auto' does so where no widget front end listens "
                         "(nbclient, terminal), True always (the kernel's interrupt stops it), False never."
                    ).tag(config=True)
    api_key = Unicode("", help="API key for %mvlm_load --server ('' = $OPENAI_API_KEY, or none).").tag(config=True)
    prepare_pictures = Bool(True, help="Encode each picture displayed (and feed the prompt up to the question) in "
                                       "the background, so a question about it answers sooner.").tag(config=True)

    @observe("stream_pace")
    def _pace_every_view(self, change):
        """Views made without a pace (the AskPanel's) follow the setting too."""
        from ..widgets import AnswerView

        AnswerView.default_pace = change["new"]

    @validate("compression")
    def _check_compression(self, proposal):
        from ..export.compress import Compression

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
        self.answers = []  # answer views not finished when the latest began (one streams, others wait their turn)
        self.panel = None  # the latest load panel
        self.turn = threading.Lock()  # one answer at a time; a second one waits visibly
        self.last_image = LastImage(on_show=lambda image: ask.prepare_picture(self, image))
        if shell is not None:
            self.last_image.install(shell)
            shell.input_transformers_cleanup.append(reach_our_help)

    # --- %mvlm_load ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("model", nargs="?", default=None,
              help="A preset (mobilevlm-v2-1.7b, ...), a Hugging Face id, a checkpoint folder or an export folder. "
                   "Without it (and without --list/--delete) a panel to choose one is shown.")
    @argument("-d", "--device", default=None, help="OpenVINO device (default: %%config MvlmMagics.device).")
    @argument("-c", "--compression", default=None,
              help=f"Weight format: {COMPRESSION_HELP} (default: %%config MvlmMagics.compression).")
    @argument("--group-size", type=int, default=None, help="INT4 group size (default: the preset's, 64).")
    @argument("--ratio", type=float, default=None,
              help="INT4 share of layers, the rest INT8 (default: the preset's, 0.9).")
    @argument("--precision", default="auto", choices=("auto", "f32"),
              help="Inference precision: auto (fast, bf16 where the CPU has it) or f32 (exact).")
    @argument("--server", metavar="URL", default=None,
              help="Use the model an OpenAI-compatible server serves (mvlm serve, ...) instead of a local one.")
    @argument("--model", dest="served_model", metavar="NAME", default=None,
              help="With --server: which of its models (default: the first it lists).")
    @argument("--list", action="store_true", help="List the cached exports with their sizes.")
    @argument("--delete", metavar="KEY", default=None, help="Delete a cached export (its name from --list).")
    @line_magic
    def mvlm_load(self, line=""):
        """Load a MobileVLM model: export it to OpenVINO (cached) and compile it for a device.

        A cached export is only compiled, and the message says so. In a notebook without a widget
        front end (nbclient) `%mvlm_load` alone loads the default model instead of showing a panel.
        """
        return load.run(self, parse_argstring(self.mvlm_load, line))

    def set_engine(self, engine) -> None:
        """A newly loaded model: a conversation belongs to one model, so it starts over."""
        self.stop()
        self.engine, self.session, self.session_key = engine, None, None

    # --- %%mvlm_ask ------------------------------------------------------------------------------

    @magic_arguments(name="%mvlm_ask")  # a cell magic: its usage line reads %%mvlm_ask
    @argument("image", nargs="?", default=None,
              help="A variable (PIL image, numpy HxW / HxWx3 array, path string, bytes) or a file path. "
                   "Default: the last image displayed in this notebook. Many pictures (a list variable, a folder, "
                   "a glob such as photos/*.jpg): one answer each, in a table.")
    @argument("--each-line", action="store_true",
              help="With many pictures: each line of the cell is its own question, asked of every picture.")
    @argument("--max-new-tokens", type=int, default=None, help="Longest answer in tokens.")
    @argument("--temperature", type=float, default=None, help="0 = greedy (the default).")
    @argument("--top-p", type=float, default=None, help="Nucleus sampling share (1 = off).")
    @argument("--top-k", type=int, default=None, help="Sample among the k likeliest tokens (0 = off).")
    @argument("--seed", type=int, default=None, help="Seed for sampling, for repeatable answers.")
    @argument("--new", action="store_true", help="Start a new conversation even about the same picture.")
    @argument("--show-input", action="store_true",
              help="First show the picture as the model gets it (padded, 336 x 336) with its image-token grid "
                   "(mvlm_magic.inspect.model_view for the interactive view).")
    @argument("--show-tokens", action="store_true",
              help="Show the answer as tokens tinted by how sure the model was; hover one for its top 5 "
                   "(also `_mvlm_answer.tokens`).")
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
        if not cell.strip():
            raise UsageError(EMPTY_QUESTION)
        return ask.run(self, parse_argstring(self.mvlm_ask, line), cell)

    # --- %mvlm_compare ---------------------------------------------------------------------------

    @magic_arguments()
    @argument("formats", nargs="+", help="Weight formats to compare: int4, int8, fp16, fp32 or int4 labels.")
    @argument("--image", default=None, help="A variable or a file path (default: the last image displayed).")
    @argument("--question", default=None,
              help="The question (default: the cell's body in %%%%mvlm_compare, else 'Describe the image.').")
    @argument("--max-new-tokens", type=int, default=64, help="Longest answer per format, in tokens.")
    @line_cell_magic
    def mvlm_compare(self, line="", cell=None):
        """Weight formats side by side: the loaded model's formats answer the same question about the same picture.

        Each format is exported where needed (with progress), compiled, asked greedily and released: a table of
        answer, size on disk, load time, first token, tokens/s, peak memory and agreement with the most precise.
        """
        return compare.run(self, parse_argstring(self.mvlm_compare, line), cell)

    # --- %mvlm_reset -----------------------------------------------------------------------------

    @line_magic
    def mvlm_reset(self, line=""):
        """Forget the conversation: the next %%mvlm_ask starts a new one (the model stays loaded)."""
        self.stop()
        self.session = self.session_key = None
        print("conversation cleared; the next %%mvlm_ask starts a new one.")

    # --- lifetime --------------------------------------------------------------------------------

    def add_answer(self, view) -> None:
        """The latest answer's view; unfinished earlier ones stay listed, so that stop() reaches them too."""
        self.answers = [v for v in self.answers if not v.done.is_set()] + [view]
        self.view = view

    def stop(self, wait: float = 0.0) -> None:
        """Stop every answer streaming or waiting its turn (what each has so far stays); wait up to `wait` s."""
        running = [v for v in self.answers if hasattr(v, "stop") and not v.done.is_set()]
        for view in running:
            view.stop()
        deadline = time.monotonic() + wait
        for view in running:
            view.done.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Undo what __init__ did to the shell (for %unload_ext / %reload_ext)."""
        self.stop()
        if self.stream_pace:  # the pace set for every view goes with the extension
            self.stream_pace = 0.0
        self.last_image.uninstall()
        if self.shell is not None:
            if self in self.shell.configurables:
                self.shell.configurables.remove(self)
            if reach_our_help in self.shell.input_transformers_cleanup:
                self.shell.input_transformers_cleanup.remove(reach_our_help)


def load_extension(shell) -> None:
    shell.register_magics(MvlmMagics(shell))


def unload_extension(shell) -> None:
    manager = shell.magics_manager
    magics = manager.registry.pop(MvlmMagics.__name__, None)
    if magics is None:
        return
    for table in manager.magics.values():
        for name, function in list(table.items()):
            if getattr(function, "__self__", None) is magics:
                del table[name]
    magics.close()
