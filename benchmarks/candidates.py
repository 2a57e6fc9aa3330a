"""One benchmark candidate, one fresh process: answer one question, print one JSON line.

    python benchmarks/candidates.py ours   --export DIR
    python benchmarks/candidates.py torch  --checkpoint DIR
    python benchmarks/candidates.py notebook --checkpoint DIR --lm-ir FILE
    python benchmarks/candidates.py llamacpp --gguf FILE
    python benchmarks/candidates.py genai --genai DIR

The question: a 336x336 picture and a ~30-token question (template v1), then exactly N new tokens
(EOS ignored), greedy, 2 threads. Reported: image encode ms, time to first token ms (image encode +
prefill + first sample), decode tokens/s, load seconds, peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

QUESTION = "What shapes are in the picture and what colours are they?"
FOLLOW_UP = "Which of them is the biggest one?"
WARM_TOKENS = 16  # the warm answer's length: the follow-up's prompt holds it
THREADS = 2


def picture():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (336, 336), (40, 70, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 60, 160, 180), fill=(220, 30, 30))
    draw.rectangle((190, 150, 300, 260), fill=(240, 210, 40))
    return image


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    from mvlm_magic.runtime.engine import Engine

    started = time.perf_counter()
    ov_config = dict(item.split("=", 1) for item in args.ov_config)
    ops = ov_config.pop("kernels", "auto")  # (the variant's earlier name, still accepted)
    ops = ov_config.pop("ops", ops)  # a variant "ops=off" runs OpenVINO's own int4 path
    if "isa" in ov_config:  # "isa=avx2": our operations' AVX2 build on an AVX-512 CPU
        os.environ["MVLM_OPS_ISA"] = ov_config.pop("isa")
    engine = Engine(args.export, threads=THREADS, precision=args.precision, ov_config=ov_config, ops=ops)
    load_s = time.perf_counter() - started
    warm = engine.new_chat(picture()).ask("Hello there, what is this?", max_new_tokens=4, ignore_eos=True)
    warm.result()  # first-inference allocations out of the timed run, as every candidate gets
    engine.forget_pictures()  # cold: nothing of the picture known
    engine.prime()  # as just after loading: the system prompt computed, the rest of the prompt not
    answer = engine.new_chat(picture(), prepare=False).ask(QUESTION, max_new_tokens=args.new_tokens,
                                                           ignore_eos=True).result()
    t = answer.timings
    result = {"image_ms": t.image_encode_ms, "ttft_ms": t.first_token_ms, "prompt_tokens": t.prompt_tokens,
              "prefill_tokens": t.prefill_tokens, "decode_tps": t.decode_tokens_per_s, "new_tokens": t.new_tokens,
              "load_s": load_s, "ops": engine.ops}
    return result | run_warm(engine)


def run_warm(engine) -> dict:
    """The question asked once its picture was prepared (shown, then asked about seconds later), and a
    follow-up: first tokens only, the decode being the cold run's."""
    engine.forget_pictures()
    engine.prime()
    image = picture()
    started = time.perf_counter()
    preparation = engine.prepare(image)
    preparation.wait()
    prepare_ms = (time.perf_counter() - started) * 1000
    assert preparation.prefix and preparation.failure is None, preparation.failure
    chat = engine.new_chat(image)
    warm = chat.ask(QUESTION, max_new_tokens=WARM_TOKENS, ignore_eos=True).result().timings
    follow_up = chat.ask(FOLLOW_UP, max_new_tokens=WARM_TOKENS, ignore_eos=True).result().timings
    assert warm.picture_ready, "the prepared picture was not used"
    return {"prepare_ms": prepare_ms, "warm_ttft_ms": warm.first_token_ms, "warm_prefill_tokens": warm.prefill_tokens,
            "follow_up_ttft_ms": follow_up.first_token_ms, "follow_up_prefill_tokens": follow_up.prefill_tokens}


def prompt_ids(folder) -> list[int]:
    from mvlm_magic.runtime.tokenizer import Tokenizer, build_conversation, tokenize_with_image

    return tokenize_with_image(Tokenizer.from_folder(folder), build_conversation([(QUESTION, None)]))


def run_torch(args) -> dict:
    import torch

    from mvlm_magic.model.mobilevlm import MobileVLM
    from mvlm_magic.runtime.preprocess import preprocess_image

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    model = MobileVLM.from_folder(args.checkpoint)
    load_s = time.perf_counter() - started
    ids = prompt_ids(args.checkpoint)
    with torch.no_grad():
        model.generate(ids, torch.from_numpy(preprocess_image(picture())), max_new_tokens=2, eos_token_id=None)
        started = time.perf_counter()
        features = model.get_image_features(torch.from_numpy(preprocess_image(picture())))
        image_ms = (time.perf_counter() - started) * 1000
        embeds = model.build_inputs_embeds(ids, features)
        out = model.language_model(inputs_embeds=embeds, use_cache=True)
        token = int(out.logits[0, -1].argmax())
        first = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            out = model.language_model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
            token = int(out.logits[0, -1].argmax())
        done = time.perf_counter()
    return {"image_ms": image_ms, "ttft_ms": (first - started) * 1000, "prompt_tokens": embeds.shape[1],
            "decode_tps": (args.new_tokens - 1) / (done - first), "new_tokens": args.new_tokens, "load_s": load_s}


def run_notebook(args) -> dict:
    """The reference notebook's design: torch vision tower + projector + embeddings, an OpenVINO
    language model whose KV cache goes in and out as tensors, and a Python loop."""
    import openvino as ov
    import torch

    from mvlm_magic.model.mobilevlm import MobileVLM
    from mvlm_magic.runtime.preprocess import preprocess_image

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    model = MobileVLM.from_folder(args.checkpoint)
    request = ov.Core().compile_model(args.lm_ir, "CPU", {"INFERENCE_NUM_THREADS": THREADS,
                                                          "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    load_s = time.perf_counter() - started
    cfg = model.language_model.config
    kv_heads, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    past_names = [f"past_key_values.{i}.{k}" for i in range(cfg.num_hidden_layers) for k in ("key", "value")]
    ids = prompt_ids(args.checkpoint)

    def step(embeds, past):
        length = past[past_names[0]].shape[2] + embeds.shape[1]
        inputs = {"inputs_embeds": embeds, "attention_mask": np.ones((1, length), np.int64),
                  "position_ids": np.arange(length - embeds.shape[1], length)[None], **past}
        out = request.infer(inputs)
        logits = out["logits"][0, -1]
        return logits, {name: out[name.replace("past_key_values", "present")] for name in past_names}

    empty = {n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in past_names}
    with torch.no_grad():
        for timed in (False, True):  # one warm-up answer, then the measured one
            started = time.perf_counter()
            features = model.get_image_features(torch.from_numpy(preprocess_image(picture())))
            image_ms = (time.perf_counter() - started) * 1000
            embeds = model.build_inputs_embeds(ids, features).numpy()
            logits, past = step(embeds, empty)
            token = int(logits.argmax())
            first = time.perf_counter()
            for _ in range((args.new_tokens if timed else 3) - 1):
                token_embeds = model.embed_tokens(torch.tensor([[token]])).numpy()
                logits, past = step(token_embeds, past)
                token = int(logits.argmax())
            done = time.perf_counter()
    return {"image_ms": image_ms, "ttft_ms": (first - started) * 1000, "prompt_tokens": embeds.shape[1],
            "decode_tps": (args.new_tokens - 1) / (done - first), "new_tokens": args.new_tokens, "load_s": load_s}


def run_llamacpp(args) -> dict:
    """llama.cpp's language model only, on a prompt as long as ours (image positions as text ids)."""
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=1024, n_batch=512,
                verbose=False)
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    tokens = [1] + [int(t) for t in rng.integers(3, 400, args.prompt_tokens - 1)]
    result = {}
    for timed in (False, True):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        for _ in range((args.new_tokens if timed else 3) - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        done = time.perf_counter()
        result = {"image_ms": None, "ttft_ms": (first - started) * 1000, "prompt_tokens": len(tokens),
                  "decode_tps": (args.new_tokens - 1) / (done - first), "new_tokens": args.new_tokens,
                  "load_s": load_s}
    return result


def run_genai(args) -> dict:
    """openvino_genai.LLMPipeline (C++ loop) on our language model with the embedding inside
    (benchmarks/genai_peer.py); a text prompt as long as ours."""
    import openvino as ov
    import openvino_genai as og

    started = time.perf_counter()
    pipe = og.LLMPipeline(str(args.genai), "CPU", INFERENCE_NUM_THREADS=THREADS, PERFORMANCE_HINT="LATENCY")
    load_s = time.perf_counter() - started
    config = og.GenerationConfig()
    config.do_sample, config.ignore_eos = False, True
    rng = np.random.default_rng(0)
    result = {}
    for timed in (False, True):  # warm up with another prompt: genai caches prefixes
        ids = [1] + [int(t) for t in rng.integers(3, 400, args.prompt_tokens - 1)] if timed else [1, 7, 9, 11]
        config.max_new_tokens = config.min_new_tokens = args.new_tokens if timed else 3
        inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
        metrics = pipe.generate(inputs, config).perf_metrics
        result = {"image_ms": None, "ttft_ms": metrics.get_ttft().mean, "prompt_tokens": len(ids),
                  "decode_tps": 1000.0 / metrics.get_tpot().mean, "new_tokens": args.new_tokens, "load_s": load_s}
    return result


RUNNERS = {"ours": run_ours, "torch": run_torch, "notebook": run_notebook, "llamacpp": run_llamacpp,
           "genai": run_genai}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("candidate", choices=RUNNERS)
    parser.add_argument("--export", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--lm-ir", type=str)
    parser.add_argument("--gguf", type=str)
    parser.add_argument("--genai", type=str)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--ov-config", nargs="*", default=[], help="extra OpenVINO properties for ours: KEY=VALUE ...")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=224,
                        help="prompt length of the text-only peers (run.py passes our prompt's positions)")
    args = parser.parse_args()
    result = RUNNERS[args.candidate](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
