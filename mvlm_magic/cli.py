"""`mvlm`: the engine in a terminal.

    mvlm export MODEL [--compression int4] [--group-size 128] [--ratio 1] [--cache-dir DIR] [--out DIR]
    mvlm ask IMAGE "QUESTION" [--model MODEL] [--device CPU] [--stats] ...
    mvlm compare int4 int8 fp16 --image IMAGE [--question Q] [--model MODEL]   # weight formats side by side
    mvlm list | mvlm delete KEY
    mvlm demo                      # a generated picture, a question, a streamed answer
    mvlm serve [MODEL] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--pictures-folder DIR]  # OpenAI API
    mvlm serve [MODEL] --ray [ADDRESS] [--replicas N | --min-replicas A --max-replicas B]        # on Ray Serve
    mvlm handout NOTEBOOK [-o OUT]  # a copy to hand out: widgets out, their saved copies in (handout.py)

Bad input ends with one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .demo import BUNDLED_NAME
from .errors import MvlmError
from .export.compress import Compression
from .printing import stderr_progress, tokens_table
from .store import default_cache_dir, delete_export

DEFAULT_MODEL_HELP = "a checkpoint folder, a Hugging Face id, or a preset (mobilevlm-v2-1.7b, ...)"


def add_compression_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compression", default="int4",
                        help="weight format: int4 (default), int8, fp16, fp32, or an int4 label like int4-sym-g64-r0.9")
    parser.add_argument("--group-size", type=int, default=None, help="int4 group size (default: the preset's, 64)")
    parser.add_argument("--ratio", type=float, default=None,
                        help="int4 share of layers, the rest int8 (default: the preset's, 0.9)")
    parser.add_argument("--cache-dir", default=None, help=f"export cache (default {default_cache_dir()})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvlm", description="Ask MobileVLM about images, on OpenVINO.")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="export a checkpoint to OpenVINO IR (cached)")
    export.add_argument("model", help=DEFAULT_MODEL_HELP)
    add_compression_options(export)
    export.add_argument("--out", default=None,
                        help="also copy the export into this new folder: self-contained, loads without torch "
                             "(mvlm ask --model DIR, %%mvlm_load DIR, load_engine(DIR)), also from read-only media")

    ask = commands.add_parser("ask", help="ask a question about an image; the answer streams to stdout")
    ask.add_argument("image", help="path to an image file")
    ask.add_argument("question", help="the question")
    ask.add_argument("--model", default=None, help=DEFAULT_MODEL_HELP + "; with --server, the served model's name")
    ask.add_argument("--server", default=None, metavar="URL",
                     help="ask an OpenAI-compatible server (mvlm serve, ...) instead of loading a model here")
    ask.add_argument("--api-key", default=None, help="with --server: its key (default: $OPENAI_API_KEY)")
    ask.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU, AUTO, ...)")
    add_compression_options(ask)
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--top-k", type=int, default=0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--precision", default="auto", choices=("auto", "f32"))
    ask.add_argument("--stats", action="store_true", help="print timings to stderr")
    ask.add_argument("--show-tokens", action="store_true",
                     help="print each answer token with its probability and the likeliest alternatives")

    compare = commands.add_parser("compare", help="weight formats side by side: the same question, each format")
    compare.add_argument("formats", nargs="+", help="int4, int8, fp16, fp32 or int4 labels (e.g. int4 int8 fp16)")
    compare.add_argument("--image", required=True, help="path to an image file")
    compare.add_argument("--question", default=None, help="default: Describe the image.")
    compare.add_argument("--model", default=None, help=DEFAULT_MODEL_HELP)
    compare.add_argument("--device", default="CPU")
    compare.add_argument("--max-new-tokens", type=int, default=64)
    compare.add_argument("--cache-dir", default=None)

    listing = commands.add_parser("list", help="list cached exports")
    listing.add_argument("--cache-dir", default=None)
    delete = commands.add_parser("delete", help="delete a cached export")
    delete.add_argument("key", help="the export's folder name, as `mvlm list` shows it")
    delete.add_argument("--cache-dir", default=None)

    demo = commands.add_parser("demo", help="answer a question about a generated picture with the bundled model")
    demo.add_argument("--cache-dir", default=None)

    handout = commands.add_parser("handout", help="a copy of a saved notebook to hand out: its widgets' outputs "
                                                  "left out, their saved copies kept (reads well untrusted)")
    handout.add_argument("notebook", help="a saved .ipynb file")
    handout.add_argument("-o", "--out", default=None, help="where to write it (default: NAME.handout.ipynb beside it)")

    serve = commands.add_parser("serve", help="answer the OpenAI chat-completions API over HTTP (docs/serving.md)")
    serve.add_argument("model", nargs="?", default=BUNDLED_NAME, help=DEFAULT_MODEL_HELP + " (default: nano)")
    add_compression_options(serve)
    serve.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU, AUTO, ...)")
    serve.add_argument("--precision", default="auto", choices=("auto", "f32"))
    serve.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default): this machine only; 0.0.0.0: all")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (default: none)")
    serve.add_argument("--pictures-folder", default=None, help="image_url may name files under this folder")
    serve.add_argument("--name", default=None, help="the model id clients send (default: MODEL's last part)")
    serve.add_argument("--max-tokens", type=int, default=1024, help="the most tokens a request may ask for")
    serve.add_argument("--max-batch", type=int, default=16,
                       help="requests answered at once, their tokens decoded together (default: 16)")
    ray = serve.add_argument_group("Ray Serve (the ray extra): replicas across a Ray cluster behind Ray's proxy")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="serve on Ray: no ADDRESS starts a local Ray instance; `auto`, HOST:6379 or "
                          "ray://HOST:10001 joins a cluster (name MODEL before --ray)")
    ray.add_argument("--replicas", type=int, default=None, metavar="N", help="a fixed number of replicas")
    ray.add_argument("--min-replicas", type=int, default=None, metavar="N",
                     help="autoscaling on queue length: at least (1)")
    ray.add_argument("--max-replicas", type=int, default=None, metavar="N",
                     help="autoscaling: at most (default: as many as the cluster's CPUs hold)")
    ray.add_argument("--replica-cpus", type=int, default=None, metavar="N",
                     help="cores each replica reserves and uses (2)")
    ray.add_argument("--sticky-sessions", action="store_const", const=True, default=None,
                     help="requests with the same x-session-id header (%%mvlm_load --server sends one per "
                          "conversation) go to the same replica, which keeps the conversation's KV cache")
    return parser


def run_export(args) -> None:
    from .export import export_model

    compression = Compression.parse(args.compression, args.group_size, args.ratio)
    if args.out and Path(args.out).exists():  # before minutes of work, not after
        raise MvlmError(f"{args.out} already exists; name a new folder for --out (or delete that one).")
    model = default_model() if args.model == BUNDLED_NAME else args.model
    result = export_model(model, compression, cache_dir=args.cache_dir, progress=stderr_progress)
    print(copy_export(result.path, Path(args.out)) if args.out else result.path)


def copy_export(folder: Path, out: Path) -> Path:
    """The export folder copied to `out` (which must not exist yet); its manifest records every file's size, so a
    copy that lost a file is refused when it loads. Written under a temporary name and renamed."""
    import shutil

    temp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(temp, ignore_errors=True)
    shutil.copytree(folder, temp)
    temp.rename(out)
    return out


def run_ask(args) -> None:
    from .loader import load_engine
    from .runtime.sampling import GenerationConfig

    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, seed=args.seed, alternatives=5 if args.show_tokens else 0)
    from .runtime.chat import check_question
    from .runtime.preprocess import load_image

    image = load_image(args.image)  # fail on bad input before any export or compile
    check_question(args.question)
    if args.server:
        import os

        from .runtime.remote import RemoteEngine

        engine = RemoteEngine(args.server, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"))
    else:
        engine = load_engine(args.model or default_model(), args.compression, args.device, args.precision,
                             group_size=args.group_size, ratio=args.ratio, cache_dir=args.cache_dir,
                             progress=stderr_progress if args.stats else lambda *a: None)
    stream = engine.new_chat(image, prepare=False).ask(args.question, config)  # one question: nothing to prepare
    for chunk in stream:
        print(chunk, end="", flush=True)
    print()
    answer = stream.result()
    if args.show_tokens and answer.tokens:
        print(tokens_table(answer.tokens))
    if args.stats:
        print(f"{answer.timings.summary()} · finish: {answer.finish_reason}", file=sys.stderr)


def run_compare(args) -> None:
    from .compare import DEFAULT_QUESTION, compare_formats, text_table
    from .runtime.chat import check_question
    from .runtime.preprocess import load_image

    image = load_image(args.image)  # bad input fails before any export
    question = DEFAULT_QUESTION if args.question is None else args.question
    check_question(question)
    rows = compare_formats(args.model or default_model(), args.formats, image, question, device=args.device,
                           cache_dir=args.cache_dir, max_new_tokens=args.max_new_tokens, progress=stderr_progress)
    print(f"Q: {question}\n{text_table(rows)}")


def default_model():
    from .demo import bundled_model

    return bundled_model()


def run_list(args) -> None:
    from .loader import LISTING_COLUMNS, cached_exports

    rows = cached_exports(args.cache_dir)
    if not rows:
        print(f"no cached exports in {args.cache_dir or default_cache_dir()}")
        return
    for row in (LISTING_COLUMNS, *rows):  # tab-separated: a script reads it with cut -f
        print("\t".join(row))


def run_delete(args) -> None:
    print(f"deleted {delete_export(args.key, args.cache_dir)}")


def run_demo(args) -> None:
    from .demo import demo

    demo(cache_dir=args.cache_dir)


def run_serve(args) -> None:
    try:
        from .serve.app import run
    except ImportError as err:
        raise MvlmError(f"serving needs the serve extra ({err.name} is missing): pip install 'mvlm-magic[serve]'") \
            from None
    from .loader import load_engine
    from .serve import Settings
    from .serve.settings import served_name

    scaling = ray_scaling(args)  # bad Ray options fail first, before any import of ray
    settings = Settings(model_name=args.name or served_name(args.model), host=args.host, port=args.port,
                        api_key=args.api_key, pictures_folder=args.pictures_folder, max_tokens=args.max_tokens,
                        max_batch=args.max_batch)  # checked before loading
    if scaling is not None:
        return run_serve_on_ray(args, settings, scaling)
    engine = load_engine(args.model, args.compression, args.device, args.precision, group_size=args.group_size,
                         ratio=args.ratio, cache_dir=args.cache_dir, progress=stderr_progress)
    run(engine, settings)


RAY_OPTIONS = ("replicas", "min_replicas", "max_replicas", "replica_cpus", "sticky_sessions")
RAY_ADDRESS_SCHEMES = ("ray://", "http://", "https://")


def ray_scaling(args):
    """The replicas asked for with --ray (a `Scaling`), None without --ray; one line for a wrong combination."""
    given = {name: getattr(args, name) for name in RAY_OPTIONS if getattr(args, name) is not None}
    if args.ray is None:
        if given:
            raise MvlmError(f"--{next(iter(given)).replace('_', '-')} is for serving on Ray; add --ray [ADDRESS].")
        return None
    address = args.ray
    if address and address != "auto" and not address.startswith(RAY_ADDRESS_SCHEMES) \
            and not address.rpartition(":")[2].isdigit():
        raise MvlmError(f"--ray takes a Ray address (auto, HOST:6379 or ray://HOST:10001), not {address!r}; "
                        "name the model before --ray (mvlm serve MODEL --ray).")
    try:
        from .serve.ray_app import Scaling
    except ImportError as err:
        raise MvlmError(f"serving on Ray needs the ray extra ({err.name} is missing): "
                        "pip install 'mvlm-magic[serve,ray]'") from None
    return Scaling(**given)


def run_serve_on_ray(args, settings, scaling) -> None:
    import os

    from .loader import prepare_export
    from .serve import ray_app

    if not args.ray:  # a local instance has this machine's cores and no more
        scaling.check_fits(os.cpu_count() or 1)
    folder = prepare_export(args.model, args.compression, args.device, args.precision, group_size=args.group_size,
                            ratio=args.ratio, cache_dir=args.cache_dir, progress=stderr_progress)  # once, here
    ray_app.run(args.ray or None, settings, lambda: ray_app.application(
        folder, settings, scaling, args.device, args.precision, args.cache_dir))


def run_handout(args) -> None:
    from .handout import write_handout

    out, copied, other = write_handout(args.notebook, args.out)
    if not copied and not other:
        print(f"{out}: no widget outputs in it, written as it is")
        return
    left_out = f"; {other} other widget{'s' * (other != 1)} left out (no saved copy)" if other else ""
    print(f"{out}: {copied} widget{'s' * (copied != 1)} replaced by {'their' if copied != 1 else 'its'} saved copy"
          f"{left_out}")


HANDLERS = {"export": run_export, "ask": run_ask, "list": run_list, "delete": run_delete, "demo": run_demo,
            "compare": run_compare, "serve": run_serve, "handout": run_handout}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        HANDLERS[args.command](args)
    except MvlmError as err:
        print(f"mvlm: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmvlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
