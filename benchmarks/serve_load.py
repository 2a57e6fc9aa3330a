"""A class at once: N clients ask `mvlm serve` one question each about a picture of their own, at the same time, with
the official `openai` client; against one client alone on the same server (issue 17's targets).

    python benchmarks/serve_load.py                       # 1.7B V2 shape, random weights, int4, 16 clients, 128 tokens
    python benchmarks/serve_load.py --tiny --clients 4    # a smoke run (the tests do this)
    python benchmarks/serve_load.py --same-picture        # the picture on the board: one picture, a question each

Uses the checkpoint and export of benchmarks/run.py (same --work folder). Reports, for one client alone and for N
together: tokens/s over the whole run (prompt and picture included) and while decoding, first-token latency (p50,
p95), failed requests, and the server's peak memory against the one-client figure. Prints a table and writes
<out>/serve_load.json; figures go to docs/serving.md with the CPU named.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: the checkpoint builder and exporter)


def picture_url(seed: int) -> str:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """The server's resident memory now (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ask(client, url: str, new_tokens: int, seed: int, question: str = "Describe the picture.") -> dict:
    """One streamed request; when its first token and its end came, and how many tokens."""
    started = time.perf_counter()
    first, tokens = None, 0
    try:
        stream = client.chat.completions.create(
            model="bench", max_tokens=new_tokens, stream=True, seed=seed, temperature=0.0,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": question}]}],
            stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return {"start": started, "first": first, "end": time.perf_counter(), "tokens": tokens, "ok": True}
    except Exception as error:  # counted as a failed request
        return {"start": started, "first": None, "end": time.perf_counter(), "tokens": 0, "ok": False,
                "error": str(error)}


def together(client, clients: int, new_tokens: int, server_pid: int, same_picture: bool = False) -> dict:
    """`clients` requests at once: a picture each, or (same_picture) one picture that nobody asked about before
    and a question each."""
    urls = [picture_url(200 + clients) if same_picture else picture_url(100 + i) for i in range(clients)]
    questions = [f"Question {i + 1}: describe the picture." if same_picture else "Describe the picture."
                 for i in range(clients)]
    results: list[dict] = [{}] * clients
    peak = [rss_mb(server_pid)]
    done = threading.Event()

    def watch():
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mb(server_pid))

    def one(i):
        results[i] = ask(client, urls[i], new_tokens, seed=i, question=questions[i])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    ok = [r for r in results if r["ok"]]
    begin, end = min(r["start"] for r in results), max(r["end"] for r in results)
    firsts = sorted(r["first"] - r["start"] for r in ok if r["first"])
    decode_from = max(r["first"] for r in ok if r["first"])  # every client streaming from here on, or done
    tokens = sum(r["tokens"] for r in ok)
    decode_tokens = sum(r["tokens"] - 1 for r in ok)
    decode_window = [(r["first"], r["end"]) for r in ok if r["first"]]
    return {
        "clients": clients, "failed": clients - len(ok), "tokens": tokens,
        "wall_s": round(end - begin, 2),
        "tokens_per_s": round(tokens / (end - begin), 2),
        # decoding rate: each client's tokens after its first over the span in which any client was decoding
        "decode_tokens_per_s": round(decode_tokens / (max(e for _, e in decode_window)
                                                      - min(f for f, _ in decode_window)), 2),
        "first_token_p50_s": round(float(np.percentile(firsts, 50)), 2),
        "first_token_p95_s": round(float(np.percentile(firsts, 95)), 2),
        "last_first_token_s": round(decode_from - begin, 2),
        "peak_rss_mb": round(peak[0]),
        "errors": sorted({r.get("error", "") for r in results if not r["ok"]}),
    }


def decode_steps(base: str) -> tuple[float, float, float]:
    """The server's batched decoding so far: calls, rows, seconds (/metrics)."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("mvlm_decode_step")}
    return (values.get("mvlm_decode_steps_total", 0.0), values.get("mvlm_decode_step_rows_total", 0.0),
            values.get("mvlm_decode_step_seconds_total", 0.0))


def peers(checkpoint: Path, work: Path, args) -> dict:
    """The same language model (text prompts of our prompt's 253 positions) through genai's
    ContinuousBatchingPipeline and llama.cpp's parallel sequences (Q4_0), one client and N, each in a fresh process
    (benchmarks/batch_peer.py); a peer whose package is not installed is left out."""
    candidates = []
    folder = run.build_genai(checkpoint, work, args.compression)
    if folder is not None:
        candidates.append(("genai ContinuousBatchingPipeline", "genai", folder))
    q4_0 = run.build_gguf(checkpoint, work).get("llamacpp Q4_0")
    if q4_0 is not None:
        candidates.append(("llama.cpp Q4_0, parallel sequences", "llamacpp", q4_0))
    report = {}
    for name, kind, path in candidates:
        rows = {}
        for label, clients in (("alone", 1), ("together", args.clients)):
            done = subprocess.run([sys.executable, str(Path(__file__).parent / "batch_peer.py"), kind, str(path),
                                   "--clients", str(clients), "--new-tokens", str(args.new_tokens),
                                   "--prompt-tokens", "253"], capture_output=True, text=True)
            if done.returncode:
                print(f"{name} failed: {done.stderr.strip()[-300:]}")
                break
            rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            rows["ratio_tokens_per_s"] = round(rows["together"]["tokens_per_s"] / rows["alone"]["tokens_per_s"], 2)
            one, all_ = rows["alone"].get("decode_tokens_per_s"), rows["together"].get("decode_tokens_per_s")
            rows["ratio_decode"] = round(all_ / one, 2) if one and all_ else None
            report[name] = rows
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--compression", default="int4")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mvlm-bench"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-peers", action="store_true", help="not genai's and llama.cpp's batched decoding")
    parser.add_argument("--same-picture", action="store_true",
                        help="every client asks about one picture (a question each), as a class about the board's")
    args = parser.parse_args(argv)
    import openai

    work = args.work / ("tiny" if args.tiny else "real")  # benchmarks/run.py's folder
    checkpoint = work / "checkpoint-v2"
    if not (checkpoint / "config.json").is_file():
        run.python(run.BUILD, checkpoint, json.dumps({**(run.TINY if args.tiny else run.REAL_1_7B),
                                                      "projector_type": "ldpnetv2"}))
    vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    run.python(run.PAD_TOKENIZER, checkpoint, vocab)
    run.python(run.EXPORT, checkpoint, args.compression, work / "cache")  # once; the server finds it in the cache
    port = free_port()
    command = [sys.executable, "-m", "mvlm_magic.cli", "serve", str(checkpoint), "--compression", args.compression,
               "--cache-dir", str(work / "cache"), "--port", str(port), "--name", "bench",
               "--max-batch", str(args.max_batch), "--max-tokens", str(max(args.new_tokens, 16))]
    log = work / "serve_load.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=3600)
        ask(client, picture_url(99), 8, seed=0)  # warm up: first inferences copy weights
        report = {"cpu": run.cpu_name(), "compression": args.compression, "new_tokens": args.new_tokens,
                  "max_batch": args.max_batch, "same_picture": args.same_picture}
        for name, clients in (("alone", 1), ("together", args.clients)):
            before = decode_steps(base)
            report[name] = together(client, clients, args.new_tokens, server.pid, args.same_picture)
            after = decode_steps(base)
            steps, rows, seconds = (after[i] - before[i] for i in range(3))
            # the server's own count: tokens a second while its batched decoding calls ran (prompts excluded)
            report[name]["batched_tokens_per_s"] = round(rows / seconds, 2) if seconds else 0
            report[name]["mean_batch"] = round(rows / steps, 2) if steps else 0
    finally:
        server.terminate()
        server.wait(30)
    if not args.skip_peers:
        report["peers"] = peers(checkpoint, work, args)
    alone, many = report["alone"], report["together"]
    report["ratios"] = {
        "batched_tokens_per_s": round(many["batched_tokens_per_s"] / alone["batched_tokens_per_s"], 2)
        if alone["batched_tokens_per_s"] else 0,
        "tokens_per_s": round(many["tokens_per_s"] / alone["tokens_per_s"], 2),
        "decode_tokens_per_s": round(many["decode_tokens_per_s"] / alone["decode_tokens_per_s"], 2),
        "first_token_p95": round(many["first_token_p95_s"] / alone["first_token_p95_s"], 2),
    }
    print(f"{report['cpu']}; {args.compression}; {args.new_tokens} new tokens")
    print("| clients | tokens/s (all) | decode tokens/s | while batched | mean batch | first token p50 / p95 (s) "
          "| failed | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in (alone, many):
        print(f"| {row['clients']} | {row['tokens_per_s']} | {row['decode_tokens_per_s']} | "
              f"{row['batched_tokens_per_s']} | {row['mean_batch']} | {row['first_token_p50_s']} / "
              f"{row['first_token_p95_s']} | {row['failed']} | {row['peak_rss_mb']} |")
    print("ratios (N together / one alone):", report["ratios"])
    for name, rows in report.get("peers", {}).items():
        one, all_ = rows["alone"], rows["together"]
        print(f"{name}, text only: {all_['clients']} together {all_['tokens_per_s']} tokens/s (all), "
              f"{all_.get('decode_tokens_per_s')} decoding; one alone {one['tokens_per_s']} / "
              f"{one.get('decode_tokens_per_s')}; ratios {rows['ratio_tokens_per_s']} (all), {rows['ratio_decode']} "
              "(decoding)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serve_load.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
