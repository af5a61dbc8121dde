"""Serving: the OpenAI-compatible server (a service job) and its engines.

    service.py      the `serve` kind: spec, port and address checks, run until stopped
    openai_api.py   the FastAPI app: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics
    engines.py      a loaded model that turns prompt ids into new ids (continuous batching)
"""
