"""A C-ECHO probe in its own process: ``python -m tests.reliability.echo_probe PORT OUT [INTERVAL]``.

Every INTERVAL seconds it opens a fresh association, sends C-ECHO and releases,
timing association + echo (not its own start-up). On SIGTERM it writes the
latencies (seconds; null for a failed echo) as JSON to OUT and exits.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str]) -> int:
    port, out = int(argv[0]), Path(argv[1])
    interval = float(argv[2]) if len(argv) > 2 else 0.25
    from tests.reliability.peers import echo_once

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    latencies: list[float | None] = []
    echo_once(port)  # warm-up: imports and the first association
    while not stop.is_set():
        latencies.append(echo_once(port))
        stop.wait(interval)
    out.write_text(json.dumps(latencies))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
