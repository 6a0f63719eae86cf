"""Retry policy as pure functions: what kind of failure an exception is, and how long to wait.

``classify`` sorts every exception into one of three kinds:

- ``"retryable"``: worth another attempt of the same item after a backoff: a dropped connection, a
  timeout, a handshake refused with 429 or 5xx, a ``server_error``, any ``Throttling*`` code.
- ``"fatal"``: the whole run should stop, since every other item would fail the same way: a handshake
  refused with 401/403, the account-level codes ``InvalidApiKey`` and ``Arrearage``, a plain
  ``AccessDenied`` (or a variant not in the table), and quota exhaustion (a code containing ``Quota`` or
  ``FreeTierOnly`` that is not a ``Throttling`` code, e.g. ``AllocationQuota.Exhausted``).
- ``"permanent"``: this item failed and retrying will not help: any other ``invalid_request_error``
  (bad voice, empty commit, ...), ``DataInspectionFailed``, local item errors, protocol violations, and
  the model-level codes ``Model.NotExist`` / ``AccessDenied.Unpurchased`` (:func:`model_unavailable`
  says so; the runner then fails that model's other items without a session and lets the rest go on).

The codes and their classes are the v2 SDK's registry, as the table
:data:`batchqwen.errors.SERVICE_ERROR_CLASSES`.

A :class:`ProtocolError` (a malformed frame, an out-of-order event) is the server's fault, not the
item's: it is retryable within ``--max-attempts`` like a dropped connection (an :class:`InvalidState`,
our own misuse of the core, stays permanent). An ``error`` event with no type and no code is treated like
``server_error`` (retryable) because it is the service misbehaving, not the request; unknown exceptions
are permanent.

:func:`is_connection_failure` picks out the failures that say nothing about the item and everything
about the network (no connection, a handshake answered 5xx, a connect timeout): the runner charges them to
the run-level breaker (:mod:`batchqwen.breaker`), never to the item's attempts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Literal

from batchqwen.errors import (
    ACCOUNT_FATAL_CODES,
    MODEL_UNAVAILABLE_CODES,
    SERVICE_ERROR_CLASSES,
    BudgetExceeded,
    ConnectFailed,
    ConnectionDropped,
    HandshakeRejected,
    InvalidState,
    ProtocolError,
    ServerError,
    TimedOut,
    UsageError,
)

Kind = Literal["retryable", "permanent", "fatal"]

QUOTA_MARKERS = ("Quota", "FreeTierOnly")


def is_throttling(exc: BaseException) -> bool:
    """True for a throttling refusal: handshake HTTP 429 or an error code starting with ``Throttling``."""
    if isinstance(exc, HandshakeRejected):
        return exc.status == 429
    if isinstance(exc, ServerError):
        return exc.code.startswith("Throttling")
    return False


def is_connection_failure(exc: BaseException) -> bool:
    """True when no session got going for reasons of the network or the gateway, not of the item."""
    if isinstance(exc, ConnectFailed):
        return True
    if isinstance(exc, TimedOut):
        return exc.what == "connect"
    if isinstance(exc, HandshakeRejected):
        return 500 <= exc.status <= 599
    return False


def model_unavailable(exc: BaseException) -> bool:
    """True when the service says this key cannot use the item's model (``Model.NotExist``, unpurchased)."""
    return isinstance(exc, ServerError | HandshakeRejected) and exc.code in MODEL_UNAVAILABLE_CODES


def _classify_server_error(exc: ServerError) -> Kind:
    code = exc.code
    sdk_class = SERVICE_ERROR_CLASSES.get(code)
    if sdk_class == "RateLimitError" or code.startswith("Throttling"):
        return "retryable"
    if code in MODEL_UNAVAILABLE_CODES:
        return "permanent"
    if code in ACCOUNT_FATAL_CODES or code.startswith("AccessDenied"):
        return "fatal"
    if sdk_class in ("InternalServerError", "ServiceUnavailableError", "GatewayTimeoutError"):
        return "retryable"
    if any(marker in code for marker in QUOTA_MARKERS):
        return "fatal"
    if exc.error_type == "server_error" or (not exc.error_type and not code):
        return "retryable"
    return "permanent"


def classify(exc: BaseException) -> Kind:
    """Sort an exception into retryable (this item, again later), permanent (this item) or fatal (the run)."""
    if isinstance(exc, ServerError):
        return _classify_server_error(exc)
    if isinstance(exc, HandshakeRejected):
        if exc.code:  # a refusal that names its code is classified by the code, as an error event would be
            as_event = ServerError(exc.reason, error_type="invalid_request_error", code=exc.code)
            return _classify_server_error(as_event)
        if exc.status in (401, 403):
            return "fatal"
        if exc.status == 429 or 500 <= exc.status <= 599:
            return "retryable"
        return "permanent"
    if isinstance(exc, ConnectionDropped | TimedOut):
        return "retryable"
    if isinstance(exc, ProtocolError) and not isinstance(exc, InvalidState):
        return "retryable"  # the server broke the protocol: nothing to do with the item
    if isinstance(exc, UsageError | BudgetExceeded):
        return "fatal"
    return "permanent"


def backoff_delays(
    *,
    base: float = 0.5,
    cap: float = 30.0,
    factor: float = 2.0,
    jitter: Literal["full", "decorrelated", "none"] = "full",
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Endless delays (seconds) before attempt 2, 3, ...: exponential, capped, with jitter.

    ``full``: uniform in [0, min(cap, base * factor**n)] (AWS "full jitter").
    ``decorrelated``: uniform in [base, min(cap, previous * 3)] (AWS "decorrelated jitter").
    ``none``: min(cap, base * factor**n), for tests and for people who like determinism.
    Every delay lies in [0, cap].
    """
    if base < 0 or cap < 0 or factor < 1:
        raise UsageError("backoff needs base >= 0, cap >= 0 and factor >= 1")
    rng = rng or random.Random()
    ceiling = base
    previous = base
    while True:
        if jitter == "full":
            yield rng.uniform(0.0, min(cap, ceiling))
        elif jitter == "decorrelated":
            previous = min(cap, rng.uniform(min(base, cap), max(min(base, cap), previous * 3)))
            yield previous
        else:
            yield min(cap, ceiling)
        ceiling = min(cap, ceiling * factor)  # stays finite however long it runs
