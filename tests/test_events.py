"""Event lines a person reads in the log."""
import pytest

from jupyter_imagegen.events import Event


def test_retry_after_a_broken_200_names_the_problem_not_the_status():
    e = Event("api_retry", "r1", {"attempt": 1, "status_code": 200, "delay": 0.5,
                                  "reason": "the server answered 200 with invalid JSON (a truncated body?)"})
    line = e.describe()
    assert not line.startswith("200") and "invalid JSON" in line and "retrying in 0.5 s" in line


def test_retry_on_status_and_network_error():
    assert Event("api_retry", "r", {"attempt": 2, "status_code": 503, "delay": 2.0}).describe().startswith(
        "503 — retrying in 2.0 s (attempt 2 failed)")
    assert Event("api_retry", "r", {"attempt": 1, "status_code": None, "delay": 1.0,
                                    "reason": "the connection was reset"}).describe().startswith(
        "the connection was reset — retrying")


def test_unknown_event_type_is_refused():
    with pytest.raises(ValueError, match="unknown event type"):
        Event("api_called", "r")
