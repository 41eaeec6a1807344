"""When an HTTP teacher request is worth repeating, and how long to wait before it.

Why apart from the teacher: the classification (retryable status, connect failure, fatal) and the
backoff are pure functions of a response or an exception, tested without a server, and the batch
clients ask the same questions.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time

import httpx

from jupyter_distill.core.errors import BudgetExceeded, PolicyError
from jupyter_distill.teachers.base import FatalTeacherError

# Failed connection attempts (over all requests) before an endpoint that has never answered is
# declared unreachable: one quick retry absorbs a blip; more would only delay the inevitable error.
# Requests already in flight finish their attempt, so at most ``concurrency + 1`` are made.
FIRST_CONTACT_ATTEMPTS = 2

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


class TeacherUnreachable(FatalTeacherError):
    """The endpoint refused every connection before it ever answered: no prompt can succeed."""


class Retryable(Exception):
    """One failed attempt that is worth repeating; ``retry_after`` is the server's wish in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class NUnsupported(Exception):
    """The server refused ``n > 1``: switch to one request per candidate."""


def cannot_connect(exc: httpx.TransportError) -> bool:
    """True when no connection could be opened at all (refused, unknown host, no route).

    httpx raises ``ConnectError`` for these; the aiohttp transport maps aiohttp's
    ``ClientConnectorError`` to ``ConnectTimeout`` instead, so its cause is checked too. A real
    connect timeout (a slow or overloaded server) is not one of them: it is retried as before.
    """
    if isinstance(exc, httpx.ConnectError):
        return True
    import aiohttp

    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, asyncio.TimeoutError)


def is_fatal(exc: BaseException) -> bool:
    """True for errors that end the phase (policy, budget, a refused key) rather than one prompt."""
    return isinstance(exc, PolicyError | BudgetExceeded | FatalTeacherError) or not isinstance(exc, Exception)


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def backoff_delay(
    attempt: int,
    retry_after: float | None,
    *,
    backoff_base: float,
    backoff_max: float,
    retry_after_max: float,
) -> float:
    """Seconds to wait before the next attempt: the server's Retry-After, else backoff with jitter.

    The jitter spreads the retries of many prompts that failed together, so they do not hit a
    recovering server in one burst.
    """
    if retry_after is not None:
        return min(retry_after_max, retry_after) * random.uniform(1.0, 1.1)
    return min(backoff_max, backoff_base * (2**attempt)) * random.uniform(0.5, 1.0)
