"""The simulator's settings: everything about it that does not depend on where it listens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: faults that make every function call's arguments violate the tool's JSON Schema (batchqwen.sim.tools)
ARGUMENT_FAULTS: tuple[str, ...] = ("bad_argument_type", "missing_argument")
FAULT_KINDS: tuple[str, ...] = ("disconnect", "server_error", "hang", "malformed", "throttle", *ARGUMENT_FAULTS)

ThrottleMode = Literal["handshake", "error"]
#: refuse: nothing listens on the port (a client's connect fails with ECONNREFUSED); 503: the gateway
#: answers every handshake (and the quota endpoint) with HTTP 503 Service Unavailable
OutageMode = Literal["refuse", "503"]
OUTAGE_MODES: tuple[str, ...] = ("refuse", "503")
#: error: tools declared on a model without function calling are refused at session.update (invalid_value,
#: param session.tools); ignore: accepted and never called, as the service was reported to do
UnsupportedTools = Literal["error", "ignore"]


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything about the simulator that does not depend on where it listens.

    Rates are probabilities per response, drawn from one ``random.Random(seed)`` per server.
    """

    api_keys: tuple[str, ...] = ()  # empty: any non-empty bearer key is accepted
    latency_seconds: float = 0.0  # before the first event of each response
    delta_delay_seconds: float = 0.0  # between two delta events of a response
    rpm: int | None = None  # sessions per sliding window (a minute); None: unlimited
    tpm: int | None = None  # tokens (of delivered responses) per sliding minute; None: unlimited
    window_seconds: float = 60.0  # the quota window; shorter only to test or benchmark quotas quickly
    throttle_mode: ThrottleMode = "handshake"  # handshake: HTTP 429; error: `error` Throttling.* then close
    disconnect_rate: float = 0.0  # abrupt TCP drop mid-response, no close frame
    server_error_rate: float = 0.0  # `error` of type server_error mid-response, then close
    hang_rate: float = 0.0  # stop answering mid-response, connection left open
    malformed_rate: float = 0.0  # a frame that is not JSON mid-response, then close
    seed: int = 0
    session_lifetime_seconds: float = 7200.0
    idle_timeout_seconds: float = 300.0  # no client frame for this long: cut (pings do not count)
    max_image_base64_bytes: int = 256 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    word_ms: int = 60  # synthesized output audio per answer word
    audio_delta_ms: int = 100  # output audio per response.audio.delta
    finish_unsupported_models: tuple[str, ...] = ()  # models answering session.finish with an error
    unpurchased_models: tuple[str, ...] = ()  # known models this account has not bought: AccessDenied.Unpurchased
    # a scheduled outage, seconds after the server starts (see also Simulator.start_outage, at any time)
    outage_mode: OutageMode | None = None  # None: no scheduled outage
    outage_start_seconds: float = 0.0
    outage_seconds: float = 0.0
    # function calls (batchqwen.sim.tools): how many times a turn calls each tool it names, all the named
    # tools in one response or one per response, and a fault applied to every call's arguments
    tool_rounds: int = 1
    parallel_tool_calls: bool = True
    argument_fault: str | None = None  # one of ARGUMENT_FAULTS
    unsupported_tools: UnsupportedTools = "error"

    def __post_init__(self) -> None:
        if self.outage_mode is not None and self.outage_mode not in OUTAGE_MODES:
            raise ValueError(f"outage_mode must be one of {', '.join(OUTAGE_MODES)}, not {self.outage_mode!r}")
        if self.outage_start_seconds < 0 or self.outage_seconds < 0:
            raise ValueError("outage_start_seconds and outage_seconds must not be negative")
        if self.tool_rounds < 0:
            raise ValueError("tool_rounds must not be negative")
        if self.argument_fault is not None and self.argument_fault not in ARGUMENT_FAULTS:
            raise ValueError(f"argument_fault must be one of {', '.join(ARGUMENT_FAULTS)}, not {self.argument_fault!r}")
        if self.unsupported_tools not in ("error", "ignore"):
            raise ValueError(f"unsupported_tools must be 'error' or 'ignore', not {self.unsupported_tools!r}")

    def fault_rates(self) -> dict[str, float]:
        return {
            "disconnect": self.disconnect_rate,
            "server_error": self.server_error_rate,
            "hang": self.hang_rate,
            "malformed": self.malformed_rate,
        }
