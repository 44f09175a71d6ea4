"""HTTP routes of our own beside Gradio's: liveness, readiness, and routes refused on purpose.

Each is a small function returning a Starlette ``Route``; ``server.launch`` passes them to Gradio's app, where
they are matched before Gradio's own. They answer on the event loop, never behind the GPU queue. Add new routes
as new functions at the end of this file.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..models.loading import ModelState, PipelineLoader


def health_route(demo: Any, loader: PipelineLoader, started: float) -> Route:
    """``GET /healthz``, liveness: 200 while the process serves (loading and warming up included), with the model
    state in its JSON; 503 only after a failed load, which a restart may cure."""

    async def healthz(_request: Request) -> JSONResponse:
        queue = getattr(demo, "_queue", None)
        body = {
            "status": "ok" if loader.state is not ModelState.FAILED else "degraded",
            "model": loader.model_name,
            "model_state": loader.state.value,
            "device": loader.device.type if loader.device is not None else None,
            "dtype": loader.dtype_name,
            "workers": [worker.name for worker in loader.workers],
            "queue_length": len(queue) if queue is not None else 0,
            "uptime_s": round(time.monotonic() - started, 1),
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return Route("/healthz", healthz, methods=["GET"])


def ready_route(loader: PipelineLoader) -> Route:
    """``GET /readyz``, readiness: 200 only when a model is loaded, warmed up and ready to generate; 503 while it
    loads or warms up and after a failed load, so a load balancer or Kubernetes sends no visitor here yet."""

    async def readyz(_request: Request) -> JSONResponse:
        ready = loader.state is ModelState.READY
        body = {"ready": ready, "model_state": loader.state.value}
        if loader.state is ModelState.FAILED:
            body["reason"] = loader.error_key
        return JSONResponse(body, status_code=200 if ready else 503)

    return Route("/readyz", readyz, methods=["GET"])


async def _no_deep_link(_request: Request) -> JSONResponse:
    return JSONResponse("")


# Gradio's /gradio_api/deep_link writes a session's last inputs and outputs (prompts, session log) to a file under
# the temporary folder that nothing deletes, and serves them to anyone given its name. This page has no deep-link
# button; the route answers as Gradio does for an unknown session and writes nothing (it is matched before Gradio's).
NO_DEEP_LINKS = Route("/gradio_api/deep_link", _no_deep_link, methods=["GET"])
