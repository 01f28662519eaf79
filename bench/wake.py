"""``python -m bench.wake BACKEND TARGET LEDGER COUNT``: a raw client's blocking wait.

The raw side of the latency measure: in its own process, as our worker is, it blocks on
the backend (BRPOP, LISTEN, consume, inotify), takes each task as it arrives and notes it
in the ledger. It prints ``ready`` once it is waiting.
"""

from __future__ import annotations

import sys

from bench.raw import RAW


def main(argv: list[str]) -> int:
    """Listen for ``COUNT`` tasks on ``TARGET`` of ``BACKEND``."""
    backend, target, ledger, count = argv
    client = RAW[backend](target)

    def ready() -> None:
        print("ready", flush=True)

    client.listen(ledger, int(count), ready)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
