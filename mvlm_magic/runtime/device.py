"""Which OpenVINO devices exist, and the compile settings for a chosen inference precision."""

from __future__ import annotations

from functools import lru_cache

import openvino as ov

from ..errors import MvlmError

PRECISIONS = ("auto", "f32")


@lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def available_devices() -> list[str]:
    """What OpenVINO reports on this machine, plus AUTO (let OpenVINO pick)."""
    return list(core().available_devices) + ["AUTO"]


def device_label(device: str) -> str:
    if device == "AUTO":
        return "AUTO (OpenVINO picks)"
    try:
        return f"{device}: {core().get_property(device, 'FULL_DEVICE_NAME')}"
    except RuntimeError:
        return device


def check_device(device: str) -> str:
    name = str(device).upper()
    devices = available_devices()
    # "GPU.1" style names and AUTO:GPU,CPU style lists are OpenVINO's own syntax; accept them when the base exists.
    base = name.split(":")[0].split(".")[0]
    if name in devices or base in {d.split(".")[0] for d in devices}:
        return name
    raise MvlmError(f"unknown device {device!r}; available: {', '.join(devices)}.")


def compile_config(precision: str = "auto", threads: int | None = None, extra: dict | None = None) -> dict:
    """`auto` keeps OpenVINO's fast defaults (bf16 compute and a u8 KV cache on CPUs that have them);
    `f32` is for answers that must match the torch reference token for token. `extra`: any other
    OpenVINO properties (they win)."""
    if precision not in PRECISIONS:
        raise MvlmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "f32":
        config.update({"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    config.update(extra or {})
    return config


def compile_model(model, device: str, precision: str = "auto", threads: int | None = None,
                  extra: dict | None = None) -> ov.CompiledModel:
    """`model`: an IR's path, or an ov.Model made in memory (a rewritten copy)."""
    config = compile_config(precision, threads, extra)
    if device.startswith("AUTO"):
        config = {k: v for k, v in config.items() if k == "PERFORMANCE_HINT"}  # AUTO rejects device-only keys
    return core().compile_model(model if isinstance(model, ov.Model) else str(model), device, config)
