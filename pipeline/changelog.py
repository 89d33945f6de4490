"""The windows' changelog: what the service writes so that a restart reads one record per entity
instead of the input over twice the model's window; pure (the loop publishes, pipeline/kafka reads).

At each commit point the loop captures the windows that changed since the last one (`capture`): per
entity one record keyed by the entity, on the changelog partition of the same number as the input
partition its readings came from, then a position marker per input partition (key b"": no entity is
named so), written after that partition's entities. A marker at position P says: every entity of this
partition is in the changelog as of P. The topic is compacted, so it holds one record per entity.

The rule: state may lag the output, never lead it. A capture covers everything the loop has prepared,
which can be more than the point it belongs to has committed, so it is published only once a commit
covers it (`due`): after that commit under at-least-once, in the same transaction under exactly-once.
A restart (`resume_from`) loads the states and reads the input from the marker, as replays up to the
committed offset, skipping what an entity's state already holds. A changelog that is missing, of
another shape, or ahead of the committed offsets (a commit lost after the state landed) is not used:
the replay by time refills the windows instead, and the log says which path each partition took.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.records import Outgoing
from pipeline.state import BadState, EntityState, decode_state, encode_state

if TYPE_CHECKING:
    from pipeline.core import ForecastCore

MARKER_KEY = b""  # an entity's name is never empty (the decode step refuses it)
_MARKER = struct.Struct("<4sq")
_MARKER_MAGIC = b"SCP1"
MAX_PENDING = 64  # captures waiting for a commit; past that the two oldest are folded into one


def encode_marker(position: int) -> bytes:
    return _MARKER.pack(_MARKER_MAGIC, position)


def decode_marker(data: bytes | None) -> int | None:
    if not data or len(data) != _MARKER.size or data[:4] != _MARKER_MAGIC:
        return None
    return _MARKER.unpack(data)[1]


@dataclass
class Capture:
    positions: dict[int, int]  # input partition → next offset: the state covers what is before
    messages: list[Outgoing]


class Changelog:
    """Captures the windows that changed (the core's `touched`) at a commit point at most every
    `every_s` (0: each one; a stop or a hand-over always does) and hands them out once a commit covers
    them. Why not every point: at 1,000 entities a capture per 250 ms commit wrote a window for every
    other reading and cut kafka-python's sustained rate from 6,000 to 2,000 readings/s
    (docs/service.md); between captures a window is written once however often it changed, and a
    restart replays the input since the last one."""

    def __init__(self, core: ForecastCore, topic: str, partitions: set[int] | None = None, every_s: float = 0.0):
        self.core, self.topic, self.every_s = core, topic, every_s
        self._next = 0.0  # monotonic time of the next capture: the first commit point captures
        # the changelog's own partitions (None: any): a partition added to the readings later has
        # none to go to, so its entities are not captured and a restart replays that partition
        self.partitions = partitions
        core.track = True
        self.pending: deque[Capture] = deque()
        self._marked: dict[int, int] = {}  # partition → the position of its last marker

    def capture(self, positions: dict[int, int], force: bool = False, now_s: float | None = None) -> None:
        """The windows changed since the last capture, and the markers at `positions`, when one is due
        (or `force`d: a stop, a hand-over)."""
        now = time.monotonic() if now_s is None else now_s
        if not force and now < self._next:
            return
        self._next = now + self.every_s
        core, windows, topic = self.core, self.core.windows, self.topic
        home, kept = core.home, self.partitions
        out: list[Outgoing] = []
        for entity in core.touched:
            p = home[entity]
            if entity in windows.slots and (kept is None or p in kept):
                state = windows.export(entity, positions.get(p, 0))
                out.append(Outgoing(topic, entity.encode(), encode_state(state), p))
        for entity, p in core.forgotten:  # a tombstone: compaction drops the entity's record
            if kept is None or p in kept:
                out.append(Outgoing(topic, entity.encode(), None, p))
        core.touched, core.forgotten = set(), []
        for p, pos in positions.items():
            if self._marked.get(p) != pos and (kept is None or p in kept):
                out.append(Outgoing(topic, MARKER_KEY, encode_marker(pos), p))
                self._marked[p] = pos
        if out:
            self.pending.append(Capture(dict(positions), out))
            if len(self.pending) > MAX_PENDING:  # commits are not coming: fold the oldest into the next
                first, second = self.pending.popleft(), self.pending[0]
                latest = {(m.key, m.partition): m for m in (*first.messages, *second.messages)}  # the later wins
                second.messages = [m for m in latest.values() if m.key != MARKER_KEY] + [
                    m for m in latest.values() if m.key == MARKER_KEY
                ]  # markers after the entities of their partition

    def due(self, committed: dict[int, int]) -> list[Outgoing]:
        """The captures a commit up to `committed` covers, oldest first, as messages to publish."""
        out: list[Outgoing] = []
        while self.pending and all(committed.get(p, -1) >= pos for p, pos in self.pending[0].positions.items()):
            out.extend(self.pending.popleft().messages)
        return out


@dataclass
class PartitionState:
    """One changelog partition read to its end: the latest state per entity and the last marker."""

    marker: int | None = None
    states: dict[str, EntityState] = field(default_factory=dict)
    unreadable: int = 0  # records that were neither a window of this shape nor a marker


def fold(records, lookback: int, channels: int, into: PartitionState | None = None) -> PartitionState:
    """Apply (key, value) records in offset order: a marker moves the position, a window replaces the
    entity's, a tombstone forgets it; a window of another shape or format is counted and left out."""
    out = into or PartitionState()
    for key, value in records:
        if key == MARKER_KEY:
            position = decode_marker(value)
            if position is None:
                out.unreadable += 1
            else:
                out.marker = position
            continue
        entity = (key or b"").decode("utf-8", "replace")
        if value is None:
            out.states.pop(entity, None)
            continue
        try:
            state = decode_state(value)
        except BadState:
            out.unreadable += 1
            continue
        if (state.lookback, state.channels) != (lookback, channels):
            out.unreadable += 1
            continue
        out.states[entity] = state
    return out


@dataclass(frozen=True)
class Resume:
    """Where a partition's input is read from after a restore from its changelog."""

    start: int  # the marker: read from here as replays, up to the committed offset
    skip: dict[bytes, int]  # entity key → position its state already holds (a capture cut short)


def resume_from(part: PartitionState, committed: int | None, replay_start: int) -> tuple[Resume | None, str]:
    """Whether a partition can resume from its changelog, and why not: (Resume, "") or (None, why).
    `replay_start` is where the replay by time would begin; a marker older than that is behind."""
    if part.marker is None:
        return None, "no changelog" if not part.states else "a changelog with no position marker"
    if committed is None:
        return None, "no committed offset"
    if part.marker > committed:
        return None, f"the changelog (at {part.marker}) is ahead of the committed offset {committed}"
    if part.marker < replay_start:
        return None, f"the changelog (at {part.marker}) is behind the replay's start {replay_start}"
    skip = {e.encode(): s.position for e, s in part.states.items() if s.position > part.marker}
    return Resume(part.marker, skip), ""
