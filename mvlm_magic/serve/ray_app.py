"""`mvlm serve` on Ray Serve: the same Starlette app (app.py) in replicas across a Ray cluster, behind Ray's HTTP
proxy, so the same OpenAI API paths answer (docs/serving.md, "Past one machine: Ray Serve").

    mvlm serve nano --ray --replicas 2           # a local Ray instance on this machine
    mvlm serve /shared/nano-int4 --ray auto --min-replicas 1 --max-replicas 8 --host 0.0.0.0
    serve run examples/ray_serve.yaml            # Ray's own config file: `build(args)` below

Each replica compiles the engine and serves `create_app`'s app: its own batch of `max_batch` requests, its own
/metrics, and its Ray actor name in an `x-mvlm-replica` header. The export is found or made once, before any replica
starts (`loader.prepare_export`: the export, our operations' library and copies), so replicas only compile it and
never race to export. Ray Serve sends a replica at most `max_batch` requests (the rest wait in the proxy, where Ray's
autoscaler counts them) and adds replicas while the requests per replica stay above half a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import ray
from ray import serve

from ..errors import MvlmError
from ..loader import load_engine, prepare_export
from .app import create_app
from .settings import Settings, served_name

APP = "mvlm"  # the application's and the deployment's name on the cluster
REPLICA_HEADER = b"x-mvlm-replica"
STICKY_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"  # on x-session-id (Ray 2.60)
HEALTH_CHECK_SECONDS = 2.0  # how often Ray checks a replica: a dead one is replaced within seconds, not Ray's 10


@dataclass(frozen=True)
class Scaling:
    """How many replicas, the cores each reserves (and OpenVINO uses: replicas on one node do not fight), and how a
    request finds one."""

    replicas: int | None = None  # a fixed number, or autoscaling between the two below
    min_replicas: int | None = None  # None: 1 (never 0: a class would wait for a cold replica to load)
    max_replicas: int | None = None  # None: as many as the cluster's CPUs hold
    replica_cpus: int = 2
    # requests with the same x-session-id header go to the same replica (Ray's consistent-hash router), so a
    # follow-up finds its conversation's KV cache; without it, Ray picks the shorter of two replicas' queues
    sticky_sessions: bool = False

    def __post_init__(self):
        if self.replicas is not None and (self.min_replicas, self.max_replicas) != (None, None):
            raise MvlmError("give --replicas N (a fixed number) or --min-replicas/--max-replicas (autoscaling), "
                            "not both.")
        for name in ("replicas", "min_replicas", "max_replicas", "replica_cpus"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MvlmError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if (self.max_replicas or 1 << 30) < (self.min_replicas or 1):
            raise MvlmError(f"--max-replicas ({self.max_replicas}) is below --min-replicas ({self.min_replicas}).")

    def check_fits(self, cpus: int) -> None:
        """On a machine of `cpus` cores (a local Ray instance, which cannot grow), the first replicas must fit."""
        first = self.replicas or self.min_replicas or 1
        if first * self.replica_cpus > cpus:
            some = f"{first} replicas of {self.replica_cpus} cores need" if first > 1 else \
                f"a replica of {self.replica_cpus} cores needs"
            raise MvlmError(f"{some} {first * self.replica_cpus} cores; this machine has {cpus}: lower --replicas or "
                            "--replica-cpus.")

    def options(self, max_batch: int, cluster_cpus: float | None) -> dict:
        """Ray Serve's deployment options."""
        options = {"max_ongoing_requests": max_batch,  # a replica answers its batch; the rest queue in the proxy
                   "ray_actor_options": {"num_cpus": self.replica_cpus},
                   "health_check_period_s": HEALTH_CHECK_SECONDS}
        if self.sticky_sessions:
            options["request_router_config"] = {"request_router_class": STICKY_ROUTER}
        if self.replicas is not None:
            return {**options, "num_replicas": self.replicas}
        least = self.min_replicas or 1
        most = self.max_replicas or max(least, int((cluster_cpus or 0) // self.replica_cpus))
        # half a batch: a new replica takes a while to load, so it is asked for while the busy ones still have rows
        return {**options, "autoscaling_config": {"min_replicas": least, "max_replicas": most,
                                                  "target_ongoing_requests": max(1, max_batch // 2)}}


@serve.deployment(name=APP)
@serve.ingress()
class Replica:
    """One engine and its app. Ray calls `__serve_build_asgi_app__` after the constructor."""

    def __init__(self, folder: str, settings: Settings, device: str, precision: str, threads: int,
                 cache_dir: str | None):
        if not Path(folder).is_dir():
            raise MvlmError(f"the export {folder} is not on this node ({ray.util.get_node_ip_address()}); put the "
                            "cache folder on storage every node shares, or name an export folder they all have.")
        self.engine = load_engine(folder, device=device, precision=precision, threads=threads, cache_dir=cache_dir)
        self.settings, self.name = settings, ray.get_runtime_context().get_actor_name() or ""

    def __serve_build_asgi_app__(self):
        app = create_app(self.engine, self.settings)
        app.add_middleware(ReplicaHeader, name=self.name)
        return app


class ReplicaHeader:
    """Every response says which replica answered (a client, a test or a log can tell them apart)."""

    def __init__(self, app, name: str):
        self.app, self.header = app, (REPLICA_HEADER, name.encode())

    async def __call__(self, scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, sending if scope["type"] == "http" else send)


def application(folder: Path, settings: Settings, scaling: Scaling, device: str = "CPU", precision: str = "auto",
                cache_dir: str | None = None):
    """The deployment bound to its arguments: what `serve.run` and `serve run`/`serve deploy` take."""
    cpus = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
    return Replica.options(**scaling.options(settings.max_batch, cpus)).bind(
        str(folder), settings, device, precision, scaling.replica_cpus, cache_dir)


# build(args)'s keys: the `mvlm serve` options of the same names
SETTINGS_KEYS = ("api_key", "pictures_folder", "max_tokens", "max_batch")
MODEL_KEYS = ("model", "compression", "group_size", "ratio", "cache_dir", "device", "precision", "name")


def build(args: dict):
    """Ray's application builder (`import_path: mvlm_magic.serve.ray_app:build` in a Serve config file): `args`
    holds `mvlm serve`'s options by name (model, compression, cache_dir, name, api_key, max_batch, replicas,
    min_replicas, max_replicas, replica_cpus, ...)."""
    args = dict(args or {})
    known = {*SETTINGS_KEYS, *MODEL_KEYS, *(f.name for f in fields(Scaling))}
    unknown = sorted(set(args) - known)
    if unknown:
        raise MvlmError(f"unknown args {', '.join(unknown)} for mvlm_magic.serve.ray_app:build; known: "
                        f"{', '.join(sorted(known))}.")
    model = args.get("model", "nano")
    settings = Settings(model_name=args.get("name") or served_name(model),
                        **{key: args[key] for key in SETTINGS_KEYS if key in args})
    scaling = Scaling(**{f.name: args[f.name] for f in fields(Scaling) if f.name in args})
    folder = prepare_export(model, args.get("compression", "int4"), args.get("device", "CPU"),
                            args.get("precision", "auto"), group_size=args.get("group_size"),
                            ratio=args.get("ratio"), cache_dir=args.get("cache_dir"))
    return application(folder, settings, scaling, args.get("device", "CPU"), args.get("precision", "auto"),
                       args.get("cache_dir"))


def run(address: str | None, settings: Settings, make_app) -> None:
    """Deploy `make_app()` on a Ray cluster (None: start a local Ray instance) and wait until interrupted (Ctrl-C or
    SIGTERM); then the app leaves the cluster, or the local instance stops."""
    import signal
    import sys
    import threading

    try:  # a local instance without the dashboard (nothing listens but the proxy); a cluster keeps its own settings
        ray.init(**({"address": address} if address else {"include_dashboard": False}), log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise MvlmError(f"no Ray cluster answered at {address!r} ({str(error).strip().splitlines()[0]}); start one "
                        "(`ray start --head`) or check the address.") from None
    signal.signal(signal.SIGTERM, interrupted)  # after ray.init, which sets a handler of its own that aborts
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(make_app(), name=APP, route_prefix="/", blocking=False)
        except RuntimeError as error:
            raise MvlmError(f"the replicas did not start: {str(error).strip().splitlines()[-1]} (Ray's logs: "
                            "/tmp/ray/session_latest/logs/serve).") from None
        print(f"mvlm: serving {settings.model_name} on Ray at http://{settings.host}:{settings.port}/v1"
              + (" (API key required)" if settings.api_key else ""), file=sys.stderr, flush=True)
        threading.Event().wait()
    finally:
        if address:
            serve.delete(APP)
        ray.shutdown()


def interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the deployment as Ctrl-C does
