"""Retry policy: which failures are transient and how long to wait before the next attempt."""
from __future__ import annotations

import email.utils
import random
import time
from typing import Mapping, Optional

RETRY_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str], *, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            v = float(ms) / 1000.0
            if v >= 0:
                return v
        except ValueError:
            pass
    ra = headers.get("Retry-After") or headers.get("retry-after")
    if not ra:
        return None
    ra = ra.strip()
    try:
        v = float(ra)
        return v if v >= 0 else None
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, dt.timestamp() - now)


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random = random) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), scaled by a random factor in [0.5, 1]."""
    if base <= 0:
        return 0.0
    raw = min(maximum, base * (2 ** (attempt - 1)))
    return raw * (0.5 + rng.random() / 2)


def next_delay(attempt: int, retry_after: Optional[float], *, base: float, maximum: float,
               retry_after_max: float) -> float:
    """The wait after failed attempt `attempt` (1-based): the server's Retry-After (capped) when given."""
    if retry_after is not None:
        return min(retry_after, retry_after_max)
    return backoff_delay(attempt, base, maximum)
