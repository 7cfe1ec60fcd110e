"""Malformed input that used to crash a request (500, connection reset) gets a 4xx with a message.

Each case was first written as a request to a real gym on loopback and watched fail with a 500.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gym_server import json_limits
from gym_server.answers import answers_equal, normalize
from gym_server.json_limits import MAX_DEPTH, MAX_INT_DIGITS, JSONLimitError, parse_json
from tests.conftest import new_episode

JSON = {"Content-Type": "application/json"}


def _status_and_error(response) -> tuple[int, str]:
    return response.status_code, response.json().get("error", "")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"arena_id": "\\ud800"}', "surrogate"),
        (b'{"arena_id": "airline-seats-aa100", "distractors": [{"arena_id": "\\udfff", "tool": "x"}]}', "surrogate"),
        (b'{"arena_id": "airline-seats-aa100", "distractors": [{"arena_id": "retail-status-o1002", "tool": "\\ud83d"}]}', "surrogate"),
        (b'{"arena_id": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested deeper"),
        (b'{"arena_id": "airline-seats-aa100", "seed": ' + b"9" * 4_400 + b"}", "digits"),
        (b'{"arena_id": "airline-seats-aa100", "seed": 1e999}', "out of range"),
        (b'{"arena_id": "airline-seats-aa100", "seed": NaN}', "not valid JSON"),
    ],
)
async def test_episode_bodies_that_used_to_crash(gym, http, body, needle):
    response = await http.post(f"{gym.url}/api/episodes", content=body, headers=JSON)
    status, message = _status_and_error(response)
    assert status == 400, response.text
    assert needle in message


@pytest.mark.parametrize(
    "body",
    [
        b'{"final_answer": ' + b"7" * 4_400 + b"}",
        b'{"final_answer": ' + b"7" * 4_000 + b"}",
        b'{"final_answer": "\\udc80"}',
        b'{"final_answer": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    ],
)
async def test_score_bodies_that_used_to_crash(gym, http, body):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    response = await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score", content=body, headers=JSON)
    assert response.status_code == 400 and response.json()["error"], response.text
    fine = await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score", json={"final_answer": "4"})
    assert fine.status_code == 200  # the keep-alive connection and the episode both survived


async def test_paging_parameters_are_clamped(gym, http):
    for query in ({"offset": "9223372036854775808"}, {"offset": str(10**40)}, {"limit": "9223372036854775808"}, {"offset": "-5"}):
        response = await http.get(f"{gym.url}/api/arenas", params=query)
        assert response.status_code == 200, (query, response.text)
        assert int(response.headers["x-total-count"]) == 14
    far = await http.get(f"{gym.url}/api/arenas", params={"offset": "9223372036854775808"})
    assert far.json() == [] and "link" not in far.headers
    digits = await http.get(f"{gym.url}/api/arenas", params={"offset": "9" * 5_000, "limit": "-" + "9" * 5_000})
    assert digits.status_code == 200 and digits.json() == []
    for bad in ("1e3", "0x10", "", "\u0663"):
        refused = await http.get(f"{gym.url}/api/arenas", params={"offset": bad})
        assert refused.status_code == 400 and "offset must be an integer" in refused.json()["error"], bad


async def test_ids_in_paths_are_text(gym, http):
    for path in ("/api/arenas/%ED%A0%80", "/api/episodes/%ED%A0%80", "/api/arenas/" + "a" * 5_000):
        response = await http.get(f"{gym.url}{path}")
        assert response.status_code in (400, 404) and response.json()["error"], (path, response.text)


def test_parser_limits_are_what_they_say():
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(JSONLimitError, match="nested deeper"):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert parse_json(b"9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    with pytest.raises(JSONLimitError, match="digits"):
        parse_json(b"-" + b"9" * (MAX_INT_DIGITS + 1))
    with pytest.raises(JSONLimitError, match="surrogate"):
        parse_json(b'{"\\ud800": 1}')
    assert parse_json('{"emoji": "\\ud83d\\ude00"}'.encode()) == {"emoji": "\U0001f600"}


def _walked(body: bytes | str) -> object:
    """parse_json as it was before it learned to skip the walk: decode, then always check the whole tree."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    value = json_limits._decoder.decode(text)
    json_limits.check_tree(value)
    return value


_piece = st.sampled_from(['"a"', '"\\ud800"', '"\\\\ud800"', '"\\ud83d\\ude00"', '"\\uDFFF"', '"\\u00e9"', "1", '"\ud800"', '"[{"'])


@settings(max_examples=300, deadline=None)
@given(depth=st.integers(0, MAX_DEPTH + 3), pieces=st.lists(_piece, max_size=4), as_bytes=st.booleans(), in_key=st.booleans())
def test_the_walk_is_skipped_only_where_it_could_refuse_nothing(depth: int, pieces: list[str], as_bytes: bool, in_key: bool):
    """The scan that lets parse_json skip its walk of the value must never let through what the walk refuses:
    nesting at and past the limit, surrogate escapes (lone, paired, behind an escaped backslash), raw surrogates
    in a str body, brackets inside strings."""
    inner = "[" + ",".join(pieces) + "]"
    if in_key and pieces:
        inner = "{" + pieces[0].replace("1", '"1"') + ": " + inner + "}"
    text = "[" * depth + inner + "]" * depth
    body: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        expected: object = _walked(body)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONLimitError is a ValueError
        with pytest.raises(JSONLimitError) as refused:
            parse_json(body)
        if isinstance(exc, JSONLimitError):
            assert str(refused.value) == str(exc)
        return
    assert parse_json(body) == expected


def test_scoring_compares_integers_beyond_float_range():
    huge = 10**4_000
    assert normalize(huge) == huge
    assert answers_equal(huge, huge) and not answers_equal(huge, 4.0) and not answers_equal("4", huge)
