"""Which CPU this is, in one place: its flags, which build of our operations it runs, and whether they help."""

from __future__ import annotations

import os

NEEDED_FLAGS = {"avx2", "fma", "f16c"}
AVX512_FLAGS = NEEDED_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # our VNNI paths (int4_avx512.hpp)
COMPILER_FLAGS = {"avx2": ["-mavx2", "-mfma", "-mf16c"],
                  "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}
ISA_VARIABLES = ("MVLM_OPS_ISA", "MVLM_KERNEL_ISA")  # the second: its earlier name, still honoured


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def instruction_set() -> str | None:
    """Which build of our operations this CPU runs: "avx512" (with VNNI), "avx2", or None.
    MVLM_OPS_ISA=avx2 picks the AVX2 build on an AVX-512 CPU (to compare the two, or to test both)."""
    flags = cpu_flags()
    if not NEEDED_FLAGS <= flags:
        return None
    best = "avx512" if AVX512_FLAGS <= flags else "avx2"
    asked = next((os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)), None)
    return "avx2" if asked == "avx2" else best


def helps_here() -> bool | None:
    """True where our operations were measured faster than OpenVINO's own: CPUs with AVX2 and no VNNI (where
    OpenVINO multiplies int4 weights in f32) and CPUs with AVX-512 VNNI (where its prompts are slower and it decodes
    well below memory speed: AMD Zen 4 and 5, Intel Ice Lake; docs/benchmarks.md). False where ours cannot
    run (no AVX2, FMA or F16C). None on the CPUs never measured, those with AVX-VNNI but no AVX-512 or with AMX
    (whose matrix units OpenVINO uses for prompts): there `measured.faster` times both paths at first load and
    remembers the faster."""
    flags = cpu_flags()
    if not NEEDED_FLAGS <= flags:
        return False
    if flags & {"amx_int8", "amx_bf16"}:
        return None
    if AVX512_FLAGS <= flags:
        return True
    return None if flags & {"avx512_vnni", "avx_vnni"} else True
