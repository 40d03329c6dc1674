"""The retry policy: Retry-After forms, caps, backoff growth."""
import email.utils
import random

import pytest

from jupyter_imagegen.retry import backoff_delay, is_retryable_status, next_delay, parse_retry_after


@pytest.mark.parametrize("status,expected", [(408, True), (409, True), (429, True), (500, True), (502, True),
                                             (503, True), (504, True), (520, True), (400, False), (401, False),
                                             (403, False), (404, False), (422, False)])
def test_retryable_statuses(status, expected):
    assert is_retryable_status(status) is expected


def test_retry_after_seconds_date_and_ms():
    now = 1_700_000_000.0
    assert parse_retry_after({"Retry-After": "7"}, now=now) == 7.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(12, abs=1)
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}, now=now) == 0.25
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}, now=now) is None
    assert parse_retry_after({}, now=now) is None


def test_retry_after_is_capped():
    assert next_delay(1, 3600, base=1, maximum=30, retry_after_max=60) == 60
    assert next_delay(1, 2, base=1, maximum=30, retry_after_max=60) == 2


def test_backoff_grows_with_jitter_and_is_capped():
    rng = random.Random(1)
    d = [backoff_delay(k, 1.0, 30.0, rng) for k in range(1, 8)]
    for k, v in enumerate(d, start=1):
        raw = min(30.0, 2 ** (k - 1))
        assert raw / 2 <= v <= raw
    assert backoff_delay(3, 0, 30) == 0.0
