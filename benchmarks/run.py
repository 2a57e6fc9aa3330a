"""MobileVLM-1.7B on this CPU against its peers: export cost, then one question per fresh process.

    python benchmarks/run.py                     # real 1.7B shape (random weights), V2, 3 rounds
    python benchmarks/run.py --version v1 --rounds 5
    python benchmarks/run.py --tiny --rounds 1   # a smoke run on tiny shapes (the tests do this)
    python benchmarks/run.py --size 3b --export-only --compressions int4   # does a 3B export fit in memory?
    python benchmarks/run.py --size 7b --export-only --compressions int4   # 7B, sharded bf16 .bin + index

Steps: build a random-weight checkpoint of the real shape in the mtgv layout (speed does not depend
on weight values); export it with our exporter per compression (wall time, peak RSS); build the
peers' files (the notebook design's stateless INT4 language model; llama.cpp GGUF Q4_0 / Q4_K_M made
with llama.cpp's own conversion script from its PyPI source package, at benchmark time); then run the
candidates interleaved (A B C A B C ...), each in a fresh process, and take medians.
Writes <out>/benchmarks.json, <out>/benchmarks.md and <out>/benchmarks.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LLAMA_CPP_VERSION = "0.3.36"

REAL_1_7B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                 vocab_size=32000, vision_hidden_size=1024, vision_layers=24, vision_heads=16,
                 vision_intermediate_size=4096, init_std=0.02)
REAL_3B = {**REAL_1_7B, "hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 32,
           "num_attention_heads": 32}
# MobileVLM V2 7B: Vicuna-7B (hidden 4096, 32 layers, 32 heads, FFN 11008), stored sharded as the real one is
REAL_7B = {**REAL_1_7B, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "shards": 2}
SHAPES = {"1.7b": REAL_1_7B, "3b": REAL_3B, "7b": REAL_7B}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=None,
            vision_hidden_size=32, vision_layers=3, vision_heads=2, vision_intermediate_size=64, init_std=0.08)


def python(code: str, *args) -> dict:
    """Run a snippet in a fresh interpreter; it prints RESULT {json}; add its peak RSS."""
    wrapped = ("import json, resource, sys\n" + code +
               "\nresult['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024"
               "\nprint('RESULT ' + json.dumps(result))")
    return parse(subprocess.run([sys.executable, "-c", wrapped, *map(str, args)], capture_output=True, text=True))


def parse(run: subprocess.CompletedProcess) -> dict:
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"no result (exit {run.returncode}):\n{run.stderr[-3000:]}")


BUILD = """
import torch
from mvlm_magic.model.tiny import build_large_checkpoint, build_tiny_checkpoint
spec = json.loads(sys.argv[2])
torch.set_default_dtype(torch.bfloat16)  # the saved dtype: a 3B model in f32 plus its bf16 copy would not fit in 24 GB
if "shards" in spec:  # 7B: written shard by shard (pytorch_model-0000k-of-0000n.bin + index), one shard in memory
    build_large_checkpoint(sys.argv[1], **spec)
else:
    build_tiny_checkpoint(sys.argv[1], **spec)
result = {}
"""

# A random model of the real shape picks ids from all 32000 logits; the small trained tokenizer has 400
# pieces. Padding it with never-matched pieces lets every id decode, as a real LLaMA tokenizer would.
PAD_TOKENIZER = """
from pathlib import Path
from sentencepiece import sentencepiece_model_pb2
path, size = Path(sys.argv[1]) / "tokenizer.model", int(sys.argv[2])
model = sentencepiece_model_pb2.ModelProto()
model.ParseFromString(path.read_bytes())
for i in range(len(model.pieces), size):
    piece = model.pieces.add()
    piece.piece, piece.score = f"<extra_{i}>", 0.0
    piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
path.write_bytes(model.SerializeToString())
result = {"pieces": len(model.pieces)}
"""

EXPORT = """
import time
from pathlib import Path
from mvlm_magic.export.compress import Compression
from mvlm_magic.loader import find_or_export
started = time.perf_counter()
path, cached = find_or_export(sys.argv[1], Compression.parse(sys.argv[2]), Path(sys.argv[3]))
result = {"seconds": time.perf_counter() - started, "path": str(path), "cached": cached,
          "export_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # before the copies
# The copies of the IRs with our operations are written on the first CPU load; make them now, not in a timed load.
from mvlm_magic.ops import build, copies
if build.extension().library is not None:
    copies.copies(path)
"""

NOTEBOOK_IR = """
import time, nncf, openvino as ov
from mvlm_magic.model.mobilevlm import MobileVLM
from mvlm_magic.export.compress import quiet_rich
from mvlm_magic.export.convert import convert_language_model
started = time.perf_counter()
ov_model = convert_language_model(MobileVLM.from_folder(sys.argv[1]), stateful=False)
group = 128 if sys.argv[3] == "real" else 32
with quiet_rich():
    ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group, ratio=0.8)
ov.save_model(ov_model, sys.argv[2])
result = {"seconds": time.perf_counter() - started}
"""

LM_FOR_GGUF = """
import json, shutil, torch
from pathlib import Path
from safetensors.torch import save_file
from mvlm_magic.model.checkpoint import read_state_dict
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
state = {k: v.to(torch.float16).contiguous() for k, v in read_state_dict(src).items()
         if not k.startswith(("model.vision_tower", "model.mm_projector"))}
save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
config = json.loads((src / "config.json").read_text())
config = {k: v for k, v in config.items() if not k.startswith(("mm_", "vision")) and k != "_name_or_path"}
config.update(model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype="float16")
(dst / "config.json").write_text(json.dumps(config))
for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(src / name, dst / name)
result = {}
"""

QUANTIZE = """
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
params.nthread = 2
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
result = {"rc": rc}
"""


def llama_cpp_sources(work: Path) -> Path | None:
    """llama.cpp's conversion script, from the llama-cpp-python source package (never committed)."""
    folder = work / f"llama_cpp_python-{LLAMA_CPP_VERSION}"
    if not folder.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(work)], check=True)
        with tarfile.open(work / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz") as tar:
            tar.extractall(work, filter="data")
    return folder / "vendor" / "llama.cpp"


def build_gguf(checkpoint: Path, work: Path) -> dict[str, Path]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp peers skipped "
              f"(pip install llama-cpp-python=={LLAMA_CPP_VERSION} builds it from source, ~12 min)")
        return {}
    ggufs = {"llamacpp Q4_0": work / "lm-q4_0.gguf", "llamacpp Q4_K_M": work / "lm-q4_k_m.gguf"}
    if all(p.is_file() for p in ggufs.values()):
        return ggufs
    python(LM_FOR_GGUF, checkpoint, work / "lm-hf")
    llama = llama_cpp_sources(work)
    env = {**os.environ, "PYTHONPATH": str(llama / "gguf-py")}
    subprocess.run([sys.executable, str(llama / "convert_hf_to_gguf.py"), str(work / "lm-hf"), "--outtype", "f16",
                    "--outfile", str(work / "lm-f16.gguf")], check=True, env=env, capture_output=True)
    for path, ftype in zip(ggufs.values(), ("LLAMA_FTYPE_MOSTLY_Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_K_M")):
        python(QUANTIZE, work / "lm-f16.gguf", path, ftype)
    return ggufs


def build_genai(checkpoint: Path, work: Path, compression: str) -> Path | None:
    try:
        import openvino_genai  # noqa: F401
    except ImportError:
        print("openvino-genai is not installed: its peer is skipped (pip install openvino-genai==2026.4.1.0)")
        return None
    folder = work / f"genai-{checkpoint.name}-{compression}"
    if not (folder / "openvino_model.xml").is_file():
        subprocess.run([sys.executable, str(HERE / "genai_peer.py"), str(checkpoint), str(folder),
                        "--compression", compression], check=True, capture_output=True)
    return folder


def memory_bandwidth_gbs(threads: int = 2, data: np.ndarray | None = None) -> float:
    """Read bandwidth of `threads` threads (the candidates' count): each ORs together its part of `data` (a 1 GB
    array of random bits unless given; numpy releases the GIL there; a float sum would be bound by its adds, not by
    memory); best of 3. Random bits, so that nothing in the memory system can read less than it is asked to."""
    import threading

    data = random_bits() if data is None else data
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(part,)) for part in parts]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, data.nbytes / (time.perf_counter() - started) / 1e9)
    return best


def random_bits(nbytes: int = 1 << 30) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1 << 63, size=nbytes // 8, dtype=np.uint64)


def prepare(args, work: Path) -> tuple[dict, dict, dict]:
    checkpoint = work / f"checkpoint-{args.version}"
    projector = {"v1": "ldpnet", "v2": "ldpnetv2"}[args.version]
    spec = {**(TINY if args.tiny else SHAPES[args.size]), "projector_type": projector}
    if not (checkpoint / "config.json").is_file():
        print(f"building {checkpoint}", flush=True)
        python(BUILD, checkpoint, json.dumps(spec))
    vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    python(PAD_TOKENIZER, checkpoint, vocab)  # a no-op once padded
    exports, export_costs = {}, {}
    measured = work / "export-costs.json"  # an export found in the cache keeps the cost measured when it was made
    known = json.loads(measured.read_text()) if measured.is_file() else {}
    for compression in args.compressions:
        cost = python(EXPORT, checkpoint, compression, work / "cache")
        exports[f"ours {compression}"] = cost["path"]
        key = f"{args.version} {compression}"
        if not cost["cached"] or key not in known:
            peak = cost.get("export_peak_rss_mb", cost["peak_rss_mb"])  # the export's own, not the copies' after it
            known[key] = {"seconds": round(cost["seconds"], 1), "peak_rss_gb": round(peak / 1024, 2),
                          "cached": cost["cached"]}
            measured.write_text(json.dumps(known, indent=2))
        export_costs[compression] = known[key]
        print(f"export {compression}: {export_costs[compression]}", flush=True)
    if args.export_only:
        return {}, export_costs, {}
    candidates = {name: ["ours", "--export", path] for name, path in exports.items()}
    for variant in args.variant:  # "COMPRESSION KEY=VALUE ...": one of our exports with other OpenVINO properties
        compression, *properties = variant.split()
        candidates[f"ours {variant}"] = ["ours", "--export", exports[f"ours {compression}"], "--ov-config", *properties]
    if not args.skip_notebook:
        notebook_ir = work / f"notebook-lm-{args.version}.xml"
        if not notebook_ir.is_file():
            python(NOTEBOOK_IR, checkpoint, notebook_ir, "tiny" if args.tiny else "real")
        candidates["notebook design INT4"] = ["notebook", "--checkpoint", checkpoint, "--lm-ir", notebook_ir]
    if not args.skip_torch:
        candidates["torch fp32"] = ["torch", "--checkpoint", checkpoint]
    if not args.skip_genai:
        compression = args.compressions[0]  # the same weights as our first candidate
        genai = build_genai(checkpoint, work, compression)
        if genai:
            candidates[f"genai LLMPipeline {compression}"] = ["genai", "--genai", genai]
    if not args.skip_llamacpp:
        for name, gguf in build_gguf(checkpoint, work).items():
            candidates[name] = ["llamacpp", "--gguf", gguf]
    sizes = {name: lm_bytes(cmd) for name, cmd in candidates.items()}
    return candidates, export_costs, sizes


def lm_bytes(command: list) -> int | None:
    """Bytes of language-model weights a decode step reads (file size of the weights)."""
    kind, value = command[0], Path(str(command[-1] if command[0] != "ours" else command[2]))
    if kind == "ours":
        return (value / "language.bin").stat().st_size + (value / "text_embeddings.bin").stat().st_size // 1000
    if kind == "notebook":
        return value.with_suffix(".bin").stat().st_size
    if kind == "llamacpp":
        return value.stat().st_size
    if kind == "genai":
        return (value / "openvino_model.bin").stat().st_size
    return None


POSITIONS = """
sys.path.insert(0, sys.argv[2])
from candidates import prompt_ids
ids = prompt_ids(sys.argv[1])
result = {"positions": len(ids) - 1 + 144}
"""


def run_rounds(candidates: dict, rounds: int, new_tokens: int, prompt_tokens: int) -> dict[str, list[dict]]:
    """Each candidate `rounds` times, interleaved, in fresh processes; the memory bandwidth is measured just before
    each run (`bandwidth_gbs` of its result): on the machines we rent it moves between two values, ~34 and ~55 GB/s
    for 2 threads, every few minutes (docs/benchmarks.md "Results (2026-12-05)")."""
    results: dict[str, list[dict]] = {name: [] for name in candidates}
    data = random_bits()
    for round_index in range(rounds):
        for name, command in candidates.items():
            bandwidth = memory_bandwidth_gbs(data=data)
            run = subprocess.run([sys.executable, str(HERE / "candidates.py"), *map(str, command),
                                  "--new-tokens", str(new_tokens), "--prompt-tokens", str(prompt_tokens)],
                                 capture_output=True, text=True)
            results[name].append({**parse(run), "bandwidth_gbs": bandwidth})
            r = results[name][-1]
            warm = (f"warm {r['warm_ttft_ms']:.0f} ms, follow-up {r['follow_up_ttft_ms']:.0f} ms, "
                    if "warm_ttft_ms" in r else "")
            print(f"round {round_index + 1} {name}: ttft {r['ttft_ms']:.0f} ms, {warm}{r['decode_tps']:.2f} tok/s, "
                  f"{r['peak_rss_mb']:.0f} MB, bandwidth before {bandwidth:.1f} GB/s", flush=True)
    return results


PEER = "llamacpp Q4_0"  # the peer the decode ratios are paired with, round by round


def paired(results: dict[str, list[dict]], peer: str) -> dict[str, list[float]]:
    """Each candidate's decode over the peer's, round by round (a round runs every candidate within minutes)."""
    if peer not in results:
        return {}
    return {name: [r["decode_tps"] / p["decode_tps"] for r, p in zip(runs, results[peer])]
            for name, runs in results.items() if name != peer}


def medians(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(isinstance(r[k], (int, float)) for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(report, indent=2))
    rows = report["medians"]
    lines = [f"Machine: {report['machine']}; memory read bandwidth {report['bandwidth_gbs']:.1f} GB/s (2 threads, "
             "median of the measurements before each run).",
             f"Checkpoint: {report['checkpoint']}; {report['rounds']} rounds, interleaved, fresh process each, "
             f"medians; prompt {report['prompt_positions']} positions (144 of them image), "
             f"{report['new_tokens']} new tokens.",
             "",
             "Cold: the picture and the prompt from nothing. Warm: the same question once its picture was "
             "prepared (Engine.prepare finished: it was shown seconds before). Follow-up: the next question of "
             "that chat.",
             "",
             "| candidate | image encode ms | first token ms (cold) | warm first token ms | follow-up first token ms "
             "| decode tok/s | bandwidth limit tok/s | of the limit | load s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(m, key):
        return f"{m[key]:.0f}" if key in m else "n/a"

    for name, m in rows.items():
        limit, share = report["limits"].get(name), report["of_limit"].get(name)
        lines.append(f"| {name} | {ms(m, 'image_ms')} | {m['ttft_ms']:.0f} | {ms(m, 'warm_ttft_ms')} | "
                     f"{ms(m, 'follow_up_ttft_ms')} | {m['decode_tps']:.2f} | "
                     f"{f'{limit:.1f}' if limit else 'n/a'} | {f'{share:.2f}x' if share else 'n/a'} | "
                     f"{m['load_s']:.1f} | {m['peak_rss_mb']:.0f} |")
    if report["paired"]:
        lines += ["", f"Decode over {PEER}'s, round by round:", ""]
        lines += [f"- {name}: " + ", ".join(f"{ratio:.2f}" for ratio in ratios)
                  for name, ratios in report["paired"].items()]
    lines += ["", "| export | seconds | peak RSS GB |", "|---|---|---|"]
    lines += [f"| {c} | {v['seconds']} | {v['peak_rss_gb']} |" for c, v in report["exports"].items()]
    (out / "benchmarks.md").write_text("\n".join(lines) + "\n")
    draw_chart(out / "benchmarks.png", rows)


def draw_chart(path: Path, rows: dict) -> None:
    """Two horizontal bar charts (decode tok/s, first token ms), drawn with PIL to avoid a plotting dependency."""
    from PIL import Image, ImageDraw

    names = list(rows)
    width, bar_h, label_w = 900, 26, 250
    height = 60 + 2 * (len(names) * bar_h + 50)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = 10
    for metric, title, colour in (("decode_tps", "decode tokens/s (higher is better)", (40, 110, 200)),
                                  ("ttft_ms", "time to first token, ms (lower is better)", (220, 120, 40))):
        draw.text((10, y), title, fill="black")
        y += 24
        top = max(rows[n][metric] for n in names) or 1
        for name in names:
            value = rows[name][metric]
            draw.text((10, y + 6), name, fill="black")
            length = int((width - label_w - 90) * value / top)
            draw.rectangle((label_w, y + 3, label_w + length, y + bar_h - 3), fill=colour)
            draw.text((label_w + length + 6, y + 6), f"{value:.1f}" if metric == "decode_tps" else f"{value:.0f}",
                      fill="black")
            y += bar_h
        y += 26
    image.save(path)


def cpu_name() -> str:
    """The CPU's name, family and model (the name alone says "AMD EPYC" for Zen 3 and Zen 5 alike) and the vector
    extensions that decide which of our operations' builds run."""
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{fields['model name']} (family {fields.get('cpu family')} model {fields.get('model')}; {' '.join(vector)})"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v2", choices=("v1", "v2"))
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run of the whole script")
    parser.add_argument("--size", default="1.7b", choices=tuple(SHAPES), help="the real shape (random weights)")
    parser.add_argument("--export-only", action="store_true", help="measure the exports (time, peak RSS) and stop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--compressions", nargs="+", default=["int4", "int8"])
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--skip-genai", action="store_true")
    parser.add_argument("--variant", action="append", default=[],
                        help='one of the exported compressions with extra OpenVINO properties, e.g. '
                             '"int4 DYNAMIC_QUANTIZATION_GROUP_SIZE=0" (repeatable)')
    parser.add_argument("--work", type=Path, default=Path("/tmp/mvlm-bench"))
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    work = args.work / ("tiny" if args.tiny else "real" if args.size == "1.7b" else f"real-{args.size}")
    work.mkdir(parents=True, exist_ok=True)
    candidates, export_costs, sizes = prepare(args, work)
    if args.export_only:
        print(json.dumps(export_costs, indent=2))
        return {"exports": export_costs}
    # the text-only peers (llama.cpp, genai) get a prompt as long as ours, image positions included
    positions = python(POSITIONS, work / f"checkpoint-{args.version}", HERE)["positions"]
    results = run_rounds(candidates, args.rounds, args.new_tokens, positions)
    bandwidth = statistics.median(r["bandwidth_gbs"] for runs in results.values() for r in runs)
    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.platform()}",
        "checkpoint": f"random MobileVLM {args.version} {'tiny' if args.tiny else args.size.upper() + ' shape'}",
        "rounds": args.rounds, "new_tokens": args.new_tokens, "prompt_positions": positions, "bandwidth_gbs": bandwidth,
        "exports": export_costs, "runs": results, "medians": {n: medians(r) for n, r in results.items()},
        # per candidate: the median of its rounds' bandwidth over the bytes a step reads; of_limit: the median of
        # each round's decode over the limit of the bandwidth measured just before it
        "limits": {n: medians(results[n])["bandwidth_gbs"] * 1e9 / b for n, b in sizes.items() if b},
        "of_limit": {n: statistics.median(r["decode_tps"] * b / (r["bandwidth_gbs"] * 1e9) for r in results[n])
                     for n, b in sizes.items() if b},
        "paired": paired(results, PEER),
        "lm_bytes": sizes,
    }
    write_report(args.out, report)
    print((args.out / "benchmarks.md").read_text())
    return report


if __name__ == "__main__":
    main()
