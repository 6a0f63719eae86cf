"""Command line: parse options into one frozen config, call the library, map exceptions to exit codes.

Exit codes: 0 every item ok · 1 finished, some items failed · 2 usage or configuration error ·
3 aborted (fatal account error or the budget cap) · 4 the environment failed (service unreachable
past --max-outage, output disk full or read-only) · 130/143 interrupted (SIGINT/SIGTERM), work kept.
All of them live in ``exitcodes.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import click

from batchqwen import __version__
from batchqwen.config import RunConfig
from batchqwen.errors import BatchQwenError, BudgetExceeded, EnvironmentFailure, LockHeld, ManifestError, UsageError
from batchqwen.exitcodes import EXIT_ABORTED, EXIT_ENVIRONMENT, EXIT_USAGE
from batchqwen.models import DEFAULT_MODEL, REGISTRY
from batchqwen.realtime.gateways import DEFAULT_REGION, REGIONS, normalize_region

log = logging.getLogger("batchqwen")


class _Redact(logging.Filter):
    """Belt and braces: whatever a log line holds, the API key is replaced before it is written."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def _setup_logging(*, quiet: bool, log_file: Path | None, secrets: list[str]) -> None:
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    redact = _Redact(secrets)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("batchqwen: %(message)s"))
    console.addFilter(redact)
    log.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        file_handler.addFilter(redact)
        log.addHandler(file_handler)


def _fail(message: str, code: int) -> None:
    click.echo(f"batchqwen: error: {message}", err=True)
    sys.exit(code)


def _call(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run library code; turn our exceptions into a message and the documented exit code."""
    try:
        return func(*args, **kwargs)
    except (UsageError, ManifestError, LockHeld) as exc:
        _fail(str(exc), EXIT_USAGE)
    except BudgetExceeded as exc:
        _fail(str(exc), EXIT_ABORTED)
    except EnvironmentFailure as exc:
        _fail(str(exc), EXIT_ENVIRONMENT)
    except BatchQwenError as exc:
        _fail(str(exc), EXIT_ABORTED)
    except OSError as exc:  # an output folder or log file that cannot be written, ...
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", EXIT_USAGE)
    return None


def _modalities(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _decode_processes(value: str | int | None) -> int | None:
    """``auto`` (None: the runner decides from the manifest and the cores) or a number of processes."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not 'auto' or a number") from None
    if not 0 <= number <= 64:
        raise click.BadParameter(f"{number} is not in 0..64")
    return number


def _check_region(region: str) -> str:
    name = normalize_region(region)
    if name not in REGIONS:
        raise click.BadParameter(f"unknown region {region!r}; use one of {', '.join(REGIONS)}")
    return name


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchqwen")
def main() -> None:
    """Batch runner for the Qwen-Omni Realtime API, with a local simulator."""


_manifest_arg = click.argument("manifest", metavar="MANIFEST")


def _storage_options(func: Any) -> Any:
    """Where remote manifests, media and outputs are read and written (docs/storage.md)."""
    options = [
        click.option(
            "--s3-endpoint",
            default=None,
            metavar="URL",
            help="S3-compatible endpoint (Alibaba Cloud OSS, MinIO, ...); default: $AWS_ENDPOINT_URL_S3,"
            " $AWS_ENDPOINT_URL, else AWS. Credentials: the AWS environment variables, profiles or roles.",
        ),
        click.option("--s3-region", default=None, help="The bucket's region (default: $AWS_REGION, the profile's)."),
        click.option("--s3-virtual-hosted", is_flag=True, help="Address buckets as bucket.endpoint (OSS needs it)."),
        click.option(
            "--ca-bundle",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            default=None,
            help="CA certificates (PEM) for HTTPS media and an https S3 endpoint (default: $SSL_CERT_FILE, certifi).",
        ),
        click.option(
            "--allow-local-media",
            is_flag=True,
            help="Let a manifest read from a bucket or URL name local files (refused by default).",
        ),
        click.option(
            "--allow-private-urls",
            is_flag=True,
            help="Let URL media be on loopback, private or link-local addresses (refused by default).",
        ),
        click.option(
            "--delimiter",
            default=None,
            metavar="DELIM",
            callback=lambda ctx, param, value: _delimiter(value),
            help="CSV delimiter: comma, semicolon, tab, pipe or one character (default: detected from the header:"
            " comma, semicolon or tab).",
        ),
        click.option(
            "--cache-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Where remote media are downloaded during a run (default: the system temp folder).",
        ),
        click.option(
            "--cache-size",
            default="2G",
            show_default=True,
            help="At most this much downloaded media on disk at once (e.g. 500M, 4G).",
        ),
        click.option(
            "--fetch-attempts",
            type=click.IntRange(1, 20),
            default=5,
            show_default=True,
            help="Tries of a remote read or upload on transient errors (backoff with jitter).",
        ),
        click.option(
            "--fetch-timeout",
            type=click.FloatRange(min=0.1),
            default=30.0,
            show_default=True,
            help="Seconds to connect to storage, and of silence while reading from it.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    named = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|", "\\t": "\t"}.get(value.strip().lower(), value)
    if len(named) != 1 or named in '"\r\n':
        raise click.BadParameter(f"{value!r} is not comma, semicolon, tab, pipe or a single character")
    return named


def _storage_config(options: dict[str, Any]) -> Any:
    from batchqwen.storage.fetch import StorageOptions, parse_size

    return StorageOptions(
        s3_endpoint=options["s3_endpoint"],
        s3_region=options["s3_region"],
        s3_virtual_hosted=options["s3_virtual_hosted"],
        ca_bundle=options["ca_bundle"],
        allow_local_media=options["allow_local_media"],
        allow_private_urls=options["allow_private_urls"],
        timeout=options["fetch_timeout"],
        attempts=options["fetch_attempts"],
        cache_dir=options["cache_dir"],
        cache_bytes=parse_size(options["cache_size"]),
    )


def _open_manifest(text: str, storage: Any, options: dict[str, Any], folder: Path) -> tuple[Path, Any]:
    """The manifest on disk (a remote one downloaded into ``folder``) and how to read it."""
    from batchqwen.manifest import ManifestOptions
    from batchqwen.storage.fetch import fetch_manifest
    from batchqwen.storage.locations import Remote, parse_location

    delimiter = options["delimiter"]
    where = parse_location(text)
    if isinstance(where, Remote):
        local = fetch_manifest(where, folder, storage)
        return local, ManifestOptions(delimiter, where.url, storage.allow_local_media)
    return where, ManifestOptions(delimiter)


def _scratch_dir(prefix: str) -> Path:
    """A temporary folder for this command (a downloaded manifest), removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _manifest_stem(text: str) -> str:
    from batchqwen.storage.locations import Remote, parse_location

    where = parse_location(text)
    return Path(where.name if isinstance(where, Remote) else where).stem or "manifest"


def _shared_options(func: Any) -> Any:
    options = [
        click.option(
            "--out",
            "-o",
            default=None,
            help="Output folder, or s3://bucket/prefix (default: out/<manifest name>).",
        ),
        click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Default model for rows without one."),
        click.option("--voice", default=None, help="Default voice (default: the model's)."),
        click.option("--modalities", default="text,audio", show_default=True, help="'text' or 'text,audio'."),
        click.option("--instructions", default=None, help="Default instructions for rows without their own."),
        click.option(
            "--region",
            default=DEFAULT_REGION,
            envvar="DASHSCOPE_REGION",
            show_default=True,
            show_envvar=True,
            help=f"One of {', '.join(REGIONS)}.",
        ),
        click.option(
            "--translate-to",
            default=None,
            metavar="LANG",
            help="LiveTranslate models: translate into LANG (rows may set target_language; default en).",
        ),
        click.option(
            "--source-language",
            default=None,
            metavar="LANG",
            help="LiveTranslate models: the language spoken (default: detected by the service).",
        ),
        click.option(
            "--prices",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            default=None,
            help="A prices TOML that extends/replaces the shipped one.",
        ),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N items."),
        click.option(
            "--output-seconds",
            type=click.FloatRange(min=0),
            default=8.0,
            show_default=True,
            help="Estimate assumption: seconds of spoken answer per item.",
        ),
        click.option(
            "--pad-silence",
            "pad_silence",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="Seconds of silence sent for items with no audio.",
        ),
        click.option(
            "--video-fps",
            type=click.FloatRange(min=0.01, max=30),
            default=1.0,
            show_default=True,
            help="Frames per second taken from videos.",
        ),
        click.option(
            "--video-frames",
            type=click.Choice(["keyframes", "exact"]),
            default="keyframes",
            show_default=True,
            help="keyframes: the nearest key frame within half the sampling interval, else decoded to the moment"
            " (decoding follows the frames kept); exact: every frame decoded, the first at or after each moment."
            " The count and the size of frames, hence the estimate, are the same in both.",
        ),
        click.option(
            "--image-frames",
            type=click.Choice(["first", "all"]),
            default="first",
            show_default=True,
            help="Animated GIF/WebP/PNG and multi-page TIFF: send the first frame (the row's notes say how many"
            " there were) or all, as far as the model's images a second of audio allow (the rest dropped, noted).",
        ),
        click.option(
            "--tools",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Tools the model may call: a Python module (its public functions, schemas from their type hints)"
            " or a JSON file of declarations in the service's form. Rows may narrow them with a 'tools' column.",
        ),
        click.option(
            "--tool-output",
            default='{"ok": true}',
            show_default=True,
            metavar="JSON",
            help="What a tool of a JSON declarations file answers (nothing runs).",
        ),
        click.option(
            "--extract",
            default=None,
            metavar="TOOL",
            help="Put TOOL's final arguments into typed extract_<property> columns (from its JSON Schema); a row"
            " whose arguments do not validate fails with the reason.",
        ),
        click.option(
            "--assume-tool-rounds",
            type=click.IntRange(min=0),
            default=1,
            show_default=True,
            help="Estimate (and the --max-cost check): tool rounds per turn when tools are offered.",
        ),
        click.option(
            "--split",
            type=click.Choice(["auto", "never"]),
            default="auto",
            show_default=True,
            help="An item too long for one session (over the model's input limit, or longer than the session"
            " lifetime allows at --pace): auto: cut at pauses, one session per segment; never: fail it at once,"
            " naming its estimate and the limit.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _service_options(func: Any) -> Any:
    """Where the service is and who calls it: shared by ``run`` and ``check``."""
    options = [
        click.option(
            "--base-url", default=None, help="WebSocket URL of the service (overrides --region and --workspace)."
        ),
        click.option(
            "--api-key",
            default=None,
            envvar="DASHSCOPE_API_KEY",
            show_envvar=True,
            show_default=False,
            help="API key (default: $DASHSCOPE_API_KEY). Never logged or printed.",
        ),
        click.option(
            "--workspace",
            default=None,
            envvar="DASHSCOPE_WORKSPACE",
            show_envvar=True,
            help="Workspace id: its own gateway (recommended), the X-DashScope-WorkSpace header, and its quotas.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _default_out(manifest: str) -> str:
    return str(Path("out") / _manifest_stem(manifest))


@main.command()
@_manifest_arg
@_shared_options
@_storage_options
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="With --out s3://...: the local folder of the journal and the run lock (default: one per output URL"
    " under ~/.local/state/batchqwen).",
)
@click.option(
    "--checkpoint-seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="How often results.parquet is rewritten and a remote --out is synced while the run goes on.",
)
@click.option(
    "--concurrency", "-c", type=click.IntRange(1, 1024), default=8, show_default=True, help="Sessions open at once."
)
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Sessions started per minute (default: model's).")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="Tokens per minute (default: model's).")
@click.option(
    "--max-attempts", type=click.IntRange(1, 20), default=4, show_default=True, help="Sessions tried per item."
)
@click.option("--max-cost", type=click.FloatRange(min=0), default=None, help="Budget cap in the price currency.")
@_service_options
@click.option("--simulate", is_flag=True, help="Run against the built-in simulator, started in-process.")
@click.option("--dry-run", is_flag=True, help="Estimate tokens and cost offline; open no connection.")
@click.option(
    "--log-events",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write every raw event as JSON lines (payloads elided, key redacted).",
)
@click.option("--no-transcription", is_flag=True, help="Do not ask for the input transcript.")
@click.option(
    "--pace",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Audio streaming speed: 0 as fast as possible, 1 real time.",
)
@click.option(
    "--decode-processes",
    default="auto",
    show_default=True,
    metavar="auto|N",
    callback=lambda ctx, param, value: _decode_processes(value),
    help="Decode media in N worker processes (0: threads of the main process); auto: processes for a large"
    " manifest of compressed media, none for a small or WAV-only one.",
)
@click.option(
    "--chunk-ms",
    type=click.IntRange(10, 10_000),
    default=100,
    show_default=True,
    help="Audio per append event, in ms (the official samples send 100 ms).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds for the WebSocket handshake.",
)
@click.option(
    "--first-event-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds from the handshake to session.created.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Longest silence from the service while waiting for it.",
)
@click.option(
    "--item-timeout",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds one session may take (default: 300 s plus the item's streaming time at --pace), never past"
    " the model's session lifetime.",
)
@click.option(
    "--max-outage",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds the service may stay unreachable before the run stops (exit 4; the rest stays pending).",
)
@click.option("--wait-lock", is_flag=True, help="Wait for another run on the same --out instead of exiting.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight items may finish after SIGINT/SIGTERM.",
)
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and the final summary line.")
@click.option(
    "--log-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Also log to this file."
)
@click.option(
    "--tool-timeout",
    type=click.FloatRange(min=0.001),
    default=30.0,
    show_default=True,
    help="Seconds one tool call may take; past it the model gets an error object.",
)
@click.option(
    "--max-tool-rounds",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Tool rounds per turn; a model asking for more fails its item (its calls recorded).",
)
def run(manifest: str, out: str | None, **options: Any) -> None:
    """Run every item of MANIFEST (CSV, JSONL or Parquet) through a realtime session.

    Results go to OUT/results.parquet, speech to OUT/audio/, a summary to OUT/summary.json. Running again
    with the same --out resumes: items already ok are skipped.

    Exit codes: 0 all ok, 1 some items failed, 2 usage error, 3 aborted (key refused, arrears, budget),
    4 the environment failed (service unreachable past --max-outage, output disk full; the rest stays
    pending), 130/143 interrupted.
    """
    out = out or _call(_default_out, manifest)
    if options["dry_run"]:
        _estimate(manifest, out, options)
        return
    from batchqwen.storage.locations import Remote, parse_location
    from batchqwen.storage.outputs import state_dir_for

    api_key = options["api_key"]
    _call(_setup_logging, quiet=options["quiet"], log_file=options["log_file"], secrets=[api_key] if api_key else [])
    if not api_key and not options["simulate"]:
        _fail(
            "no API key: set DASHSCOPE_API_KEY (or pass --api-key), or use --simulate to run against the "
            "built-in simulator, or --dry-run to estimate the cost offline",
            EXIT_USAGE,
        )
    modalities = _modalities(options["modalities"])
    assert modalities is not None
    storage = _call(_storage_config, options)
    out_where = _call(parse_location, out)
    remote_out = out_where if isinstance(out_where, Remote) else None
    if remote_out is not None and not remote_out.is_object:
        _fail(f"--out {remote_out}: a remote output folder must be s3:// or gs://", EXIT_USAGE)
    local_out = state_dir_for(remote_out, options["state_dir"]) if remote_out else out_where
    assert isinstance(local_out, Path)
    downloads = _scratch_dir("batchqwen-manifest-")
    manifest_path, manifest_options = _call(_open_manifest, manifest, storage, options, downloads)
    config = _call(
        RunConfig,
        manifest=manifest_path,
        out=local_out,
        manifest_options=manifest_options,
        storage=storage,
        remote_out=remote_out.url if remote_out else None,
        checkpoint_seconds=options["checkpoint_seconds"],
        model=options["model"],
        voice=options["voice"],
        modalities=modalities,
        instructions=options["instructions"],
        translate_to=options["translate_to"],
        source_language=options["source_language"],
        region=_check_region(options["region"]),
        base_url=options["base_url"],
        api_key=api_key,
        workspace=options["workspace"],
        simulate=options["simulate"],
        limit=options["limit"],
        log_events=options["log_events"],
        concurrency=options["concurrency"],
        rpm=options["rpm"],
        tpm=options["tpm"],
        max_attempts=options["max_attempts"],
        max_cost=options["max_cost"],
        prices=options["prices"],
        video_fps=options["video_fps"],
        video_frames=options["video_frames"],
        image_frames=options["image_frames"],
        pad_silence_seconds=options["pad_silence"],
        split=options["split"],
        transcribe_input=not options["no_transcription"],
        pace=options["pace"],
        chunk_ms=options["chunk_ms"],
        decode_processes=options["decode_processes"],
        output_seconds=options["output_seconds"],
        connect_timeout=options["connect_timeout"],
        first_event_timeout=options["first_event_timeout"],
        idle_timeout=options["idle_timeout"],
        item_timeout=options["item_timeout"],
        max_outage=options["max_outage"],
        grace_seconds=options["grace"],
        wait_lock=options["wait_lock"],
        quiet=options["quiet"],
        log_file=options["log_file"],
        tools=options["tools"],
        tool_output=options["tool_output"],
        tool_timeout=options["tool_timeout"],
        max_tool_rounds=options["max_tool_rounds"],
        extract=options["extract"],
        assume_tool_rounds=options["assume_tool_rounds"],
    )
    _call(_validate_defaults, config)
    if config.base_url and not config.simulate:
        from batchqwen.realtime.client import url_for

        _call(url_for, config.base_url, config.model)  # a bad URL is a usage error now, not a failed item
    elif config.base_url:
        log.warning("--base-url is ignored with --simulate (the built-in simulator picks its own address)")
    from batchqwen.runner import load_run_tools
    from batchqwen.runner import run as run_batch

    loaded = _call(load_run_tools, config)  # a bad tools file, or tools on a model without: exit 2 now
    outcome = _call(asyncio.run, run_batch(config, checkpoint_seconds=config.checkpoint_seconds, loaded_tools=loaded))
    summary = outcome.summary
    counts = summary.get("by_status", {})
    shown = str(remote_out).rstrip("/") if remote_out else str(local_out)
    results_at = f"{shown}/results.parquet" if remote_out else outcome.results_path
    click.echo(
        f"batchqwen: {outcome.reason}: {summary.get('items_in_manifest', 0)} items;"
        f" ok {counts.get('ok', 0)}, failed {counts.get('failed', 0)}, pending {counts.get('pending', 0)},"
        f" skipped (already ok) {summary.get('items_skipped_already_ok', 0)};"
        f" results in {results_at}, audio in {shown}/audio, summary in {shown}/summary.json",
        err=options["quiet"] or outcome.exit_code == EXIT_ENVIRONMENT,  # cron mails stderr
    )
    sys.exit(outcome.exit_code)


def _validate_defaults(config: RunConfig) -> None:
    _check_defaults(config.model, config.voice, config.modalities, config.translate_to, config.source_language)
    if not config.simulate:
        config.url  # noqa: B018 (a bad workspace id is a usage error now, not a failed item)


def _check_defaults(
    model_name: str, voice: str | None, modalities: tuple[str, ...], target: str | None, source: str | None
) -> None:
    """The run's defaults, checked before any session: an option the default model cannot serve is exit 2."""
    from batchqwen.models import get_model, validate_modalities, validate_voice, voice_warning
    from batchqwen.plan import check_translation

    model = get_model(model_name)
    chosen = validate_voice(model, voice)
    warning = voice_warning(model, chosen)
    if warning:
        log.warning("%s", warning)
    validate_modalities(modalities)
    check_translation(model, target, source)


def _estimate(manifest_text: str, out_text: str, options: dict[str, Any]) -> None:
    from batchqwen import cost
    from batchqwen.estimate import early_workers, estimate_manifest, format_report, write_estimate_summary
    from batchqwen.manifest import check_manifest
    from batchqwen.models import validate_modalities
    from batchqwen.storage.fetch import shared_storage
    from batchqwen.storage.locations import Remote, parse_location

    folder = _scratch_dir("batchqwen-estimate-")
    out_where = _call(parse_location, out_text)
    out = folder / "out" if isinstance(out_where, Remote) else out_where
    assert isinstance(out, Path)

    calibration: Any = None

    def work() -> Any:
        modalities = validate_modalities(_modalities(options["modalities"]) or ())
        _check_defaults(
            options["model"], options["voice"], modalities, options["translate_to"], options["source_language"]
        )
        storage = _storage_config(options)
        manifest, manifest_options = _open_manifest(manifest_text, storage, options, folder)
        with early_workers(manifest) as pool:
            check_manifest(manifest, options=manifest_options)
            return estimated(manifest, manifest_options, modalities, storage, pool)

    def estimated(manifest: Path, manifest_options: Any, modalities: Any, storage: Any, pool: Any) -> Any:
        nonlocal calibration
        prices = cost.load_prices(options["prices"])
        output = cost.OutputAssumption(output_seconds_per_item=options["output_seconds"])
        catalog = None
        if options["tools"] is not None:
            from batchqwen.extract import extraction_for
            from batchqwen.models import get_model
            from batchqwen.tools import check_tool_model, load_tools

            check_tool_model(get_model(options["model"]))
            toolbox = load_tools(options["tools"], canned_output=options["tool_output"])
            if options["extract"] is not None:
                extraction_for(toolbox, options["extract"])
            catalog = toolbox.catalog
        elif options["extract"] is not None:
            raise UsageError("--extract needs --tools (the tool whose arguments become columns)")
        history = options.get("calibrate_from") or ()
        if history:
            from batchqwen.calibrate import calibrate

            calibration = calibrate(list(history))
            output = calibration.output(output)
        report = estimate_manifest(
            manifest,
            default_model=options["model"],
            region=_check_region(options["region"]),
            prices=prices,
            output=output,
            modalities=modalities,
            instructions=options["instructions"],
            limit=options["limit"],
            pad_silence_seconds=options["pad_silence"],
            out_dir=out,
            video_fps=options["video_fps"],
            image_frames=options["image_frames"],
            voice=options["voice"],
            target_language=options["translate_to"],
            source_language=options["source_language"],
            tools=catalog,
            tool_rounds=options["assume_tool_rounds"],
            extract=options["extract"],
            manifest_options=manifest_options,
            storage=storage,
            process_pool=pool,
            split=options["split"],
            pace=options.get("pace") or 0.0,  # run --dry-run --pace: the session lifetime counts too
        )
        if calibration is not None and report.parquet is not None and report.total_cost is not None:
            import pandas as pd

            from batchqwen.calibrate import cost_range

            rows = pd.read_parquet(report.parquet)
            report.cost_range = cost_range(calibration, rows, prices, _check_region(options["region"]))
        write_estimate_summary(report, out)
        return report

    def store(report: Any) -> str:
        if not isinstance(out_where, Remote):
            return str(out / "estimate.parquet")
        if not out_where.is_object:
            raise UsageError(f"--out {out_where}: a remote output folder must be s3:// or gs://")
        storage = shared_storage(_storage_config(options))
        for path in sorted(p for p in out.rglob("*") if p.is_file()):  # estimate.parquet and its summary
            storage.upload(path, out_where.join(path.relative_to(out).as_posix()))
        return str(out_where.join("estimate.parquet"))

    report = _call(work)
    click.echo(format_report(report))
    if calibration is not None:
        click.echo("Calibration (answer length learned from earlier runs' ok rows):")
        for line in calibration.describe():
            click.echo(line)
    click.echo(f"per-item estimate in {_call(store, report)}")


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=False)
@click.option(
    "--model", default=DEFAULT_MODEL, show_default=True, help="The model (with a manifest: for rows without one)."
)
@click.option(
    "--region",
    default=DEFAULT_REGION,
    envvar="DASHSCOPE_REGION",
    show_default=True,
    show_envvar=True,
    help=f"One of {', '.join(REGIONS)}.",
)
@_service_options
@click.option("--simulate", is_flag=True, help="Check against the built-in simulator, started in-process.")
@click.option(
    "--timeout",
    "timeout",
    type=click.FloatRange(min=0.1, max=60),
    default=3.0,
    show_default=True,
    help="Seconds for each step (connect, session.created, session.updated, the quota).",
)
def check(
    manifest: Path | None,
    model: str,
    region: str,
    base_url: str | None,
    api_key: str | None,
    workspace: str | None,
    simulate: bool,
    timeout: float,
) -> None:
    """Check that the service takes this key and the models of MANIFEST (or --model); nothing is billed.

    One session per model: connect, session.created, session.update, session.updated, close, without
    asking for a response and without sending any of the manifest's content. Prints per model the host,
    the handshake time and what failed; and the quotas read (with --workspace or --base-url). For cron:
    `batchqwen check && batchqwen run ...`.

    Exit codes: 0 every model usable, 1 a model or the quota refused, 2 usage error, 3 the key refused
    or arrears, 4 the service unreachable.
    """
    from batchqwen.check import CheckSettings, check_models, models_to_check

    if not api_key and not simulate:
        _fail("no API key: set DASHSCOPE_API_KEY (or pass --api-key), or use --simulate", EXIT_USAGE)
    names = _call(models_to_check, model, manifest)
    if simulate and base_url:
        log.warning("--base-url is ignored with --simulate (the built-in simulator picks its own address)")

    async def work() -> Any:
        settings = CheckSettings(
            base_url=base_url or _check_region(region),
            api_key=api_key or "sk-simulator",
            workspace=None if simulate else workspace,
            connect_timeout=timeout,
            event_timeout=timeout,
        )
        if not simulate:
            return await check_models(names, settings)
        from dataclasses import replace

        from batchqwen.sim.server import Simulator, SimulatorConfig

        async with Simulator(SimulatorConfig()) as sim:
            return await check_models(names, replace(settings, base_url=sim.url))

    report = _call(asyncio.run, work())
    for line in report.lines():
        click.echo(line)
    sys.exit(report.exit_code)


@main.command()
@_manifest_arg
@_shared_options
@_storage_options
@click.option(
    "--calibrate-from",
    "calibrate_from",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    multiple=True,
    help="Learn the answer length per model from the ok rows of this earlier run's OUT (repeatable); prints the"
    " total with a p10-p90 range. Without it: --output-seconds.",
)
def estimate(manifest: str, out: str | None, **options: Any) -> None:
    """Estimate tokens and cost of MANIFEST offline (no network). Same as `run --dry-run`.

    A manifest or media in a bucket or behind a URL are read, media by their headers only (ranged reads).
    """
    _estimate(manifest, out or _call(_default_out, manifest), options)


@main.command()
@click.option("--prices", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None)
def models(prices: Path | None) -> None:
    """List the known models, their capabilities and prices."""
    from batchqwen.cost import load_prices

    book = _call(load_prices, prices)
    click.echo(f"prices: {book.currency} per 1M tokens; source: {book.describe()}")
    for model in REGISTRY.values():
        caps = [
            f"family {model.protocol}",
            "text input" if model.text_input else ("prompt as instructions" if model.instructions else "speech only"),
            "tools" if model.tools else "no tools",
            "images" if model.images else "no images",
        ]
        if model.translation is not None:
            caps.append("translation")
        rules = (
            f"audio {model.audio_tokens_per_second:g} tok/s (min {model.min_audio_seconds:g} s), image 1 tok per"
            f" {model.image_block_px}x{model.image_block_px} px ({model.image_min_tokens}-{model.image_max_tokens})"
        )
        click.echo(
            f"\n{model.name}  [{', '.join(caps)}]{'' if model.token_rules_confirmed else '  (token rules unconfirmed)'}"
        )
        click.echo(
            f"  {rules}; limits: {model.default_rpm} RPM, {model.default_tpm} TPM;"
            f" output {model.output_sample_rate} Hz; session lifetime {model.session_lifetime_seconds / 60:g} min"
        )
        listed = "" if model.voices_published else "; list not published: other voices are sent as given"
        cloned = "; cloned voice ids accepted" if model.cloned_voices else ""
        click.echo(f"  voices: {', '.join(model.voices)} (default {model.default_voice}{listed}{cloned})")
        if model.translation is not None:
            languages = model.translation
            click.echo(f"  translates into: {', '.join(languages.targets)}")
            click.echo(f"  with speech: {', '.join(languages.speech_targets)}")
        priced = [(region, book.lookup(model.name, region)) for region in REGIONS]
        shown = [(region, price) for region, price in priced if price is not None]
        if not shown:
            click.echo("  no known price (estimates report its cost as unknown, never as zero)")
        for region, price in shown:
            click.echo(
                f"  {region}: in text {price.input_text:g}, audio {price.input_audio:g}, image "
                f"{price.input_image:g}; out text {price.output_text_textonly:g} (text-only input) / "
                f"{price.output_text_multimodal:g} (multimodal), text+audio {price.output_text_audio:g}"
            )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port.")
@click.option("--api-key", "api_keys", multiple=True, help="Accept only this key (repeatable); default: any key.")
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds before each response's first event.",
)
@click.option(
    "--delta-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds between a response's delta events.",
)
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Sessions per minute quota (sliding window).")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="Tokens per minute quota (sliding window).")
@click.option(
    "--throttle-mode",
    type=click.Choice(["handshake", "error"]),
    default="handshake",
    show_default=True,
    help="Over quota: HTTP 429 at the handshake, or a Throttling error event then close.",
)
@click.option("--disconnect-rate", type=click.FloatRange(0, 1), default=0.0, help="Abrupt drops mid-response.")
@click.option("--server-error-rate", type=click.FloatRange(0, 1), default=0.0, help="server_error then close.")
@click.option("--hang-rate", type=click.FloatRange(0, 1), default=0.0, help="Stop answering mid-response.")
@click.option("--malformed-rate", type=click.FloatRange(0, 1), default=0.0, help="A frame that is not JSON.")
@click.option("--session-lifetime", type=click.FloatRange(min=1), default=7200.0, show_default=True)
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
@click.option(
    "--tool-rounds",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Times a turn calls each tool it names before answering (more than 1: calls after tool outputs).",
)
@click.option(
    "--parallel-tool-calls/--sequential-tool-calls",
    default=True,
    show_default=True,
    help="Every named tool in one response, or one call per response.",
)
def simulate(host: str, port: int, api_keys: tuple[str, ...], **options: Any) -> None:
    """Run the local simulator of the realtime service until interrupted.

    Per-connection faults: add `&sim_fault=disconnect|server_error|hang|malformed|throttle` to the URL, or
    `bad_argument_type|missing_argument` (function call arguments that violate the tool's schema); tool
    calls per connection: `&sim_tool_rounds=N&sim_parallel_calls=0|1`.
    """
    from batchqwen.sim.server import SimulatorConfig, serve

    config = _call(
        SimulatorConfig,
        api_keys=api_keys,
        latency_seconds=options["latency"],
        delta_delay_seconds=options["delta_delay"],
        rpm=options["rpm"],
        tpm=options["tpm"],
        throttle_mode=options["throttle_mode"],
        disconnect_rate=options["disconnect_rate"],
        server_error_rate=options["server_error_rate"],
        hang_rate=options["hang_rate"],
        malformed_rate=options["malformed_rate"],
        session_lifetime_seconds=options["session_lifetime"],
        idle_timeout_seconds=options["idle_timeout"],
        seed=options["seed"],
        tool_rounds=options["tool_rounds"],
        parallel_tool_calls=options["parallel_tool_calls"],
    )
    try:
        serve(config, host, port)
    except OSError as exc:  # port taken, address not available
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_USAGE)


@main.command()
@click.argument("out", metavar="OUT")
@click.option(
    "--html",
    "html",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[FILE]",
    help="Also write the HTML report (default FILE: OUT/report.html): figures, every item with its audio.",
)
@click.option(
    "--embed-audio",
    is_flag=True,
    help="With --html: put the WAVs and thumbnails inside the file (refused above 50 MB) instead of linking them.",
)
@click.option("--s3-endpoint", default=None, metavar="URL", help="S3-compatible endpoint of a remote OUT.")
@click.option("--s3-region", default=None, help="The bucket's region.")
@click.option("--s3-virtual-hosted", is_flag=True, help="Address buckets as bucket.endpoint.")
def report(
    out: str,
    html: str | None,
    embed_audio: bool,
    s3_endpoint: str | None,
    s3_region: str | None,
    s3_virtual_hosted: bool,
) -> None:
    """Totals of a finished run in OUT (a folder or s3://bucket/prefix): estimate vs actual by modality, the
    estimate's error, the failed items. With a bucket OUT, --html is written back into it (or to FILE)."""
    import tempfile

    from batchqwen.report import build_report, format_report
    from batchqwen.storage.fetch import StorageOptions, shared_storage
    from batchqwen.storage.locations import Remote, parse_location
    from batchqwen.storage.outputs import download_out

    if embed_audio and html is None:
        _fail("--embed-audio goes with --html", EXIT_USAGE)
    where = _call(parse_location, out)
    remote = where if isinstance(where, Remote) else None
    storage = shared_storage(StorageOptions(s3_endpoint, s3_region, s3_virtual_hosted))
    with tempfile.TemporaryDirectory(prefix="batchqwen-report-") as folder:
        if remote is not None:
            names = ("results.parquet", "summary.json", "run_events.jsonl", "journal.jsonl")
            where = _call(download_out, remote, storage, Path(folder), names)
        assert isinstance(where, Path)
        click.echo(format_report(_call(build_report, where)))
        if html is not None:
            from batchqwen.reporting.html import write_html_report

            target = Path(html) if html else None
            path = _call(write_html_report, where, target, embed_audio=embed_audio)
            if remote is not None and target is None:  # back into the bucket, with its thumbnails
                made = [p for p in Path(folder).rglob("*") if p.is_file() and p.name not in names]
                for file in made:
                    _call(storage.upload, file, remote.join(file.relative_to(folder).as_posix()))
                path = remote.join(path.name)
            click.echo(f"HTML report: {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
