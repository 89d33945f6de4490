"""Per-entity windows of the last L readings, pure and preallocated.

Each entity owns a row of one (entities, 2L, N) float32 array. A reading is written at position p
and p + L (a "double-written ring"), so the latest L readings are always the contiguous slice
[p + 1, p + 1 + L): no roll, no per-message allocation, and a batch is one fancy-indexed gather.

Timestamp policy (documented in the README):
- a reading whose ts equals the entity's last ts is a duplicate, one with an earlier ts is late:
  both are refused (the service sends them to the dead-letter topic with that reason);
- the entity's cadence is the smallest gap seen between its readings (or the configured interval);
- a gap of up to `max_fill_steps` missing steps is forward-filled with the last values;
- a longer gap resets the entity's window: stale history would mislead the model;
- an entity silent for longer than a TTL is forgotten (`evict_idle`): its slot is reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.messages import BadReading, Reading


@dataclass(frozen=True, slots=True)
class Pushed:
    ready: bool  # the window is full: this reading can be forecast
    filled: int = 0  # steps forward-filled before it
    reset: bool = False  # a long gap reset the window first


class EntityWindows:
    def __init__(
        self,
        n_channels: int,
        lookback: int,
        *,
        max_fill_steps: int = 3,
        interval_ms: int | None = None,
        capacity: int = 64,
    ):
        self.n, self.L = n_channels, lookback
        self.max_fill_steps = max_fill_steps
        self.fixed_interval_ms = interval_ms
        self.data = np.zeros((capacity, 2 * lookback, n_channels), dtype=np.float32)
        self.pos = np.zeros(capacity, dtype=np.int64)  # next write position in [0, L)
        self.count = np.zeros(capacity, dtype=np.int64)  # readings held, up to L
        self.last_ts = np.zeros(capacity, dtype=np.int64)
        self.interval = np.zeros(capacity, dtype=np.int64)  # 0 = not known yet
        self.seen = np.zeros(capacity, dtype=np.float64)  # when the entity last spoke (the caller's clock)
        self.slots: dict[str, int] = {}
        self.free: list[int] = []  # slots of evicted entities, reused before the array grows
        self._arange = np.arange(lookback)

    def __len__(self) -> int:
        return len(self.slots)

    def _slot(self, entity: str) -> int:
        slot = self.slots.get(entity)
        if slot is None:
            if self.free:
                slot = self.free.pop()
            else:
                slot = len(self.slots)
                if slot == self.data.shape[0]:
                    self._grow()
            self.slots[entity] = slot
        return slot

    def _grow(self) -> None:
        cap = self.data.shape[0] * 2
        self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        for name in ("pos", "count", "last_ts", "interval", "seen"):
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, np.zeros(cap - arr.shape[0], dtype=arr.dtype)]))

    def _write(self, slot: int, values: np.ndarray) -> None:
        p = self.pos[slot]
        self.data[slot, p] = values
        self.data[slot, p + self.L] = values
        self.pos[slot] = (p + 1) % self.L
        if self.count[slot] < self.L:
            self.count[slot] += 1

    def check(self, reading: Reading) -> None:
        """Raise BadReading for a late or duplicate reading, without changing any state."""
        slot = self.slots.get(reading.entity)
        if slot is None or self.count[slot] == 0:
            return
        last = int(self.last_ts[slot])
        if reading.ts_ms == last:
            raise BadReading("duplicate", f"{reading.entity} already has a reading at ts {reading.ts_ms}")
        if reading.ts_ms < last:
            raise BadReading("late", f"{reading.entity} ts {reading.ts_ms} is before its last reading at {last}")

    def push(self, reading: Reading, seen_s: float = 0.0) -> Pushed:
        self.check(reading)
        slot = self._slot(reading.entity)
        self.seen[slot] = seen_s
        filled, reset = 0, False
        if self.count[slot] > 0:
            delta = reading.ts_ms - int(self.last_ts[slot])
            interval = self.fixed_interval_ms or int(self.interval[slot])
            if interval > 0 and delta > interval * 1.5:
                missing = int(round(delta / interval)) - 1
                if missing <= self.max_fill_steps:
                    last_values = self.data[slot, (self.pos[slot] - 1) % self.L].copy()
                    for _ in range(missing):
                        self._write(slot, last_values)
                    filled = missing
                else:
                    self.count[slot] = 0
                    self.pos[slot] = 0
                    reset = True
            elif not self.fixed_interval_ms and (self.interval[slot] == 0 or delta < self.interval[slot]):
                self.interval[slot] = delta
        self._write(slot, reading.values)
        self.last_ts[slot] = reading.ts_ms
        return Pushed(bool(self.count[slot] >= self.L), filled, reset)

    def evict_idle(self, now_s: float, ttl_s: float) -> list[str]:
        """Forget the entities silent for longer than `ttl_s` (their slots are reused): memory follows
        the entities alive now, not every entity ever seen. Returns the evicted."""
        if not self.slots:
            return []
        live = len(self.slots) + len(self.free)
        idle = np.flatnonzero(self.seen[:live] < now_s - ttl_s)
        if not idle.size:
            return []
        by_slot = {slot: entity for entity, slot in self.slots.items()}
        gone = [by_slot[s] for s in idle.tolist() if s in by_slot]
        for entity in gone:
            slot = self.slots.pop(entity)
            self.count[slot] = self.pos[slot] = self.last_ts[slot] = self.interval[slot] = 0
            self.seen[slot] = np.inf  # free: never idle again until reused
            self.free.append(slot)
        return gone

    def window(self, entity: str) -> np.ndarray:
        """The latest L readings, oldest first, as a view: copy it before the next push."""
        slot = self.slots[entity]
        p = self.pos[slot]
        return self.data[slot, p : p + self.L]

    def gather(self, entities: list[str]) -> np.ndarray:
        """(B, L, N) windows for several entities in one fancy-indexed copy."""
        slots = np.fromiter((self.slots[e] for e in entities), dtype=np.int64, count=len(entities))
        idx = self.pos[slots][:, None] + self._arange
        return self.data[slots[:, None], idx]
