"""The HTTP side: `create_app(engine, settings)` -> a Starlette app with the OpenAI chat-completions endpoints, and
`run` to serve it with uvicorn.

    POST /v1/chat/completions   stream true (server-sent events) or false
    GET  /v1/models             the one served model
    GET  /health                {"status": "ok"} once the engine is loaded
    GET  /metrics               Prometheus text (metrics.py)

Every refusal is a 4xx with the API's error object; a failure while answering is a 500 for that request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from .metrics import Metrics
from .schema import ChatRequest, parse_chat
from .settings import Settings
from .stream import ApiError, Reply, sse
from .worker import Job, Worker

WAIT_CHECK = 0.5  # s: how often a request waiting for its answer checks whether its client left


class ClientGone(Exception):
    """The client closed the connection before the answer began."""


def create_app(engine, settings: Settings) -> Starlette:
    metrics = Metrics()
    worker, started = Worker(engine, metrics, settings.max_batch), int(time.time())

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": settings.model_name})

    async def models(request: Request):
        authorize(request, settings)
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model_name, "object": "model", "created": started, "owned_by": "mvlm-magic"}]})

    async def prometheus(request: Request):
        batcher = engine.batcher
        steps = (batcher.calls, batcher.rows, batcher.seconds) if batcher is not None else (0, 0, 0.0)
        return PlainTextResponse(metrics.render(worker.queued, worker.running, *steps),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def chat_completions(request: Request):
        try:
            authorize(request, settings)
            chat = await run_in_threadpool(parse_chat, await read_body(request, settings.max_body_bytes), settings)
        except ApiError:
            metrics.request("client_error")
            raise
        job = Job(chat, asyncio.get_running_loop())
        worker.submit(job)
        try:
            first = await next_event(job, request)
        except ClientGone:
            metrics.request("cancelled")
            return PlainTextResponse("", status_code=499)
        if first[0] == "error":
            error = first[1]
            metrics.request("client_error" if error.status < 500 else "server_error")
            raise error
        reply = Reply(settings.model_name, chat.include_usage)
        if chat.stream:
            return StreamingResponse(streamed(job, first, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        kind, value = first
        try:
            while kind == "text":  # the text is in the Answer that ends the events
                kind, value = await next_event(job, request)
        except ClientGone:
            metrics.request("cancelled")
            return PlainTextResponse("", status_code=499)
        if kind != "done":
            metrics.request("server_error")
            raise value
        metrics.request("ok")  # its tokens were counted by the worker
        return JSONResponse(reply.completion(value))

    async def streamed(job: Job, first, reply: Reply):
        """role, deltas, finish (+ usage), [DONE]; closing the connection stops the answer (the finally)."""
        ended = False  # the answer was sent whole, or its failure was
        try:
            yield reply.role()
            kind, value = first
            while kind == "text":
                yield reply.delta(value)
                kind, value = await job.events.get()
            ended = True
            if kind == "done":
                metrics.request("ok")
                yield reply.finish(value)
            else:  # failed after its first text: the status is sent already, so the error goes in the stream
                metrics.request("server_error")
                yield sse(value.body())
        finally:
            if not ended:
                job.stop.set()
                metrics.request("cancelled")

    routes = [Route("/health", health), Route("/metrics", prometheus), Route("/v1/models", models),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: server_error},
                    lifespan=lifespan(worker))
    app.state.worker, app.state.metrics = worker, metrics
    return app


def lifespan(worker: Worker):
    @contextlib.asynccontextmanager
    async def span(app):
        yield
        worker.close()  # the answering thread ends after the request it is on

    return span


def authorize(request: Request, settings: Settings) -> None:
    if settings.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, key = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
        raise ApiError(401, "the API key is missing or wrong; send `Authorization: Bearer <key>` with the key the "
                            "server was started with.", "invalid_request_error", None, "invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (a declared length over it: before reading any)."""
    too_big = ApiError(413, f"the request body is over this server's limit of {limit:,} bytes; send a smaller "
                            "picture.", "invalid_request_error", None, "request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    return bytes(body)


async def next_event(job: Job, request: Request):
    """The answer's next event, before a response has begun: a client that leaves meanwhile stops its answer, or
    takes its request out of the queue. (Once a stream has begun, Starlette ends it when the client leaves.)"""
    task = asyncio.ensure_future(job.events.get())
    while True:
        done, _ = await asyncio.wait({task}, timeout=WAIT_CHECK)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            job.stop.set()
            raise ClientGone


async def api_error(request: Request, error: ApiError):
    return JSONResponse(error.body(), status_code=error.status)


async def http_error(request: Request, error: HTTPException):
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    message = {404: f"there is no {request.url.path}; the API is under /v1 (POST /v1/chat/completions).",
               405: f"{request.method} is not allowed on {request.url.path}."}.get(error.status_code, error.detail)
    return JSONResponse(ApiError(error.status_code, message, kind).body(), status_code=error.status_code)


async def server_error(request: Request, error: Exception):
    return JSONResponse(ApiError(500, f"the server failed ({type(error).__name__}); try again.", "server_error").body(),
                        status_code=500)


def run(engine, settings: Settings) -> None:
    """Serve until interrupted; one line on stderr says where."""
    import sys

    import uvicorn

    print(f"mvlm: serving {settings.model_name} at http://{settings.host}:{settings.port}/v1"
          + (" (API key required)" if settings.api_key else ""), file=sys.stderr, flush=True)
    uvicorn.run(create_app(engine, settings), host=settings.host, port=settings.port, log_level="warning",
                timeout_graceful_shutdown=2)


__all__ = ["ChatRequest", "create_app", "run"]
