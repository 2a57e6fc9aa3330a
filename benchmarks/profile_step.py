"""Where a decode step's time goes: our operations, OpenVINO's nodes, threads waiting (issue 18 §2).

    python benchmarks/run.py --export-only                     # the 1.7B-shaped export, once
    python benchmarks/profile_step.py --export /tmp/mvlm-bench/real/cache/checkpoint-v2--int4-sym-g64-r0.9--*
    python benchmarks/profile_step.py --export DIR --rows 16   # a batched step (batching.py), 16 cache rows
    python benchmarks/profile_step.py --export DIR --compare-read-ahead 12   # steps without / with read_ahead.cpp
    python benchmarks/profile_step.py --export DIR --compare-language OLD.xml --pairs 12   # another IR / this copy

A child process feeds a random prompt of `--context` positions, then decodes one token per cache row per step for
`--seconds`; Linux `perf` samples it meanwhile (cpu-clock, so it works without hardware counters) and the samples
are summed by what they ran. Shares are of both threads' time: a thread that waits for the other is counted where it
waits. Without `perf`, only the step times are printed. OpenVINO's own per-node counters (PERF_COUNT) do not time
our operations' `evaluate` correctly, hence the sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What a sampled symbol or library ran, first match wins.
KINDS = [
    ("weights read ahead (read_ahead.cpp)", ("token_matmul_ends",)),  # (a task of the pool: before its "tbb")
    ("our int4 MatMul", ("int4_tile", "int4_half_tiles", "Int4MatMul")),
    ("our int8 MatMul (int8 layers, head)", ("Int8MatMul", "int8_tile", "int8_half_tiles")),
    ("activations quantized", ("quantize_input", "quantize_row")),
    # (mvlm::quantize: the cache write of new keys and values)
    # (rotate_half: the rotary embedding, moved into the operation)
    ("our attention (KVAttention)", ("attend", "KVAttention", "few_scores", "weigh_values", "mvlm::quantize",
                                     "rotate_half")),
    ("threads waiting (TBB, scheduler)", ("libtbb", "sched", "schedule", "futex", "yield", "switch")),
    ("OpenVINO's nodes", ("libopenvino", "[JIT]")),
    ("Python, numpy, memory", ("python", "numpy", "multiarray", "libc", "malloc", "memmove", "memset")),
]


def child(args) -> None:
    import numpy as np

    from mvlm_magic.runtime.engine import Engine
    from mvlm_magic.runtime.kv_state import KVState

    engine = Engine(args.export, threads=2)
    kv = engine.kv
    width = engine.text_embeddings.outputs[0].get_partial_shape()[-1].get_length()
    rng = np.random.default_rng(0)
    states = [kv] + [kv.another_row(row) for row in range(1, args.rows)]
    with engine.lock:
        for state in states:  # each row its own prompt
            state.run(rng.standard_normal((1, args.context, width)).astype(np.float32) * 0.02, 0)
        pasts = [args.context] * args.rows
        x = rng.standard_normal((args.rows, 1, width)).astype(np.float32) * 0.02
        for _ in range(3):
            KVState.run_rows(states, pasts, x)
            pasts = [p + 1 for p in pasts]
        print("READY", flush=True)
        times, end = [], time.time() + args.seconds
        while time.time() < end:
            started = time.perf_counter()
            KVState.run_rows(states, pasts, x)
            times.append(time.perf_counter() - started)
            pasts = [p + 1 for p in pasts]
    print(json.dumps({"engine": engine.name, "steps": len(times), "step_ms": float(np.median(times) * 1e3),
                      "context_end": pasts[0]}), flush=True)


def compare(args) -> None:
    """One process, batches of 40 steps from a fresh prompt of `--context` positions, two variants in turn (the
    machine's minutes change both alike): our operations' read ahead (src/read_ahead.cpp) off and on, or
    (--compare-language) another language IR, e.g. a copy an earlier version made, and the export's own copy."""
    import ctypes

    import numpy as np

    from mvlm_magic.ops.build import extension
    from mvlm_magic.runtime.device import compile_model, core
    from mvlm_magic.runtime.engine import Engine
    from mvlm_magic.runtime.kv_state import compiled_state

    engine = Engine(args.export, threads=2)
    if args.compare_language:
        other = compiled_state(core().read_model(str(args.compare_language)),
                               lambda model: compile_model(model, engine.device, engine.precision, 2),
                               engine.num_image_tokens, engine.context_length)
        variants = {"other IR": (other, lambda: None), "this copy": (engine.kv, lambda: None)}
    else:
        switch = ctypes.CDLL(str(extension().library)).mvlm_read_ahead
        variants = {"off": (engine.kv, lambda: switch(0)), "on": (engine.kv, lambda: switch(1))}
    width = engine.text_embeddings.outputs[0].get_partial_shape()[-1].get_length()
    rng = np.random.default_rng(0)
    medians: dict[str, list[float]] = {name: [] for name in variants}
    with engine.lock:
        for _ in range(args.pairs):
            for name, (kv, setup) in variants.items():
                setup()
                kv.run(rng.standard_normal((1, args.context, width)).astype(np.float32) * 0.02, 0)
                x = rng.standard_normal((1, 1, width)).astype(np.float32) * 0.02
                times = []
                for past in range(args.context, args.context + 43):
                    started = time.perf_counter()
                    kv.run(x, past)
                    times.append(time.perf_counter() - started)
                medians[name].append(float(np.median(times[3:])) * 1e3)
            print(", ".join(f"{name} {times[-1]:.2f} ms" for name, times in medians.items()) + " a step", flush=True)
    (first, before), (second, after) = medians.items()
    ratios = [b / a for a, b in zip(before, after)]
    print(f"{engine.name}\nmedian step: {first} {np.median(before):.2f} ms, {second} {np.median(after):.2f} ms; "
          f"{second} / {first}, pair by pair: median {np.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")


def kind_of(line: str) -> str:
    lowered = line.lower()
    for kind, marks in KINDS:
        if any(mark.lower() in lowered for mark in marks):
            return kind
    return "other"


def summarize(perf_data: Path) -> dict[str, float]:
    """Share of samples by kind (dso and symbol of each sample)."""
    report = subprocess.run(["perf", "report", "-i", str(perf_data), "--sort", "dso,symbol", "--stdio"],
                            capture_output=True, text=True).stdout
    shares: dict[str, float] = {}
    for line in report.splitlines():
        fields = line.split()
        if not fields or not fields[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        share = float(fields[0].rstrip("%"))
        kind = kind_of(" ".join(fields[1:]))
        shares[kind] = shares.get(kind, 0.0) + share
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="an export folder (benchmarks/run.py --export-only)")
    parser.add_argument("--rows", type=int, default=1, help="cache rows decoding together (1: one chat)")
    parser.add_argument("--context", type=int, default=250, help="cached positions before the first step")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--compare-read-ahead", type=int, default=0, metavar="PAIRS",
                        help="instead: step times with our read ahead off and on, PAIRS batches of each, alternated")
    parser.add_argument("--compare-language", type=Path, metavar="XML",
                        help="instead: step times of this language IR and of the export's copy, alternated")
    parser.add_argument("--pairs", type=int, default=12, help="batches of each for --compare-language")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_read_ahead or args.compare_language:
        args.pairs = args.compare_read_ahead or args.pairs
        compare(args)
        return {}
    if args.child:
        child(args)
        return {}
    sys.path.insert(0, str(Path(__file__).parent))
    from run import cpu_name, memory_bandwidth_gbs, random_bits

    # this machine's bandwidth moves between two values every few minutes (docs/benchmarks.md): say which it was
    bandwidth_before = memory_bandwidth_gbs(data=random_bits(1 << 29))
    command = [sys.executable, __file__, "--child", "--export", str(args.export), "--rows", str(args.rows),
               "--context", str(args.context), "--seconds", str(args.seconds + 2)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY"):
            break
    shares = {}
    with tempfile.TemporaryDirectory() as work:
        perf_data = Path(work) / "perf.data"
        if shutil.which("perf"):
            subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-p", str(process.pid),
                            "-o", str(perf_data), "--", "sleep", str(args.seconds)], capture_output=True)
            if perf_data.is_file():
                shares = summarize(perf_data)
        result = json.loads(process.stdout.read().strip().splitlines()[-1])
    process.wait()
    result.update({"cpu": cpu_name(), "rows": args.rows, "shares_percent": shares,
                   "load_average": os.getloadavg()[0], "bandwidth_gbs_before": bandwidth_before})
    print(f"{result['engine']}\n{result['cpu']}; load average {result['load_average']:.2f}; memory read "
          f"{bandwidth_before:.1f} GB/s (2 threads) just before")
    print(f"{args.rows} row(s), context {args.context}-{result['context_end']}: {result['steps']} steps, "
          f"median {result['step_ms']:.1f} ms a step ({args.rows * 1e3 / result['step_ms']:.1f} tokens/s)")
    if not shares:
        print("(no `perf` here: step times only)")
    for kind, share in shares.items():  # ms of thread time per step: share x threads x step
        print(f"  {kind:40s} {share:5.1f} %  {share / 100 * 2 * result['step_ms']:6.1f} ms of thread time a step")
    return result


if __name__ == "__main__":
    main()
