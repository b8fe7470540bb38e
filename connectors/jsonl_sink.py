"""CDP event sink that appends JSON lines to a file (the demo's CDP).

Each line is one outbox event payload. Pushing is at-least-once: a crash
between the append and the ledger's acknowledgement re-appends the same
``event_id``, which is the dedupe key a reader uses (as Segment's
``messageId`` is for its batch API).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def push(self, payloads: Iterable[str]) -> int:
        """Append each payload as one line and fsync; return the count."""
        lines = [payload.replace("\n", " ") + "\n" for payload in payloads]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        return len(lines)
