"""What the panels offer when nothing is passed in: mvlm_magic's loader, presets, devices and bundled model.

This is the one place that knows about `mvlm_magic`, and it imports it only when a panel is built
without those arguments, so the widgets themselves stay free of model code (and work with any
engine that follows `protocol.py`).
"""

from __future__ import annotations

# The presets (docs/benchmarks.md): INT4 is export/compress.py's INT4_PRESET, chosen on real trained weights; the
# mixed INT4 of the reference notebook stays for comparison; INT8 / FP16 for fidelity.
COMPRESSIONS = [("INT4", "int4"), ("INT4 mixed (80% int4, asym)", "int4-g128-r0.8"), ("INT8", "int8"), ("FP16", "fp16")]
FALLBACK_DEVICES = ["CPU", "AUTO"]


def default_loader():
    from mvlm_magic.loader import load_engine

    return load_engine


def model_choices() -> list[str]:
    try:
        from mvlm_magic.loader import preset_names
    except ImportError:  # no OpenVINO here: a model can still be typed in
        return []
    return preset_names()


def device_choices() -> list[str]:
    try:
        from mvlm_magic.runtime.device import available_devices

        return available_devices()
    except Exception:  # no OpenVINO here: still offer the names every install understands
        return list(FALLBACK_DEVICES)


def bundled_model() -> tuple[str | None, str]:
    """(the bundled model's name, "nano", or None, why there is none)."""
    try:
        from mvlm_magic.demo import BUNDLED_NAME
        from mvlm_magic.demo import bundled_model as find

        find()  # (raises where this version has none)
        return BUNDLED_NAME, ""
    except Exception as error:  # MvlmError: no bundled model in this version
        return None, str(error)
