"""In-memory source and sink, public like bytewax.testing: unit tests and `bench latency --in-memory`
drive the real loop with them."""

from __future__ import annotations

import threading
import time

from pipeline.records import Outgoing, Record


class MemorySource:
    """A list of records served in order; `commit` remembers how far the loop got."""

    def __init__(self, records: list[Record] | None = None):
        self.records: list[Record] = list(records or [])
        self.position = 0
        self.committed = 0
        self._lock = threading.Lock()

    def add(self, records: list[Record]) -> None:
        with self._lock:
            self.records.extend(records)

    def poll(self, max_records: int, timeout_ms: float) -> list[Record]:
        with self._lock:
            batch = self.records[self.position : self.position + max_records]
            self.position += len(batch)
        if not batch and timeout_ms:
            time.sleep(timeout_ms / 1000)
        return batch

    def checkpoint(self) -> int:
        return self.position

    @staticmethod
    def positions(checkpoint: int) -> dict[int, int]:
        return {0: checkpoint}

    def commit(self, checkpoint: int | None = None) -> None:
        self.committed = self.position if checkpoint is None else checkpoint


class MemorySink:
    """Published messages stay `pending` until confirmed: all by `flush`, those before a mark when
    `settled(mark)` is asked (a broker that acknowledges at once, as soon as anyone looks)."""

    def __init__(self, commit_when_quiet: bool = False) -> None:
        self.commit_when_quiet = commit_when_quiet
        self.pending: list[Outgoing] = []
        self.confirmed: list[Outgoing] = []

    def publish(self, messages: list[Outgoing]) -> None:
        self.pending.extend(messages)

    def mark(self) -> int:
        return len(self.confirmed) + len(self.pending)

    def settled(self, mark: int) -> bool:
        n = max(0, mark - len(self.confirmed))
        self.confirmed.extend(self.pending[:n])
        del self.pending[:n]
        return True

    def flush(self) -> None:
        self.confirmed.extend(self.pending)
        self.pending = []

    def on(self, topic: str) -> list[Outgoing]:
        return [m for m in self.confirmed if m.topic == topic]
