#!/bin/sh
# Nightly batchqwen run, made for cron (see crontab and README.md beside this file).
#
#   run-nightly.sh MANIFEST OUT [extra batchqwen run options...]
#
# - The API key comes from an env file (default ~/.config/batchqwen/env, override with BATCHQWEN_ENV_FILE)
#   holding one line `DASHSCOPE_API_KEY=sk-...`; the script refuses a file that group or others can read.
# - No flock here: batchqwen locks OUT itself (a second run exits 2 naming the holder; add --wait-lock to queue).
# - Logs go to OUT/logs/YYYY-MM-DD.log (batchqwen's own log, key redacted); stdout/stderr are appended too.
#   MANIFEST and OUT may be buckets (s3://bucket/jobs/m.csv, s3://bucket/results/nightly; AWS_* variables in
#   the env file); with a bucket OUT the logs go to $BATCHQWEN_LOG_DIR (default ~/.local/state/batchqwen/logs).
# - Running it again with the same OUT resumes: items already ok are skipped, failed ones retried.
#
# Exit codes (batchqwen's, passed through):
#   0 every item ok      1 finished, some items failed     2 usage/configuration error or OUT locked
#   3 aborted: key refused, arrears, quota exhausted, or the budget cap
#   130/143 interrupted by SIGINT/SIGTERM (finished items kept; run again to resume)
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 MANIFEST OUT [batchqwen run options...]" >&2
    exit 2
fi
MANIFEST=$1
OUT=$2
shift 2

HERE=$(cd "$(dirname "$0")" && pwd)
BATCHQWEN=${BATCHQWEN:-$HERE/../../.venv/bin/batchqwen}
ENV_FILE=${BATCHQWEN_ENV_FILE:-$HOME/.config/batchqwen/env}

if [ ! -f "$ENV_FILE" ]; then
    echo "run-nightly: no env file $ENV_FILE (one line: DASHSCOPE_API_KEY=sk-...; chmod 600)" >&2
    exit 2
fi
MODE=$(stat -c %a "$ENV_FILE" 2>/dev/null || stat -f %Lp "$ENV_FILE")
case "$MODE" in
    600|400) ;;
    *) echo "run-nightly: $ENV_FILE has mode $MODE; it holds the API key: chmod 600 it" >&2; exit 2 ;;
esac
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
if [ -z "${DASHSCOPE_API_KEY:-}" ]; then
    echo "run-nightly: $ENV_FILE does not set DASHSCOPE_API_KEY" >&2
    exit 2
fi

case "$OUT" in
    s3://*|gs://*) LOGS=${BATCHQWEN_LOG_DIR:-$HOME/.local/state/batchqwen/logs} ;;  # OUT is a bucket: logs stay here
    *) LOGS=$OUT/logs ;;
esac
mkdir -p "$LOGS"
LOG="$LOGS/$(date +%Y-%m-%d).log"
status=0
"$BATCHQWEN" run "$MANIFEST" --out "$OUT" --quiet --log-file "$LOG" "$@" >>"$LOG" 2>&1 || status=$?
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run-nightly: batchqwen exited $status (summary: $OUT/summary.json)" >>"$LOG"
exit $status
