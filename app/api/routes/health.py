"""For load balancers and Prometheus: no auth (but METRICS_TOKEN), no rate limit."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ResourcesDep
from app.core.errors import InvalidTokenError, NotFound
from app.services.health import readiness, refresh_gauges

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "`not_ready`, with each check `ok` or a short reason."}},
)
async def readyz(resources: ResourcesDep) -> JSONResponse:
    """200 when the database (at this build's schema version) and Redis answer."""
    checks = await readiness(resources)
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse({"detail": "not_ready", "checks": checks}, status_code=503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, resources: ResourcesDep) -> Response:
    """Prometheus text format; `Authorization: Bearer <METRICS_TOKEN>` when one is set."""
    settings = resources.settings
    if not settings.metrics_enabled:
        raise NotFound()
    if settings.metrics_token:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
            raise InvalidTokenError()
    await refresh_gauges(resources)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
