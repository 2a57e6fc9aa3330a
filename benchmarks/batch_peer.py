"""Peers of `mvlm serve`'s batched decoding, each in a process of its own, N prompts at once, on the same language
model (text only): openvino_genai's ContinuousBatchingPipeline (the embedding inside: benchmarks/genai_peer.py), and
llama.cpp with N parallel sequences in one context (llama-cpp-python's low-level API: one llama_decode a step for
all sequences, greedy).

    python benchmarks/batch_peer.py genai GENAI_FOLDER --clients 16 --new-tokens 128 --prompt-tokens 253
    python benchmarks/batch_peer.py llamacpp MODEL.gguf --clients 16 --new-tokens 128 --prompt-tokens 253

Prints one JSON line: the whole run's tokens/s (prompts included) and the tokens/s while decoding. benchmarks/
serve_load.py runs each for one client and for N, as it asks our server.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

THREADS = 2


def prompts(n: int, length: int, rng) -> list[list[int]]:
    return [[1] + [int(t) for t in rng.integers(3, 400, length - 1)] for _ in range(n)]


def genai(args) -> dict:
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

    def tensors(n: int, length: int) -> list:
        return [ov.Tensor(np.array([ids], np.int64)) for ids in prompts(n, length, rng)]

    def configs(n: int, tokens: int) -> list:
        config = og.GenerationConfig()
        config.do_sample, config.ignore_eos = False, True
        config.max_new_tokens = config.min_new_tokens = tokens
        return [config] * n

    pipe.generate(tensors(1, 8), configs(1, 3))  # warm up: first inferences
    started = time.perf_counter()
    results = pipe.generate(tensors(args.clients, args.prompt_tokens), configs(args.clients, args.new_tokens))
    seconds = time.perf_counter() - started
    tokens = sum(len(result.m_generation_ids[0]) for result in results)
    report = {"peer": "genai ContinuousBatchingPipeline", "clients": args.clients, "tokens": tokens,
              "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2)}
    try:  # decoding: from the last request's first token (every prompt in) to the end; genai times each request
        ttft = [result.perf_metrics.get_ttft().mean / 1000 for result in results]
        decoding = seconds - max(ttft)
        rate = args.clients * (args.new_tokens - 1) / decoding if decoding > 0 else None
        report["decode_tokens_per_s"] = round(rate, 2) if rate else None
        report["first_token_p95_s"] = round(float(np.percentile(ttft, 95)), 2)
    except (AttributeError, RuntimeError):
        report["decode_tokens_per_s"] = None
    return report


def llamacpp(args) -> dict:
    import ctypes

    import llama_cpp as lc

    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(args.folder.encode(), lc.llama_model_default_params())
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    params = lc.llama_context_default_params()
    params.n_ctx = args.clients * (args.prompt_tokens + args.new_tokens + 8)
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = args.clients
    params.n_threads = params.n_threads_batch = THREADS
    params.kv_unified = True  # one cache shared by the sequences, as the server's parallel slots
    context = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(512, 0, 1)

    def decode(items: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, wants logits)
        batch.n_tokens = len(items)
        for i, (token, position, sequence, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
            batch.seq_id[i][0] = sequence
        assert lc.llama_decode(context, batch) == 0, "llama_decode failed"

    def greedy(i: int) -> int:
        logits = np.ctypeslib.as_array(ctypes.cast(lc.llama_get_logits_ith(context, i),
                                                   ctypes.POINTER(ctypes.c_float)), shape=(vocab,))
        return int(logits.argmax())

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    last = []
    for sequence, ids in enumerate(prompts(args.clients, args.prompt_tokens, rng)):
        for start in range(0, len(ids), 512):  # each prompt in chunks of the batch
            chunk = ids[start:start + 512]
            decode([(t, start + j, sequence, start + j == len(ids) - 1) for j, t in enumerate(chunk)])
        last.append(greedy(len(ids) - 1 - (len(ids) - 1) // 512 * 512))
    decoding = time.perf_counter()
    for step in range(args.new_tokens - 1):
        decode([(last[s], args.prompt_tokens + step, s, True) for s in range(args.clients)])
        last = [greedy(s) for s in range(args.clients)]
    ended = time.perf_counter()
    tokens = args.clients * args.new_tokens
    lc.llama_batch_free(batch)
    lc.llama_free(context)
    lc.llama_model_free(model)
    return {"peer": "llama.cpp parallel sequences", "clients": args.clients, "tokens": tokens,
            "seconds": round(ended - started, 2), "tokens_per_s": round(tokens / (ended - started), 2),
            "decode_tokens_per_s": round(args.clients * (args.new_tokens - 1) / (ended - decoding), 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=["genai", "llamacpp"])
    parser.add_argument("folder", help="a genai folder (benchmarks/run.py build_genai) or a GGUF file")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=253)
    args = parser.parse_args(argv)
    report = genai(args) if args.peer == "genai" else llamacpp(args)
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
