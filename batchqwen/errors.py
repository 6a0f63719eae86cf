"""One exception root for everything batchqwen raises on purpose.

::

    BatchQwenError
    ├── UsageError                 bad option or configuration (exit 2)
    ├── ManifestError              the manifest as a whole is unusable (exit 2); names the rows
    ├── ItemError                  local problem of one item; never retried, never the run's failure
    │   ├── InputFileError         a file the row names is missing or unreadable
    │   │   └── FetchFailed        a remote file that could not be read after its retries
    │   ├── MediaRefused           a file a manifest from elsewhere may not name (local path, private address)
    │   ├── MediaError             a file that is present but cannot be decoded / converted
    │   ├── InputTooLong           more than one session takes, and --split never (or no cut can help)
    │   ├── ExtractError           --extract: the tool was never called, or its final arguments do not validate
    │   └── ToolRoundsExceeded     the model asked for more tool rounds than --max-tool-rounds allows
    ├── ProtocolError              a frame or an event order that breaks the protocol
    │   └── InvalidState           an illegal call on the protocol core, raised at once
    ├── RemoteError                something the service (or the network to it) did
    │   ├── ServerError            an ``error`` event: carries type, code, message, param
    │   │   └── ModelUnavailable   the service has no such model for this key (its items fail, others go on)
    │   ├── HandshakeRejected      HTTP status at the WebSocket handshake (401/403/429/5xx)
    │   ├── ConnectionDropped      the connection closed or broke before the turn was done
    │   │   └── ConnectFailed      no connection at all: DNS, refused, TLS, a broken handshake
    │   └── TimedOut               connect / first event / idle / whole-session timeout
    ├── BudgetExceeded             the cost cap would be passed (exit 3)
    ├── FatalRunError              an account-level refusal (bad key, arrears, no quota): the run stops (exit 3)
    ├── EnvironmentFailure         the environment failed, not the items (exit 4)
    │   ├── ServiceUnreachable     no connection to the service for longer than --max-outage
    │   └── OutputUnwritable       the output disk is full or read-only
    ├── AdmissionClosed            the run is stopping: no new session may start (the item stays pending)
    └── LockHeld                   another run holds the output folder's lock (exit 2)

Only ``cli.py`` turns these into messages and exit codes; whether a remote error is worth another
attempt is decided by the pure functions in ``retry.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchqwen.realtime.events import Usage


class BatchQwenError(Exception):
    """Root of every error batchqwen raises on purpose."""

    #: short machine-readable kind written to result rows (``error_type`` column)
    kind: str = "error"
    #: usage the service reported before a session failed (a failed attempt can still be billed)
    usage: Usage | None = None


class UsageError(BatchQwenError):
    kind = "usage"


class ManifestError(BatchQwenError):
    kind = "manifest"


class ItemError(BatchQwenError):
    kind = "item"


class InputFileError(ItemError):
    kind = "input_file"


class MediaError(ItemError):
    kind = "media"


class FetchFailed(InputFileError):
    """A remote file (bucket or URL) that stayed unreadable through its retries: a network problem."""

    kind = "fetch"


class MediaRefused(ItemError):
    """A file the row may not name: a local path in a manifest from a bucket or URL, a private address."""

    kind = "refused"


class InputTooLong(ItemError):
    """An item more than one session can take (the model's input limit, the session lifetime) that may
    not be split (``--split never``) or that no split can help (its text alone is over the limit)."""

    kind = "too_long"


class ExtractError(ItemError):
    kind = "extract"

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code  # not_called | invalid_json | validation


class ToolRoundsExceeded(ItemError):
    kind = "tool_rounds"


class ProtocolError(BatchQwenError):
    kind = "protocol"


class InvalidState(ProtocolError):
    kind = "invalid_state"


class RemoteError(BatchQwenError):
    kind = "remote"


class ServerError(RemoteError):
    """The service sent an ``error`` event."""

    kind = "server_error"

    def __init__(self, message: str, *, error_type: str = "", code: str = "", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        code = self.code or self.error_type or "error"
        return f"{code}: {self.message}{where}"


#: wire error codes as the official v2 SDK's error registry classifies them (dashscope 2.0.2
#: ``v2/errors.py`` ``_CODE_MAP`` from ``_error_registry.py``): code -> the SDK's error class
SERVICE_ERROR_CLASSES: dict[str, str] = {
    "InvalidApiKey": "AuthenticationError",
    "AccessDenied": "PermissionDeniedError",
    "AccessDenied.Unpurchased": "PermissionDeniedError",
    "Arrearage": "PermissionDeniedError",
    "InvalidParameter": "BadRequestError",
    "Model.NotExist": "NotFoundError",
    "DataInspectionFailed": "ContentFilterError",
    "Throttling": "RateLimitError",
    "Throttling.RateQuota": "RateLimitError",
    "Throttling.AllocationQuota": "RateLimitError",
    "InternalError": "InternalServerError",
    "ServiceUnavailable": "ServiceUnavailableError",
    "GatewayTimeout": "GatewayTimeoutError",
}
#: codes that say the model, not the account, is out of reach for this key: that model's items fail
MODEL_UNAVAILABLE_CODES: frozenset[str] = frozenset({"Model.NotExist", "AccessDenied.Unpurchased"})
#: codes that stop the whole run: every other item would be refused the same way
ACCOUNT_FATAL_CODES: frozenset[str] = frozenset({"InvalidApiKey", "Arrearage"})


class ModelUnavailable(ServerError):
    """Given for an item whose model an earlier item found unavailable: no session is opened for it."""

    kind = "model_unavailable"


class HandshakeRejected(RemoteError):
    """The WebSocket handshake was refused with an HTTP status."""

    kind = "handshake"

    def __init__(self, status: int, reason: str = "", *, code: str = ""):
        self.status = status
        self.reason = reason
        self.code = code  # the service's error code, when the refusal's body carries one
        meaning = {
            401: "the API key was refused (401 Unauthorized)",
            403: "access forbidden for this key or model (403 Forbidden)",
            429: "throttled by the service (429 Too Many Requests)",
        }.get(status, f"HTTP {status}")
        super().__init__(f"handshake rejected: {meaning}" + (f": {reason}" if reason else ""))


class ConnectionDropped(RemoteError):
    kind = "connection_dropped"


class ConnectFailed(ConnectionDropped):
    """The connection could not be made at all: it says something about the network, not the item."""

    kind = "connect_failed"


#: the option that governs each timeout, named in its message
TIMEOUT_FLAGS: dict[str, str] = {
    "connect": "--connect-timeout",
    "first event": "--first-event-timeout",
    "idle": "--idle-timeout",
    "session": "--item-timeout",
}


class TimedOut(RemoteError):
    kind = "timeout"

    def __init__(self, what: str, seconds: float, *, host: str = ""):
        self.what = what
        self.seconds = seconds
        flag = TIMEOUT_FLAGS.get(what)
        where = f" to {host}" if host else ""
        super().__init__(f"{what}{where} timed out after {seconds:g} s" + (f" ({flag})" if flag else ""))


class BudgetExceeded(BatchQwenError):
    kind = "budget"


class FatalRunError(BatchQwenError):
    """An account-level error (bad key, arrears, exhausted quota): the whole run must stop."""

    kind = "fatal"

    def __init__(self, cause: BaseException):
        self.cause = cause
        super().__init__(str(cause))


class EnvironmentFailure(BatchQwenError):
    """The machine or the network failed, not the items: the run stops and the next run picks up."""

    kind = "environment"


class ServiceUnreachable(EnvironmentFailure):
    kind = "service_unreachable"


class OutputUnwritable(EnvironmentFailure):
    kind = "output_unwritable"


class AdmissionClosed(BatchQwenError):
    """The run is stopping (signal, fatal error, budget): no new session may start, not even a retry."""

    kind = "stopped"


class LockHeld(BatchQwenError):
    kind = "lock"
