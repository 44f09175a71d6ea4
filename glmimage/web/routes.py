"""HTTP routes of our own beside Gradio's: liveness, readiness, metrics, and routes refused on purpose.

Each is a small function returning a Starlette ``Route``; ``server.launch`` passes them to Gradio's app, where
they are matched before Gradio's own. They answer on the event loop, never behind the GPU queue. Add new routes
as new functions at the end of this file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..maintenance import Drain, MaintenanceFile
from ..metrics import CONTENT_TYPE, Metrics
from ..models.loading import ModelState, PipelineLoader
from .gradio_adapter import queue_length


def health_route(
    demo: Any, loader: PipelineLoader, started: float, replicas: Callable[[], dict[str, Any]] = dict
) -> Route:
    """``GET /healthz``, liveness: 200 while the process serves (loading and warming up included), with the model
    state in its JSON; 503 only after a failed load, which a restart may cure. ``replicas``: with ``--backend
    ray``, the replicas ready versus wanted (``loader`` is then the Ray pool's view of the model)."""

    async def healthz(_request: Request) -> JSONResponse:
        body = {
            "status": "ok" if loader.state is not ModelState.FAILED else "degraded",
            "model": loader.model_name,
            "model_state": loader.state.value,
            "device": loader.device.type if loader.device is not None else None,
            "dtype": loader.dtype_name,
            "workers": [worker.name for worker in loader.workers],
            "queue_length": queue_length(demo),
            "uptime_s": round(time.monotonic() - started, 1),
            **replicas(),
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return Route("/healthz", healthz, methods=["GET"])


def not_ready_reasons(loader: PipelineLoader, maintenance: MaintenanceFile | None, drain: Drain) -> list[str]:
    """Why a load balancer should send new visitors elsewhere; empty when this server takes work: the model is
    loaded and warmed up, no maintenance file exists, and no shutdown is under way."""
    reasons = []
    if drain.draining:
        reasons.append("shutting_down")
    if maintenance is not None and maintenance.current() is not None:
        reasons.append("maintenance")
    if loader.state is not ModelState.READY:
        reasons.append(f"model_{loader.state.value}")
    return reasons


def ready_route(
    loader: PipelineLoader, reasons: Callable[[], list[str]], replicas: Callable[[], dict[str, Any]] = dict
) -> Route:
    """``GET /readyz``, readiness: 200 only when a model is ready to generate and new work is taken; 503 (with the
    reasons) while it loads or warms up, after a failed load, in maintenance and while shutting down, so a load
    balancer or Kubernetes sends no visitor here."""

    async def readyz(_request: Request) -> JSONResponse:
        found = reasons()
        body: dict[str, Any] = {"ready": not found, "model_state": loader.state.value, "reasons": found, **replicas()}
        if loader.state is ModelState.FAILED:
            body["reason"] = loader.error_key
        return JSONResponse(body, status_code=503 if found else 200)

    return Route("/readyz", readyz, methods=["GET"])


def metrics_route(metrics: Metrics) -> Route:
    """``GET /metrics`` in the Prometheus text format."""

    async def serve(_request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return Route("/metrics", serve, methods=["GET"])


async def _no_deep_link(_request: Request) -> JSONResponse:
    return JSONResponse("")


# Gradio's /gradio_api/deep_link writes a session's last inputs and outputs (prompts, session log) to a file under
# the temporary folder that nothing deletes, and serves them to anyone given its name. This page has no deep-link
# button; the route answers as Gradio does for an unknown session and writes nothing (it is matched before Gradio's).
NO_DEEP_LINKS = Route("/gradio_api/deep_link", _no_deep_link, methods=["GET"])


# Where the page's script is served; relative in the page's head, so a deployment under a path prefix finds it.
PAGE_SCRIPT_PATH = "/glmimage/page.js"


def page_script_route(script: str) -> Route:
    """``GET /glmimage/page.js``: the page's own script (see ``gradio_adapter.page_script``), from this origin, so
    the CSP admits it without eval or inline scripts."""
    body = script.encode("utf-8")

    async def serve(_request: Request) -> Response:
        return Response(body, media_type="text/javascript", headers={"cache-control": "no-cache"})

    return Route(PAGE_SCRIPT_PATH, serve, methods=["GET"])
