"""Exact-answer accuracy of the nano model on held-out pictures: torch, and OpenVINO at fp16 / int8 / int4.

    python -m tools.nano.evaluate                       # from the repository root: 600 questions, all four columns
    python -m tools.nano.evaluate --questions 200 --columns int8
    python -m tools.nano.evaluate --sets all --questions 600 --columns torch,int8,int4    # issue 14's sets

The held-out questions come from seeds that training never draws (shapes.HELDOUT_SEEDS). An answer
counts when the decoded text equals the expected answer exactly. The OpenVINO columns go through the
product path: `load_engine(folder, compression, precision="f32")` then `engine.ask(picture, question)`,
greedy, as a user would get it (f32 compute so that the columns differ only by weight compression).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mvlm_magic.demo import conversations, shapes
from mvlm_magic.errors import MvlmError
from mvlm_magic.export.compress import Compression

COLUMNS = ("torch", "fp16", "int8", "int4")
MAX_NEW_TOKENS = 24
CHAT_MAX_NEW_TOKENS = 192  # a detailed description of nine objects is ~140 tokens
# issue 14's bars per held-out set (followup: every turn 2-4; detail: exact text)
BARS = {"followup": 0.95, "absent": 0.95, "yesno": 0.95, "count_all": 0.95, "count_colour": 0.95, "detail": 0.90,
        "variants": 0.95, "outside": 0.90, "count_shape": 0.95}


def default_model() -> Path:
    from mvlm_magic.demo import BUNDLED_DIR

    return BUNDLED_DIR


def score(answer: Callable[[object, str], str], questions, log=None) -> dict:
    """Run `answer(picture, question)` over (seed, kind, question, expected) tuples; accuracy overall and
    per question kind, plus every answer given (for agreement between columns)."""
    per_kind: dict[str, list[int]] = {}
    answers = []
    picture, picture_seed = None, None
    started = time.perf_counter()
    for i, (seed, kind, question, expected) in enumerate(questions):
        if seed != picture_seed:
            picture, picture_seed = shapes.picture(seed)[0], seed
        got = answer(picture, question)
        answers.append(got)
        per_kind.setdefault(kind, []).append(int(got == expected))
        if log and (i + 1) % 100 == 0:
            done = sum(sum(v) for v in per_kind.values())
            log(f"  {i + 1}/{len(questions)}  {done / (i + 1):.3f}")
    n = sum(len(v) for v in per_kind.values())
    return {
        "questions": n,
        "correct": sum(sum(v) for v in per_kind.values()),
        "accuracy": sum(sum(v) for v in per_kind.values()) / max(1, n),
        "per_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(per_kind.items())},
        "seconds": round(time.perf_counter() - started, 1),
        "answers": answers,
    }


def torch_answerer(folder: Path) -> Callable[[object, str], str]:
    import torch

    from mvlm_magic.model.mobilevlm import MobileVLM
    from mvlm_magic.runtime.preprocess import preprocess_image
    from mvlm_magic.runtime.tokenizer import Tokenizer, conversation_ids

    model = MobileVLM.from_folder(folder, dtype=torch.float32)
    tokenizer = Tokenizer.from_folder(folder)

    def answer(picture, question: str) -> str:
        ids = conversation_ids(tokenizer, question)
        pixel_values = torch.from_numpy(preprocess_image(picture))
        new_ids = model.generate(ids, pixel_values, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tokenizer.eos_id)
        return tokenizer.decode(new_ids).strip()

    return answer


def openvino_answerer(folder: Path, compression: str, cache_dir=None, precision: str = "f32"):
    from mvlm_magic.loader import load_engine

    engine = load_engine(folder, compression, precision=precision, cache_dir=cache_dir)

    def answer(picture, question: str) -> str:
        return engine.ask(picture, question, max_new_tokens=MAX_NEW_TOKENS).text

    return answer


def score_chats(start: Callable[[object], Callable[[str], str]], chats, count_tokens=None, log=None) -> dict:
    """Run held-out chats (conversations.heldout_set): `start(picture)` gives `ask(question) -> answer` for one chat,
    which keeps its own earlier answers in the prompt. Accuracy per turn (1-4) and per question kind; with
    `count_tokens`, the answer lengths in tokens (for "a busy picture gives 60+ tokens")."""
    per_turn: dict[int, list[int]] = {}
    per_kind: dict[str, list[int]] = {}
    lengths, answers = [], []
    started = time.perf_counter()
    for i, (key, turns) in enumerate(chats):
        ask = start(conversations.heldout_picture(key))
        for turn, (kind, question, expected) in enumerate(turns, 1):
            got = ask(question)
            answers.append(got)
            per_turn.setdefault(turn, []).append(int(got == expected))
            per_kind.setdefault(kind, []).append(int(got == expected))
            if count_tokens:
                lengths.append(count_tokens(got))
        if log and (i + 1) % 100 == 0:
            log(f"  {i + 1}/{len(chats)} chats")
    followups = [x for turn, v in per_turn.items() if turn > 1 for x in v]
    every = [x for v in per_turn.values() for x in v]
    return {
        "questions": len(every),
        "accuracy": sum(every) / max(1, len(every)),
        "followup_questions": len(followups),
        "followup_accuracy": sum(followups) / len(followups) if followups else None,
        "per_turn": {t: round(sum(v) / len(v), 4) for t, v in sorted(per_turn.items())},
        "per_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(per_kind.items())},
        "max_tokens": max(lengths) if lengths else None,
        "seconds": round(time.perf_counter() - started, 1),
        "answers": answers,
    }


def set_accuracy(name: str, result: dict) -> float:
    """The figure a set's bar is about: turns 2-4 for "followup", every question otherwise."""
    return result["followup_accuracy"] if name == "followup" else result["accuracy"]


def torch_chat_starter(folder: Path):
    import torch

    from mvlm_magic.model.mobilevlm import MobileVLM
    from mvlm_magic.runtime.preprocess import preprocess_image
    from mvlm_magic.runtime.tokenizer import Tokenizer, conversation_ids

    model = MobileVLM.from_folder(folder, dtype=torch.float32)
    tokenizer = Tokenizer.from_folder(folder)

    def start(picture):
        pixel_values = torch.from_numpy(preprocess_image(picture))
        history: list[tuple[str, str]] = []

        def ask(question: str) -> str:
            ids = conversation_ids(tokenizer, history + [(question, None)])
            with torch.no_grad():
                new_ids = model.generate(ids, pixel_values, max_new_tokens=CHAT_MAX_NEW_TOKENS,
                                         eos_token_id=tokenizer.eos_id)
            answer = tokenizer.decode(new_ids).strip()
            history.append((question, answer))
            return answer

        return ask

    return start


def openvino_chat_starter(folder: Path, compression: str, cache_dir=None, precision: str = "f32", engine=None):
    from mvlm_magic.loader import load_engine

    engine = engine or load_engine(folder, compression, precision=precision, cache_dir=cache_dir)

    def start(picture):
        chat = engine.new_chat(picture)

        def ask(question: str) -> str:
            try:
                return chat.ask(question, max_new_tokens=CHAT_MAX_NEW_TOKENS).result().text
            except MvlmError as error:  # e.g. the conversation is full: a wrong answer, not the end of the run
                return f"[{error}]"

        return ask

    return start


def evaluate_sets(folder: Path, names, n_questions: int = 600, columns=COLUMNS, cache_dir=None, log=print) -> dict:
    """Issue 14's held-out sets (conversations.HELDOUT_SETS) in every column: accuracy per set and per turn."""
    from mvlm_magic.runtime.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(folder)
    count = lambda text: len(tokenizer.encode(text, add_bos=False))  # noqa: E731
    results: dict[str, dict] = {}
    for column in columns:
        compression, _, precision = column.partition("@")
        start = (torch_chat_starter(folder) if column == "torch"
                 else openvino_chat_starter(folder, compression, cache_dir, precision or "f32"))
        results[column] = {}
        for name in names:
            result = score_chats(start, conversations.heldout_set(name, n_questions), count)
            results[column][name] = result
            log(f"{column} {name}: {100 * set_accuracy(name, result):.1f}% (bar {100 * BARS[name]:.0f}%) "
                f"per turn {result['per_turn']} max {result['max_tokens']} tokens ({result['seconds']} s)")
    return {"model": str(folder), "results": results}


def sets_table(report: dict) -> str:
    results = report["results"]
    names = list(next(iter(results.values())))
    lines = ["| column | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| bar | " + " | ".join(f"{100 * BARS[n]:.0f}" for n in names) + " |")
    for column, per_set in results.items():
        lines.append(f"| {column} | " + " | ".join(f"{100 * set_accuracy(n, r):.1f}" for n, r in per_set.items())
                     + " |")
    return "\n".join(lines)


def evaluate(folder: Path, n_questions: int = 600, columns=COLUMNS, cache_dir=None, log=print) -> dict:
    questions = shapes.heldout_questions(n_questions)
    results: dict[str, dict] = {}
    for column in columns:
        log(f"{column}: {len(questions)} held-out questions")
        compression, _, precision = column.partition("@")  # "int4@auto": the default precision, our int4 kernel
        answerer = (torch_answerer(folder) if column == "torch"
                    else openvino_answerer(folder, compression, cache_dir, precision or "f32"))
        results[column] = score(answerer, questions, log)
        log(f"{column}: accuracy {results[column]['accuracy']:.4f} {results[column]['per_kind']} "
            f"({results[column]['seconds']} s)")
    if "torch" in results:
        reference = results["torch"]["answers"]
        for result in results.values():
            result["agreement_with_torch"] = sum(a == b for a, b in zip(result["answers"], reference)) / len(reference)
    return {"model": str(folder), "questions": [list(q) for q in questions], "results": results}


def table(report: dict) -> str:
    results = report["results"]
    kinds = sorted({k for r in results.values() for k in r["per_kind"]})
    lines = ["| column | accuracy | correct | " + " | ".join(kinds) + " | same answer as torch |",
             "|---|---|---|" + "---|" * len(kinds) + "---|"]
    for column, r in results.items():
        agreement = r.get("agreement_with_torch")
        lines.append(f"| {column} | {100 * r['accuracy']:.1f}% | {r['correct']}/{r['questions']} | "
                     + " | ".join(f"{100 * r['per_kind'].get(k, 0):.1f}" for k in kinds)
                     + f" | {'' if agreement is None else f'{100 * agreement:.1f}%'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--columns", default=",".join(COLUMNS),
                        help="comma-separated: torch and compressions (fp16, int8, int4, int4-sym-g128-r1, ...); "
                             "a compression@auto runs at the default precision (where our int4 kernel is used)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument("--sets", default="", help="issue 14's held-out sets instead of the single questions: "
                        "'all' or comma-separated of " + ", ".join(conversations.HELDOUT_SETS))
    args = parser.parse_args(argv)
    folder = args.model or default_model()
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    for column in columns:
        if column != "torch":
            try:
                Compression.parse(column.partition("@")[0])
            except MvlmError as error:
                parser.error(f"column {column!r}: {error}")
    if args.sets:
        names = conversations.HELDOUT_SETS if args.sets == "all" else [n.strip() for n in args.sets.split(",")]
        unknown = set(names) - set(conversations.HELDOUT_SETS)
        if unknown:
            known = ", ".join(conversations.HELDOUT_SETS)
            parser.error(f"--sets: unknown {', '.join(sorted(unknown))}; sets are {known}")
        report = evaluate_sets(folder, names, args.questions, columns, args.cache_dir,
                               log=lambda m: print(m, flush=True))
        print(sets_table(report))
    else:
        report = evaluate(folder, args.questions, columns, args.cache_dir, log=lambda m: print(m, flush=True))
        print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
