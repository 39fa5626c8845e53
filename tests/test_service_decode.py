"""The batch body's JSON decoding: ``orjson`` where it reads what ``json`` reads, else ``json``."""

from __future__ import annotations

import json
import math

import pytest

from automation.service.routes_ingest import _decode


def test_same_as_json_on_ordinary_bodies() -> None:
    body = json.dumps(
        {
            "batch": [
                {
                    "userId": "u1",
                    "event": "Order Completed",
                    "properties": {
                        "price": 2.5,
                        "quantity": 3,
                        "products": [{"product_id": 12, "name": "caf\u00e9 \u2603"}],
                    },
                }
            ]
        }  # fmt: skip
    ).encode()
    assert _decode(body) == json.loads(body)


def test_an_integer_beyond_64_bits_keeps_every_digit() -> None:
    """orjson would read it as a float: a numeric user id of 30 digits would change."""
    got = _decode(b'{"batch": [{"userId": 123456789012345678901234567890}]}')
    assert got["batch"][0]["userId"] == 123456789012345678901234567890


def test_what_only_json_reads_still_reaches_validation() -> None:
    got = _decode(b'{"batch": [{"properties": {"price": NaN}, "userId": "\\ud800"}]}')
    assert math.isnan(got["batch"][0]["properties"]["price"])
    assert got["batch"][0]["userId"] == "\ud800"


@pytest.mark.parametrize("body", [b"{bad", b"\xff", b""])
def test_not_json_raises_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # UnicodeDecodeError is one too
        _decode(body)
