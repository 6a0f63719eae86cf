"""The exit codes of every command, in one place (``cli.py`` maps exceptions to them, ``runner.py`` and
``check.py`` decide them for a finished run or check).

- 0: every item ok (``check``: every model usable)
- 1: finished, some items failed (``check``: the service answers but refuses a model or the quota)
- 2: usage or configuration error: nothing ran
- 3: aborted: a fatal account error (invalid key, arrears) or the budget cap
- 4: the environment failed, not the items: the service unreachable past ``--max-outage``, or the
  output disk full or read-only; items never reached stay ``pending`` for the next run
- 130 / 143: interrupted by SIGINT / SIGTERM, everything finished so far kept

4 is its own code so that a cron wrapper can tell "try again later, nothing is wrong with the data"
from "some items are bad" (1) and "fix the configuration" (2, 3).
"""

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_ENVIRONMENT = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
