"""A peer of `mvlm serve`'s batched decoding, in a process of its own: openvino_genai's ContinuousBatchingPipeline
on the same language model (text only, the embedding inside: benchmarks/genai_peer.py), N prompts at once.

    python benchmarks/batch_peer.py GENAI_FOLDER --clients 16 --new-tokens 128 --prompt-tokens 253

Prints one JSON line: the whole run's tokens/s (prompts included) and, from genai's own metrics, the mean time per
output token while decoding. benchmarks/serve_load.py runs it for one client and for N, as it asks our server.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

THREADS = 2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a genai folder (benchmarks/run.py build_genai)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=253)
    args = parser.parse_args(argv)
    import openvino as ov
    import openvino_genai as og

    scheduler = og.SchedulerConfig()
    scheduler.cache_size = 2  # GB of KV blocks: 16 x (253 + 128) positions of the 1.7B shape need ~1.2
    scheduler.max_num_seqs = max(args.clients, 1)
    scheduler.max_num_batched_tokens = 512
    scheduler.dynamic_split_fuse = True
    pipe = og.ContinuousBatchingPipeline(args.folder, scheduler, "CPU",
                                         {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"})
    rng = np.random.default_rng(0)

    def prompts(n: int, length: int) -> list:
        return [ov.Tensor(np.array([[1] + [int(t) for t in rng.integers(3, 400, length - 1)]], np.int64))
                for _ in range(n)]

    def configs(n: int, tokens: int) -> list:
        config = og.GenerationConfig()
        config.do_sample, config.ignore_eos = False, True
        config.max_new_tokens = config.min_new_tokens = tokens
        return [config] * n

    pipe.generate(prompts(1, 8), configs(1, 3))  # warm up: first inferences
    started = time.perf_counter()
    results = pipe.generate(prompts(args.clients, args.prompt_tokens), configs(args.clients, args.new_tokens))
    seconds = time.perf_counter() - started
    tokens = sum(len(result.m_generation_ids[0]) for result in results)
    report = {"peer": "genai ContinuousBatchingPipeline", "clients": args.clients, "tokens": tokens,
              "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2)}
    try:  # genai's own timing of each request: first token, then time per output token
        tpot = [result.perf_metrics.get_tpot().mean for result in results]
        ttft = [result.perf_metrics.get_ttft().mean / 1000 for result in results]
        report["decode_tokens_per_s"] = round(args.clients * 1000 / float(np.mean(tpot)), 2)
        report["first_token_p95_s"] = round(float(np.percentile(ttft, 95)), 2)
    except (AttributeError, RuntimeError):
        pass
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
