"""`adpa cache ls` says which role and which data each artifact is of (issue 27, item 10)."""

from adpa.artifacts.store import _what


def test_role_and_data_come_from_the_inputs_and_odd_inputs_give_nothing():
    assert _what({"role": "teacher", "data": {"sha256": "ab" * 32}}) == {"role": "teacher", "data": "ab" * 6}
    assert _what({"states": "student", "data": {"sha256": "c" * 64}}) == {"role": "states=student", "data": "c" * 12}
    for odd in (None, [], {"role": {"x": 1}, "data": "d"}, {"role": "r" * 99, "data": {"sha256": 5}}):
        got = _what(odd)
        assert got["data"] is None and (got["role"] is None or len(got["role"]) <= 24)
