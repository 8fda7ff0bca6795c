"""An agent's event batch checked as its schema types it, for the HTTP route and the
agent link alike: the errors as `{index, loc, msg}` (which event, where in it)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from mt5gate_protocol.events import KINDS, EventBatch


def event_errors(errors: list[dict[str, Any]], *, under: str = "body") -> list[dict[str, Any]]:
    """pydantic's errors of a batch (found `under` that name) as `{index, loc, msg}`."""
    found = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if loc[:1] == [under]:
            loc = loc[1:]
        index = None
        if len(loc) >= 2 and loc[0] == "events" and isinstance(loc[1], int):
            index, loc = loc[1], loc[2:]
            if loc and loc[0] in KINDS:  # the union's tag: the event names its kind itself
                loc = loc[1:]
            elif not loc and str(error.get("type", "")).startswith("union_tag"):
                loc = ["kind"]  # missing, or a kind an agent may not report
        found.append({"index": index, "loc": loc, "msg": str(error.get("msg", ""))})
    return found


def integral_floats_as_ints(value: Any) -> Any:
    """JSON Schema's `integer` takes `5.0`; pydantic's strict int does not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(item) for key, item in value.items()}
    return value


def strict_batch_errors(batch: Any) -> list[dict[str, Any]] | None:
    """The errors of a decoded batch read strictly (a number is a JSON number, `false` or
    `"1"` is not; a time an ISO-8601 string), None when it has none; locs start at the
    batch's own fields."""
    normalized = json.dumps(integral_floats_as_ints(batch)).encode()
    try:
        EventBatch.model_validate_json(normalized, strict=True)
    except ValidationError as exc:
        return list(exc.errors())  # type: ignore[arg-type]
    return None
