"""The C-level JSON encoder and decoder used on the install and process-mode paths
must agree with ``json`` where they overlap and be stricter where they differ."""

from __future__ import annotations

import json
import math

import pytest

from vmcontainer import jsonc

VALUES = [{"b": [1, 2.5, None, True], "a": {"z": "é\u2028", "y": []}}, [], "x", 0, -1.5e300]


@pytest.mark.parametrize("value", VALUES)
def test_encoders_match_json_dumps(value):
    assert jsonc.make_encoder()(value) == json.dumps(value, separators=(",", ":"))
    assert jsonc.make_encoder(sort_keys=True)(value) == json.dumps(
        value, separators=(",", ":"), sort_keys=True)


def test_encoder_without_nan_refuses_it():
    with pytest.raises(ValueError):
        jsonc.make_encoder(allow_nan=False)({"x": math.nan})
    assert jsonc.make_encoder()([math.inf]) == "[Infinity]"


@pytest.mark.parametrize("value", VALUES)
def test_decoder_round_trips(value):
    assert jsonc.make_decoder()(json.dumps(value)) == value


@pytest.mark.parametrize("text", ["", " ", "{} ", " {}", "{}{}", "[1,]", "{'a':1}", "nul", '"\x01"'])
def test_decoder_refuses_anything_but_one_whole_value(text):
    with pytest.raises(ValueError):
        jsonc.make_decoder()(text)


def test_decoder_uses_the_given_decoders_hooks():
    def no_dupes(pairs):
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate")
        return dict(pairs)

    decode = jsonc.make_decoder(json.JSONDecoder(object_pairs_hook=no_dupes))
    assert decode('{"a":{"b":1}}') == {"a": {"b": 1}}
    with pytest.raises(ValueError, match="duplicate"):
        decode('{"a":1,"a":2}')
