"""`mvlm serve`: one engine behind the OpenAI chat-completions API, so a whole class shares one model.

    settings = Settings(model_name="nano", api_key="...")
    app = create_app(engine, settings)        # a Starlette app: /v1/chat/completions, /v1/models, /health, /metrics
    run(engine, settings)                     # the same app under uvicorn

`schema` reads and checks a request before any model work, `worker` answers one request at a time (the engine has
one KV cache) while the others queue, `stream` writes the API's JSON and server-sent events, `metrics` the
Prometheus text. Needs the serve extra (starlette, uvicorn); nothing here imports torch.
"""

from .settings import Settings

__all__ = ["Settings"]
