"""Types shared by the schema family."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer
from pydantic_core import PydanticCustomError


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def writable_in_utc(value: datetime) -> datetime:
    """`9999-12-31T23:59:59-05:00` is a datetime, but past the last one in UTC: refused
    here (422), not when `iso_utc` writes it out (a 500, after the input was accepted)."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie within the years 1 to 9999 in UTC") from None
    return value


IN_UTC_RANGE = AfterValidator(writable_in_utc)
UtcDatetime = Annotated[
    datetime, IN_UTC_RANGE, PlainSerializer(iso_utc, return_type=str, when_used="json")
]


def reject_unstorable_text(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL, and UTF-8 (every store, argon2, Fernet) cannot hold
    lone surrogates, which JSON's `\\ud800` escapes produce; both are 422s, not 500s."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


# Every string that a request carries into storage, a hash or a cipher is checked by this.
# It goes last in `Annotated[str, StringConstraints(...), STORABLE]`: put first, it would
# make pydantic check the length before `strip_whitespace` strips.
STORABLE = BeforeValidator(reject_unstorable_text)
Text = Annotated[str, STORABLE]


def only_json_numbers(value: Any) -> Any:
    """JSON Schema's `integer` is any number without a fraction (`5.0` too), and nothing
    else; pydantic's lax int would also take `"5"` and `true`, its strict int not `5.0`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# Every integer of a request body is read as the OpenAPI schema documents it. It goes last
# in `Annotated[int, Field(ge=...), JSON_INTEGER]`: put first, it would hide the bounds
# from the JSON schema.
JSON_INTEGER = BeforeValidator(only_json_numbers)


class OrmReadModel(BaseModel):
    """A response model read straight off an ORM object's attributes (`model_validate(row)`)."""

    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    detail: str
    message: str
