"""Compression: what the labels (fp16, int8, int4-sym-g128-r1, ...) mean, and NNCF weight compression.

`Compression` is torch- and NNCF-free (the loader, the magics and the CLI parse labels with it); NNCF is imported
only inside `compress`, when an export runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from dataclasses import dataclass

from ..errors import MvlmError

# What a bare "int4" means: symmetric, groups of 64, the 10 % of language-model weights NNCF finds most sensitive
# (and the head) in int8. On real trained weights it beats llama.cpp's Q4_0 on top-1 agreement, KL and perplexity,
# where int4-sym-g128-r1 (the preset before) fell short, and it runs on our operations (benchmarks/quality.py,
# docs/benchmarks.md "Quality at equal weights").
INT4_PRESET = "int4-sym-g64-r0.9"


@dataclass(frozen=True)
class Compression:
    mode: str = "int4"  # fp32 | fp16 | int8 | int4
    group_size: int = 128  # int4 only
    ratio: float = 1.0  # int4 only: share of layers in int4, the rest int8
    sym: bool = True  # int4 only: symmetric (no zero points) instead of asymmetric

    MODES = ("fp32", "fp16", "int8", "int4")

    def __post_init__(self):
        if self.mode not in self.MODES:
            raise MvlmError(f"unknown compression {self.mode!r}; choose one of {', '.join(self.MODES)} "
                            "(or an int4 label such as int4-sym-g64-r0.9).")
        if self.mode == "int4":
            if not (isinstance(self.group_size, int) and (self.group_size == -1 or self.group_size >= 8)):
                raise MvlmError(f"group size must be -1 (per channel) or an integer >= 8, not {self.group_size!r}.")
            if not 0.0 < float(self.ratio) <= 1.0:
                raise MvlmError(f"ratio must be in (0, 1], not {self.ratio!r}.")

    @classmethod
    def parse(cls, mode: str = "int4", group_size: int | None = None, ratio: float | None = None,
              sym: bool | None = None) -> Compression:
        """A mode ("int4" is INT4_PRESET) or a label int4[-sym][-gN][-rX] (a label's missing parts: asym, group
        128, ratio 1); explicit arguments override either."""
        text = str(mode).lower()
        text = INT4_PRESET if text == "int4" else text
        mode = text.split("-")[0]
        if mode != "int4":
            if text != mode:
                raise MvlmError(f"unknown compression {text!r}; only int4 takes options (e.g. int4-sym-g64-r1).")
            return cls(mode, 0, 1.0)  # group size and ratio mean nothing here; keep keys stable
        match = re.fullmatch(r"int4(-sym)?(?:-g(-1|\d+))?(?:-r([0-9.]+))?", text)
        if not match:
            raise MvlmError(f"cannot read compression {text!r}; write e.g. int4, int4-sym, int4-g64-r0.9, "
                            "int4-sym-g64-r0.9.")
        label_sym, label_group, label_ratio = match.groups()
        return cls(mode,
                   int(label_group or 128) if group_size is None else int(group_size),
                   float(label_ratio or 1.0) if ratio is None else float(ratio),
                   bool(label_sym) if sym is None else bool(sym))

    @property
    def label(self) -> str:
        if self.mode != "int4":
            return self.mode
        return f"int4-{'sym-' if self.sym else ''}g{self.group_size}-r{self.ratio:g}"


def compress(ov_model, role: str, compression: Compression, on_weight=None):
    """int8: every IR INT8_ASYM. int4: the language model INT4_SYM or INT4_ASYM (layers beyond the ratio and the
    head: int8 backup), the others int8; what NNCF actually wrote is read back by written.py. on_weight(done,
    total) is called as each weight is compressed (done and total in weight elements), so a minutes-long
    compression shows how far it is."""
    if compression.mode in ("fp32", "fp16"):
        return ov_model
    import nncf

    nncf.set_log_level(logging.ERROR)  # its tables and bars would bury our own progress; written.py says
    # what it did (from the IRs), in the manifest and in one note when that is not what was asked
    with reporting(on_weight, sys.stdout), quiet_rich(), contextlib.redirect_stdout(io.StringIO()):
        return _compress(nncf, ov_model, role, compression)


@contextlib.contextmanager
def reporting(on_weight, stdout):
    """NNCF's weight compression walks the weights through its `track` (a rich progress bar, silenced above); a
    wrapper around it tells us each weight as it is done. If NNCF moves `track`, compression runs unreported."""
    from nncf.quantization.algorithms.weight_compression import algorithm

    track = getattr(algorithm, "track", None)
    if on_weight is None or track is None:
        yield
        return

    def reported(items, *args, weights=None, **kwargs):
        items = list(items)
        sizes = list(weights) if weights is not None else [1] * len(items)
        total, done = sum(sizes) or 1, 0
        for item, size in zip(items, sizes):
            yield item
            done += size
            with contextlib.redirect_stdout(stdout):  # our progress, not NNCF's prints, reaches the terminal / cell
                on_weight(done, total)

    algorithm.track = reported
    try:
        yield
    finally:
        algorithm.track = track


@contextlib.contextmanager
def quiet_rich():
    """NNCF draws progress bars on rich's global console, which in Jupyter means new Output widgets."""
    import rich

    console = rich.get_console()
    saved = dict(console.__dict__)
    rich.reconfigure(file=io.StringIO(), force_jupyter=False, force_terminal=False)
    try:
        yield
    finally:
        console.__dict__ = saved


def _compress(nncf, ov_model, role: str, compression: Compression):
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    if compression.mode == "int4" and role == "language":
        params = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                               min_adjusted_group_size=16)
        mode = nncf.CompressWeightsMode.INT4_SYM if compression.sym else nncf.CompressWeightsMode.INT4_ASYM
        return nncf.compress_weights(ov_model, mode=mode, group_size=compression.group_size,
                                     ratio=compression.ratio, advanced_parameters=params)
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)

