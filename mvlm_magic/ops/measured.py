"""Ours or OpenVINO's on a CPU nobody measured: time both once, at first load, and remember the faster.

`cpu.helps_here()` answers for the kinds of CPU measured in docs/benchmarks.md (AVX2 without VNNI; AVX-512 with
VNNI, no AMX). On any other (AVX-VNNI without AVX-512, AMX, ...) it says None, and `faster` times one prompt chunk
and one decode step of the export's language IR on each path, then keeps the answer per CPU model, OpenVINO
version and copy format in the private cache (`choices.json`), so later loads only read it. `ops="on"/"off"`
still force either path.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import openvino as ov

from ..runtime.device import compile_model, core
from ..runtime.kv_state import compiled_state
from ..store import private_cache_dir, write_json
from .copies import FORMAT
from .cpu import cpu_flags, instruction_set

PROMPT_TOKENS = 64  # one chunk of a prompt: a question's words, or a slice of a picture's 144 tokens
ANSWER_TOKENS = 32  # the decode steps one answer is weighed with, against its prompt chunk
ROUNDS = 3  # the best of three, after one warm-up


def cpu_key() -> str:
    """What a remembered choice holds for: this CPU's model, our build, OpenVINO's version, the copies' format."""
    return f"{cpu_model()} | {instruction_set()} | OpenVINO {ov.get_version()} | copies v{FORMAT}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or f"unknown ({len(cpu_flags())} flags)"


def choices_file() -> Path:
    return private_cache_dir() / "ops" / "choices.json"


def remembered(key: str | None = None) -> dict | None:
    """The choice timed before on this CPU ({"ours": bool, "timings": ...}), or None."""
    try:
        choices = json.loads(choices_file().read_text())
    except (OSError, ValueError):
        return None
    found = choices.get(key or cpu_key()) if isinstance(choices, dict) else None
    return found if isinstance(found, dict) and isinstance(found.get("ours"), bool) else None


def remember(key: str, ours: bool, timings: dict) -> None:
    """Add this CPU's choice to choices.json, atomically (another kernel may be loading too)."""
    path = choices_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        choices = json.loads(path.read_text())
        choices = choices if isinstance(choices, dict) else {}
    except (OSError, ValueError):
        choices = {}
    choices[key] = {"ours": ours, "timings": timings}
    write_json(path, choices)


def decide(timings: dict) -> bool:
    """Ours when one answer's worth of work (a prompt chunk and ANSWER_TOKENS decode steps) takes less time."""
    def cost(path: str) -> float:
        return timings[path]["prompt_s"] + ANSWER_TOKENS * timings[path]["step_s"]

    return cost("ours") < cost("openvino")


def faster(plain_xml: Path, ours_xml: Path) -> tuple[bool, dict]:
    """Whether our copy of the language IR is faster here than the plain one: remembered, or timed now and
    remembered. Returns (ours, timings)."""
    key = cpu_key()
    if found := remembered(key):
        return found["ours"], found["timings"]
    timings = {"openvino": time_language_model(plain_xml), "ours": time_language_model(ours_xml)}
    ours = decide(timings)
    try:
        remember(key, ours, timings)
    except OSError:  # a read-only home: timed again at the next load, still right
        pass
    return ours, timings


def time_language_model(xml: Path) -> dict:
    """Seconds for one PROMPT_TOKENS chunk from an empty cache and one decode step after it (best of ROUNDS), each
    as the engine runs it: our copy decodes through its one-token copy with static shapes (kv_state.py)."""
    language = core().read_model(str(xml))
    kv = compiled_state(language, lambda model: compile_model(model, "CPU"), 0, PROMPT_TOKENS + 8)  # run as answers do
    width = language.input("inputs_embeds").get_partial_shape()[2].get_length()
    rng = np.random.default_rng(0)
    prompt = rng.standard_normal((1, PROMPT_TOKENS, width), dtype=np.float32)
    step = rng.standard_normal((1, 1, width), dtype=np.float32)

    def run(embeds: np.ndarray, past: int) -> float:
        started = time.perf_counter()
        kv.run(embeds, past)
        return time.perf_counter() - started

    best = {"prompt_s": float("inf"), "step_s": float("inf")}
    for round_ in range(ROUNDS + 1):
        kv.reset()  # our KVAttention reads the cache's length off the mask: no state to reset
        prompt_s, step_s = run(prompt, 0), run(step, PROMPT_TOKENS)
        if round_:  # the first round compiles kernels and touches the weights
            best = {"prompt_s": min(best["prompt_s"], prompt_s), "step_s": min(best["step_s"], step_s)}
    return {name: round(seconds, 6) for name, seconds in best.items()}
