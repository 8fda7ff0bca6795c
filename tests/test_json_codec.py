"""The Rust JSON codec reads every document as `json.loads` does, and what it writes reads
back as what was written."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core import json_codec

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_a_document_reads_as_json_loads_reads_it(value: object) -> None:
    document = json.dumps(value)
    assert json_codec.loads(document) == json.loads(document)
    assert json_codec.loads(document.encode()) == json.loads(document.encode())


@given(JSON_VALUES)
def test_what_dumps_writes_reads_back_as_the_value(value: object) -> None:
    assert json.loads(json_codec.dumps(value)) == value
    assert json.loads(json_codec.dumps_bytes(value)) == value


@pytest.mark.parametrize(
    "document",
    [
        b'{"message": "\\ud800"}',  # a lone surrogate: the storable-text check refuses it
        '{"é": 1}'.encode("utf-16"),
        b"[NaN, Infinity, -Infinity]",
        b'{"a": 1, "a": 2}',
        b"123456789012345678901234567890",
    ],
)
def test_what_the_rust_parser_refuses_or_bends_reads_as_json_loads_reads_it(
    document: bytes,
) -> None:
    got, expected = json_codec.loads(document), json.loads(document)
    if isinstance(expected, list):
        assert [math.isinf(x) or math.isnan(x) for x in got] == [True] * 3
    else:
        assert got == expected


@pytest.mark.parametrize("document", [b'{"a": 1} x', b"{", b"", b'{"a": }'])
def test_malformed_json_raises_json_loads_own_error(document: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        json_codec.loads(document)
