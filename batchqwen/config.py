"""One frozen configuration object for a run, built by the CLI and passed down unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batchqwen.manifest import ManifestOptions
from batchqwen.models import DEFAULT_MODEL, TEXT_AND_AUDIO
from batchqwen.realtime.gateways import DEFAULT_REGION, gateway_url, normalize_region
from batchqwen.storage.fetch import StorageOptions


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. ``api_key`` is kept out of ``repr`` so it can never reach a log."""

    manifest: Path
    out: Path
    model: str = DEFAULT_MODEL
    voice: str | None = None
    modalities: tuple[str, ...] = TEXT_AND_AUDIO
    instructions: str | None = None
    translate_to: str | None = None  # translation models: the target language of rows without their own
    source_language: str | None = None  # translation models: the spoken language, when known
    region: str = DEFAULT_REGION
    base_url: str | None = None  # overrides the gateway URL (a proxy, the simulator)
    api_key: str | None = field(default=None, repr=False)
    workspace: str | None = None  # the workspace-scoped gateway and the X-DashScope-WorkSpace header
    simulate: bool = False
    limit: int | None = None
    log_events: Path | None = None
    # scheduling
    concurrency: int = 8
    rpm: int | None = None  # None: the model's default
    tpm: int | None = None
    max_attempts: int = 4
    max_cost: float | None = None
    prices: Path | None = None
    # media
    video_fps: float = 1.0
    video_frames: Literal["keyframes", "exact"] = "keyframes"  # how frames are picked (media.read_video)
    image_frames: Literal["first", "all"] = "first"  # animated / multi-page images: first frame or all
    decode_processes: int | None = None  # None: auto (runner.decode_processes_for); 0: threads; N: N processes
    pad_silence_seconds: float = 1.0
    split: Literal["auto", "never"] = "auto"  # an item too long for one session: split at pauses, or fail it
    transcribe_input: bool = True
    pace: float = 0.0  # 0: stream as fast as the socket takes it; 1.0: real time
    chunk_ms: int = 100  # audio per input_audio_buffer.append, as the official samples send
    # output assumption for estimates
    output_seconds: float = 8.0
    # tools (function calling): see batchqwen.tools
    tools: Path | None = None  # a .py module of tool functions or a .json file of declarations
    tool_output: str = '{"ok": true}'  # what declared-only tools answer (JSON text)
    tool_timeout: float = 30.0  # seconds one tool call may take
    max_tool_rounds: int = 4  # tool rounds per turn; past it the item fails with its calls recorded
    extract: str | None = None  # a tool whose final arguments become typed extract_* columns
    assume_tool_rounds: int = 1  # estimate (and the budget's pre-flight check): rounds per turn
    # timeouts (seconds)
    connect_timeout: float = 10.0
    first_event_timeout: float = 10.0
    idle_timeout: float = 30.0
    item_timeout: float | None = None  # None: what the item needs (see runner.item_timeout_for)
    max_outage: float = 600.0  # the service unreachable this long: stop, the rest stays pending (exit 4)
    grace_seconds: float = 30.0  # after SIGINT/SIGTERM, how long in-flight items may still finish
    # cron behaviour
    wait_lock: bool = False
    quiet: bool = False
    log_file: Path | None = None
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    html_report: bool = True  # OUT/report.html at the end of the run
    # storage: where the manifest came from and how it is read, how remote files are reached, remote OUT
    manifest_options: ManifestOptions = field(default_factory=ManifestOptions)
    storage: StorageOptions = field(default_factory=StorageOptions)
    remote_out: str | None = None  # --out s3://bucket/prefix: ``out`` is then the local state directory
    checkpoint_seconds: float = 30.0  # results.parquet rewritten (and a remote OUT synced) this often

    @property
    def resolved_region(self) -> str:
        return normalize_region(self.region)

    @property
    def url(self) -> str:
        return self.base_url or gateway_url(self.resolved_region, self.workspace)
