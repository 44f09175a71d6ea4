"""Routes for operators and their tools, answered on the event loop, never behind the GPU queue.

(Branch ops: ``/metrics`` and the ops half of ``/readyz``; branch gpu moves ``/healthz`` here and owns ``/readyz``.
The lead merges the two ``/readyz``: theirs says whether the model and devices are ready, this one adds the
maintenance file and a shutdown under way.)
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..maintenance import Drain, MaintenanceFile
from ..metrics import CONTENT_TYPE, Metrics
from ..models.loading import ModelState, PipelineLoader


def metrics_route(metrics: Metrics) -> Route:
    """``GET /metrics`` in the Prometheus text format."""

    async def serve(_request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return Route("/metrics", serve, methods=["GET"])


def not_ready_reasons(loader: PipelineLoader, maintenance: MaintenanceFile | None, drain: Drain) -> list[str]:
    """Why a load balancer should send new visitors elsewhere; empty when this server takes work."""
    reasons = []
    if drain.draining:
        reasons.append("shutting_down")
    if maintenance is not None and maintenance.current() is not None:
        reasons.append("maintenance")
    if loader.state is not ModelState.READY:
        reasons.append(f"model_{loader.state.value}")
    return reasons


def readyz_route(reasons: Callable[[], list[str]]) -> Route:
    """``GET /readyz``: 200 while new generations are taken, 503 (with the reasons) while they are not."""

    async def readyz(_request: Request) -> JSONResponse:
        found = reasons()
        return JSONResponse({"ready": not found, "reasons": found}, status_code=503 if found else 200)

    return Route("/readyz", readyz, methods=["GET"])
