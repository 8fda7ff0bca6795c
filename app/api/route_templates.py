"""The route template a request matched (`/api/v1/orders/{order_id}`), for the API-key
scope rule and the metrics' `route` label (never the raw path, which holds ids)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI


def route_templates(app: FastAPI) -> dict[int, str]:
    """Each route object's full template, prefixes included, by the object's id.

    FastAPI ≥ 0.16x keeps an included router's routes as they were declared (`""`,
    `/{key_id}`) and resolves the prefixes when routing; `iter_route_contexts` gives their
    full templates. Older releases copy each route with its full path, which `route.path`
    then holds: the fallback of `route_template`."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return {}
    return {
        id(context.original_route): context.path_format
        for context in iter_route_contexts(app.routes)
        if context.path_format
    }


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The template of the route that handled (or is handling) this request; None if none."""
    route = scope.get("route")
    if route is None:
        return None
    app = scope.get("app")
    templates: dict[int, str] = getattr(getattr(app, "state", None), "route_templates", {})
    return templates.get(id(route)) or getattr(route, "path", None)
