"""Per-entity windows of the last L slots of a time grid, pure and preallocated.

Each entity owns a row of one (entities, 2L, N) float32 array. A slot's values are written at position
p and p + L (a "double-written ring"), so the latest L slots are always the contiguous slice
[p + 1, p + 1 + L): no roll, no per-message allocation, and a batch is one fancy-indexed gather.

Time policy (docs/messages.md, "Time"):
- a reading goes in its slot of the grid (pipeline/timegrid.py): each entity's own, at the model's
  cadence (or the configured interval); at the model's phase when its first readings fall within a
  quarter interval of it, else at the phase they show, so a device that reports at :35 with ±10 min of
  jitter never straddles the half-interval boundary of a grid anchored at :00;
  with no cadence given, the cadence is learned per entity too;
- a second reading for a slot already filled is a `duplicate` (refused), or replaces the slot's
  values with `duplicates="replace"`; a reading for a slot before the latest is `late`;
- up to `max_fill_steps` missing slots are forward-filled with the last values; a longer gap resets
  the window (stale history would mislead the model);
- a reading that lacks a channel (NaN from the decode step) has it filled from the last value, at
  most `max_missing_fill` readings running; past that, or with nothing to fill from, `missing_channels`;
- none of these moves the entity's clock: a refused reading changes nothing;
- an entity silent for longer than a TTL is forgotten (`evict_idle`): its slot is reused.

One piece, though near 500 lines: `push` (one reading) and `push_many` (a batch, as columns) write
the same preallocated arrays and must leave them identical (tests/pipeline/test_windows_batch.py);
split across modules, the ring's invariants would have no single home.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.messages import BadReading, Reading, format_ts
from pipeline.state import EntityState
from pipeline.timegrid import Grid, infer_anchor, learned_interval, phase_near

LEARN_READINGS = 3  # readings at distinct times an entity shows before its own grid is inferred


@dataclass(frozen=True, slots=True)
class Pushed:
    ready: bool  # the window is full: this reading can be forecast
    filled: int = 0  # slots forward-filled before it
    reset: bool = False  # a long gap reset the window first
    replaced: bool = False  # it replaced the values of a slot already filled (duplicates="replace")
    channels_filled: int = 0  # channels it lacked, filled from the last values
    slot_ts: int = 0  # its slot's time on the grid (its own ts while the entity's grid is being learned)


class Pushes:
    """What `push_many` did with each reading of a batch, as columns (row i from reading i): no
    object per reading. `staged` lists the rows whose windows it staged, in row order;
    `inputs_filled` and `step_ms` are of each staged row."""

    __slots__ = (
        "ready",
        "slot_ts",
        "filled",
        "reset",
        "replaced",
        "channels_filled",
        "refused",
        "staged",
        "inputs_filled",
        "step_ms",
    )

    def __init__(self, n: int):
        self.ready = np.zeros(n, dtype=bool)
        self.slot_ts = np.zeros(n, dtype=np.int64)
        self.filled = np.zeros(n, dtype=np.int64)
        self.reset = np.zeros(n, dtype=bool)
        self.replaced = np.zeros(n, dtype=bool)
        self.channels_filled = np.zeros(n, dtype=np.int64)
        self.refused: dict[int, BadReading] = {}
        self.staged = np.zeros(0, dtype=np.int64)
        self.inputs_filled = np.zeros(0, dtype=np.int64)
        self.step_ms = np.zeros(0, dtype=np.int64)  # each staged row's grid interval (0: still learning)


class EntityWindows:
    def __init__(
        self,
        n_channels: int,
        lookback: int,
        *,
        max_fill_steps: int = 3,
        grid: Grid | None = None,
        interval_ms: int | None = None,
        duplicates: str = "refuse",
        max_missing_fill: int = 3,
        capacity: int = 64,
        tolerance: float = 0.5,
        anchor_ms: int | None = None,
    ):
        if duplicates not in ("refuse", "replace"):
            raise ValueError(f"duplicates must be refuse or replace, got {duplicates!r}")
        self.n, self.L = n_channels, lookback
        self.max_fill_steps, self.max_missing_fill = max_fill_steps, max_missing_fill
        self.grid = grid  # shared by every entity (the model's); None: each learns its own
        self.fixed_interval_ms = interval_ms  # every entity's cadence, at a phase of its own (None: learned)
        self.tolerance = tolerance  # of the grids the entities learn
        self.preferred_anchor = anchor_ms  # the model's phase: an entity within a quarter interval of it keeps it
        self.replace = duplicates == "replace"
        self.data = np.zeros((capacity, 2 * lookback, n_channels), dtype=np.float32)
        self.fills = np.zeros((capacity, 2 * lookback), dtype=np.int32)  # values filled, not measured, per slot
        self.missing_run = np.zeros((capacity, n_channels), dtype=np.int32)  # readings running without a channel
        self.running_short: set[int] = set()  # slots with a channel missing in their latest readings
        self.filled_now = np.zeros(capacity, dtype=np.int64)  # filled values within each current window
        self.pos = np.zeros(capacity, dtype=np.int64)  # next write position in [0, L)
        self.count = np.zeros(capacity, dtype=np.int64)  # slots held, up to L
        self.last_slot = np.zeros(capacity, dtype=np.int64)
        self.last_ts = np.zeros(capacity, dtype=np.int64)
        self.seen = np.zeros(capacity, dtype=np.float64)  # when the entity last spoke (the caller's clock)
        self.step = np.zeros(capacity, dtype=np.int64)  # own_grid[slot] as arrays (0: none), for push_many
        self.anchor = np.zeros(capacity, dtype=np.int64)
        self.slots: dict[str, int] = {}
        self.owner: list[str | None] = []  # the entity of each slot (None: free), so eviction builds no map
        self.free: list[int] = []  # slots of evicted entities, reused before the array grows
        self.own_grid: dict[int, Grid] = {}  # learned grids, by slot (no shared grid)
        self.learning: dict[int, list[int]] = {}  # times seen while an entity's grid is being learned
        self.refused_run: dict[int, set[int]] = {}  # times refused or reset, per entity with a learned grid
        self.taken_since: dict[int, int] = {}  # readings taken since its last refusal
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
                self.owner.append(None)
            self.slots[entity] = slot
            self.owner[slot] = entity
        return slot

    def _grow(self) -> None:
        names = ("data", "fills", "missing_run", "filled_now", "pos", "count", "last_slot", "last_ts", "seen", "step")
        for name in (*names, "anchor"):
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, np.zeros_like(arr)]))

    def _write(self, slot: int, values: np.ndarray, filled: int) -> None:
        p = self.pos[slot]
        self.data[slot, p] = self.data[slot, p + self.L] = values
        full = self.count[slot] == self.L
        if filled or self.fills[slot, p]:  # the filled count follows the window, no sum per forecast
            self.filled_now[slot] += filled - (self.fills[slot, p] if full else 0)
            self.fills[slot, p] = self.fills[slot, p + self.L] = filled
        self.pos[slot] = (p + 1) % self.L
        if not full:
            self.count[slot] += 1

    def grid_of(self, entity: str) -> Grid | None:
        """The grid the entity's readings are slotted on (None while it is still being learned)."""
        if self.grid is not None:
            return self.grid
        slot = self.slots.get(entity)
        return None if slot is None else self.own_grid.get(slot)

    def _place(self, slot: int | None, reading: Reading) -> tuple[int, Grid | None]:
        """The reading's slot index, without changing any state."""
        grid = self.grid if self.grid is not None else (self.own_grid.get(slot) if slot is not None else None)
        if grid is None:  # still learning: each new time is the next slot
            if slot is None or self.count[slot] == 0:
                return 0, None
            last = int(self.last_ts[slot])
            step = 0 if reading.ts_ms == last else (-1 if reading.ts_ms < last else 1)
            return int(self.last_slot[slot]) + step, None
        if grid.tolerance < 0.5 and grid.off_grid(reading.ts_ms):  # never at the default, half an interval
            raise BadReading(
                "off_grid",
                f"{reading.entity} ts {format_ts(reading.ts_ms)} is further than {grid.tolerance:g} of an interval "
                f"({grid.interval_ms} ms) from the grid",
            )
        return grid.slot(reading.ts_ms), grid

    def push(self, reading: Reading, seen_s: float = 0.0) -> Pushed:
        """Put a reading in its slot; raise BadReading (and change nothing) for one that cannot be.
        The policies in the order a reading meets them: its slot's order (late, duplicate), its
        channels, then replace or advance (fill a short gap, reset after a long one)."""
        slot = self.slots.get(reading.entity)
        at, grid = self._place(slot, reading)
        held = slot is not None and self.count[slot] > 0
        if held:
            at, grid, held = self._check_order(slot, at, grid, reading)
        lacking = np.isnan(reading.values) if reading.lacking else None
        values = self._complete(slot, held, reading, lacking)
        slot = self._slot(reading.entity) if slot is None else slot
        self.seen[slot] = seen_s
        self._count_missing(slot, lacking)
        filled, reset, replaced = 0, False, False
        if held and at == int(self.last_slot[slot]):  # duplicates="replace": the slot's values change
            self._replace(slot, values, reading.lacking)
            replaced = True
        else:
            at, grid, filled, reset = self._advance(slot, held, at, grid, reading.ts_ms)
            self._write(slot, values, reading.lacking)
        self.last_slot[slot], self.last_ts[slot] = at, reading.ts_ms
        if grid is None or slot in self.learning:
            grid = self._learn(slot, reading.ts_ms) or grid
        slot_ts = grid.ts_of(int(self.last_slot[slot])) if grid is not None else reading.ts_ms
        return Pushed(bool(self.count[slot] >= self.L), filled, reset, replaced, reading.lacking, slot_ts)

    def _check_order(self, slot: int, at: int, grid: Grid | None, reading: Reading) -> tuple[int, Grid | None, bool]:
        """A reading for a slot before the latest is `late`, a second for the latest a `duplicate`
        (unless replaced); a learned grid that keeps refusing is learned again. Returns (slot index,
        grid, held)."""
        last = int(self.last_slot[slot])
        refusal = None
        if at < last:
            refusal = BadReading(
                "late", f"{reading.entity} ts {format_ts(reading.ts_ms)} is for a slot before its latest"
            )
        elif at == last and not self.replace:
            refusal = BadReading(
                "duplicate",
                f"{reading.entity} already has a reading for the slot of {format_ts(reading.ts_ms)}"
                f" (its last at {format_ts(int(self.last_ts[slot]))})",
            )
        if refusal is not None:
            if not self._relearn(slot, reading.ts_ms):
                raise refusal
            return 0, None, False  # a grid it learned itself no longer fits: learn it again
        if slot in self.refused_run and at - last - 1 <= self.max_fill_steps:
            self.taken_since[slot] = self.taken_since.get(slot, 0) + 1
            if self.taken_since[slot] >= self.L:  # a whole window taken since the last refusal: it fits
                del self.refused_run[slot], self.taken_since[slot]
        return at, grid, True

    def _complete(self, slot: int | None, held: bool, reading: Reading, lacking: np.ndarray | None) -> np.ndarray:
        """The reading's values, a lacking channel filled from the last values (at most
        `max_missing_fill` readings running); else `missing_channels`."""
        if lacking is None:
            return reading.values
        if not held:
            raise BadReading("missing_channels", f"{reading.entity} lacks channels and has no value to fill from")
        if int((self.missing_run[slot] + lacking).max()) > self.max_missing_fill:
            raise BadReading(
                "missing_channels",
                f"{reading.entity} has lacked a channel for more than {self.max_missing_fill} readings running",
            )
        return np.where(lacking, self.data[slot, (self.pos[slot] - 1) % self.L], reading.values)

    def _count_missing(self, slot: int, lacking: np.ndarray | None) -> None:
        if lacking is not None:
            self.missing_run[slot] = np.where(lacking, self.missing_run[slot] + 1, 0)
            self.running_short.add(slot)
        elif slot in self.running_short:
            self.missing_run[slot] = 0
            self.running_short.discard(slot)

    def _replace(self, slot: int, values: np.ndarray, n_lacking: int) -> None:
        p = (self.pos[slot] - 1) % self.L
        self.data[slot, p] = self.data[slot, p + self.L] = values
        self.filled_now[slot] += n_lacking - self.fills[slot, p]
        self.fills[slot, p] = self.fills[slot, p + self.L] = n_lacking

    def _advance(
        self, slot: int, held: bool, at: int, grid: Grid | None, ts_ms: int
    ) -> tuple[int, Grid | None, int, bool]:
        """Make way for a later slot: forward-fill up to `max_fill_steps` missing slots, reset the
        window after a longer gap. Returns (slot index, grid, slots filled, reset)."""
        if not held:
            return at, grid, 0, False
        missing = at - int(self.last_slot[slot]) - 1
        if missing > self.max_fill_steps:
            if self._relearn(slot, ts_ms):  # a learned cadence that resets again and again
                at, grid = 0, None
            self.count[slot] = self.pos[slot] = self.filled_now[slot] = 0
            return at, grid, 0, True
        if missing > 0:
            last_values = self.data[slot, (self.pos[slot] - 1) % self.L].copy()
            for _ in range(missing):
                self._write(slot, last_values, self.n)
        return at, grid, max(missing, 0), False

    def push_many(
        self,
        entities: list[str | None],
        ts_ms: np.ndarray,
        values: np.ndarray,
        lacking: np.ndarray,
        seen_s: float,
        stage: np.ndarray,
        emit: np.ndarray | None = None,
    ) -> Pushes:
        """`push` for a batch, with the outcome of pushing its rows one at a time in order (row i:
        `entities[i]` at `ts_ms[i]` with `values[i]`; an entity of None skips the row).

        The batch goes in rounds: each entity's first row, then each one's second, and so on, so a
        round holds an entity at most once. In a round, every row on the steady path (a known
        entity's reading for the slot after its latest, with every channel) is written at once with
        numpy; any other row goes through `push`. The window of each ready row (of those in `emit`,
        default all) is staged in `stage`, in row order."""
        n = len(entities)
        out = Pushes(n)
        nth = np.full(n, -1, dtype=np.int64)  # the row's place among its entity's rows in the batch
        counts: dict[str, int] = {}
        for i, entity in enumerate(entities):
            if entity is not None:
                nth[i] = k = counts.get(entity, 0)
                counts[entity] = k + 1
        pieces: list[tuple[np.ndarray, ...]] = []  # (rows, windows, inputs filled, grid interval)
        for k in range(max(counts.values(), default=0)):
            self._push_round(np.flatnonzero(nth == k), entities, ts_ms, values, lacking, seen_s, emit, out, pieces)
        return self._staged(out, pieces, stage)

    @staticmethod
    def _staged(out: Pushes, pieces: list, stage: np.ndarray) -> Pushes:
        """Scatter the staged windows into `stage` in row order."""
        if pieces:
            rows = np.concatenate([p[0] for p in pieces])
            order = np.argsort(rows)
            out.staged = rows[order]
            place = np.empty(len(rows), dtype=np.int64)
            place[order] = np.arange(len(rows))
            out.inputs_filled = np.concatenate([p[2] for p in pieces])[order]
            out.step_ms = np.concatenate([p[3] for p in pieces])[order]
            start = 0
            for piece_rows, windows, *_ in pieces:
                stage[place[start : start + len(piece_rows)]] = windows
                start += len(piece_rows)
        return out

    def _push_round(self, idx, entities, ts_ms, values, lacking, seen_s, emit, out: Pushes, pieces: list) -> None:
        """One round of `push_many`: rows `idx`, each of another entity."""
        L = self.L
        get = self.slots.get
        slots = np.fromiter((get(entities[i], -1) for i in idx.tolist()), dtype=np.int64, count=len(idx))
        s = np.maximum(slots, 0)
        ts = ts_ms[idx]
        fast = (slots >= 0) & (lacking[idx] == 0) & (self.count[s] > 0)
        grid = self.grid
        if grid is not None:
            interval, anchor = grid.interval_ms, grid.anchor_ms
            fast &= grid.tolerance >= 0.5  # a tighter tolerance checks each reading (off_grid)
        else:
            interval, anchor = self.step[s], self.anchor[s]
            fast &= interval > 0
        at = (ts - anchor + interval // 2) // np.maximum(interval, 1)
        fast &= at - self.last_slot[s] == 1
        if self.running_short or self.refused_run or self.learning:  # a channel short, a grid on trial or learning
            fast &= ~np.isin(s, [*self.running_short, *self.refused_run, *self.learning])
        f = np.flatnonzero(fast)
        if f.size:
            rows, fs = idx[f], s[f]
            p = self.pos[fs]
            full = self.count[fs] == L
            self.data[fs, p] = self.data[fs, p + L] = values[rows]
            stale = self.fills[fs, p]
            if stale.any():  # a filled value leaves the window (or a reset left it behind)
                self.filled_now[fs] -= np.where(full, stale, 0)
                self.fills[fs, p] = self.fills[fs, p + L] = 0
            self.pos[fs] = (p + 1) % L
            self.count[fs] += ~full
            self.last_slot[fs], self.last_ts[fs], self.seen[fs] = at[f], ts[f], seen_s
            ready = self.count[fs] >= L
            out.ready[rows] = ready
            out.slot_ts[rows] = (anchor + at * interval)[f]
            staged = ready if emit is None else ready & emit[rows]
            if staged.any():
                fs = fs[staged]
                windows = self.data[fs[:, None], self.pos[fs][:, None] + self._arange]
                step = np.full(len(fs), interval) if grid is not None else self.step[fs]
                pieces.append((rows[staged], windows, self.filled_now[fs].copy(), step))
        self._push_each(idx[~fast].tolist(), entities, ts_ms, values, lacking, seen_s, emit, out, pieces)

    def _push_each(self, rows, entities, ts_ms, values, lacking, seen_s, emit, out: Pushes, pieces: list) -> None:
        """`push` row by row, staging the window of each ready row in `emit`."""
        for i in rows:
            entity = entities[i]
            try:
                pushed = self.push(Reading(entity, int(ts_ms[i]), values[i], int(lacking[i])), seen_s)
            except BadReading as bad:
                out.refused[i] = bad
                continue
            out.ready[i], out.slot_ts[i], out.filled[i] = pushed.ready, pushed.slot_ts, pushed.filled
            out.reset[i], out.replaced[i] = pushed.reset, pushed.replaced
            out.channels_filled[i] = pushed.channels_filled
            if pushed.ready and (emit is None or emit[i]):
                slot, grid = self.slots[entity], self.grid_of(entity)
                step = np.array([grid.interval_ms if grid is not None else 0])
                pieces.append((np.array([i]), self.window(entity)[None].copy(), self.filled_now[[slot]], step))

    def _learn(self, slot: int, ts_ms: int) -> Grid | None:
        """Collect an entity's first readings; once there are enough, infer its grid (its median step,
        or the interval given, and their phase: a circular mean, so one jittered first reading does
        not set it) and go on in slots."""
        seen = self.learning.setdefault(slot, [])
        if not seen or ts_ms != seen[-1]:
            seen.append(ts_ms)
        if self.fixed_interval_ms:  # in slots at once, its phase refined over its first few readings
            grid = Grid(
                self.fixed_interval_ms, phase_near(seen, self.fixed_interval_ms, self.preferred_anchor), self.tolerance
            )
            if len(seen) >= LEARN_READINGS:
                del self.learning[slot]
        else:
            interval = learned_interval(seen) if len(seen) >= LEARN_READINGS else None
            if not interval:
                return None
            grid = Grid(interval, infer_anchor([seen], interval), self.tolerance)
            del self.learning[slot]
        self._own_grid(slot, grid)
        self.last_slot[slot] = grid.slot(ts_ms)
        return grid

    def _relearn(self, slot: int, ts_ms: int) -> bool:
        """A grid an entity's first readings taught can be wrong: a cadence that later speeds up or
        slows down, re-sends among the first readings, a phase that drifted (an interval given, by the
        model or the settings, is kept: only the phase is learned again). After
        more than max_fill_steps + 1 refusals or resets at distinct times, with never a whole window
        taken in between, it is dropped, the
        window reset and the grid learned again from this reading on, so no entity stays dark (the
        model's grid is never dropped)."""
        if self.grid is not None or slot not in self.own_grid:
            return False
        times = self.refused_run.setdefault(slot, set())
        times.add(ts_ms)
        self.taken_since[slot] = 0
        if len(times) <= self.max_fill_steps + 1:
            return False
        del self.refused_run[slot], self.taken_since[slot]
        self._own_grid(slot, None)
        self.count[slot] = self.pos[slot] = self.filled_now[slot] = 0
        self.learning[slot] = []
        return True

    def evict_idle(self, now_s: float, ttl_s: float) -> list[str]:
        """Forget the entities silent for longer than `ttl_s` (their slots are reused): memory follows
        the entities alive now, not every entity ever seen. Returns the evicted."""
        if not self.slots:
            return []
        live = len(self.slots) + len(self.free)
        idle = np.flatnonzero(self.seen[:live] < now_s - ttl_s)
        if not idle.size:
            return []
        gone = [self.owner[s] for s in idle.tolist() if self.owner[s] is not None]
        for entity in gone:
            slot = self.slots.pop(entity)
            self.owner[slot] = None
            self.count[slot] = self.pos[slot] = self.last_ts[slot] = self.last_slot[slot] = 0
            self.missing_run[slot] = self.filled_now[slot] = 0
            self.running_short.discard(slot)
            self._own_grid(slot, None)
            self.learning.pop(slot, None)
            self.refused_run.pop(slot, None)
            self.taken_since.pop(slot, None)
            self.seen[slot] = np.inf  # free: never idle again until reused
            self.free.append(slot)
        return gone

    def _own_grid(self, slot: int, grid: Grid | None) -> None:
        """Set (or drop) the grid an entity learned, in the dict and in the arrays push_many reads."""
        if grid is None:
            self.own_grid.pop(slot, None)
            self.step[slot] = self.anchor[slot] = 0
        else:
            self.own_grid[slot] = grid
            self.step[slot], self.anchor[slot] = grid.interval_ms, grid.anchor_ms

    def export(self, entity: str, position: int = 0) -> EntityState:
        """The entity's state, its window oldest first, for the changelog (pipeline/state.py);
        `position` is the input position it covers."""
        slot, L = self.slots[entity], self.L
        p = int(self.pos[slot])
        refused = self.refused_run.get(slot)
        return EntityState(
            lookback=L,
            channels=self.n,
            values=self.data[slot, p : p + L].copy(),
            count=int(self.count[slot]),
            last_slot=int(self.last_slot[slot]),
            last_ts=int(self.last_ts[slot]),
            position=position,
            fills=self.fills[slot, p : p + L].copy(),
            missing_run=self.missing_run[slot].copy(),
            filled_now=int(self.filled_now[slot]),
            step=int(self.step[slot]) if self.grid is None else 0,
            anchor=int(self.anchor[slot]) if self.grid is None else 0,
            learning=list(self.learning[slot]) if slot in self.learning else None,
            refused=sorted(refused) if refused is not None else None,
            taken_since=self.taken_since.get(slot, 0),
        )

    def load(self, entity: str, state: EntityState, seen_s: float = 0.0) -> None:
        """Put an exported state back as the entity's (its window written from position 0 of the
        ring): pushing the same readings afterwards does what it would have done on the original."""
        if (state.lookback, state.channels) != (self.L, self.n):
            raise ValueError(f"a window of L={state.lookback}, C={state.channels} does not fit L={self.L}, C={self.n}")
        slot, L = self._slot(entity), self.L
        self.data[slot, :L] = self.data[slot, L:] = state.values
        self.fills[slot, :L] = self.fills[slot, L:] = state.fills
        self.pos[slot], self.count[slot] = 0, state.count
        self.last_slot[slot], self.last_ts[slot], self.seen[slot] = state.last_slot, state.last_ts, seen_s
        self.missing_run[slot] = state.missing_run
        if state.missing_run.any():
            self.running_short.add(slot)
        else:
            self.running_short.discard(slot)
        self.filled_now[slot] = state.filled_now
        learned = Grid(state.step, state.anchor, self.tolerance) if state.step and self.grid is None else None
        self._own_grid(slot, learned)
        self.learning.pop(slot, None)
        if state.learning is not None:
            self.learning[slot] = list(state.learning)
        self.refused_run.pop(slot, None)
        self.taken_since.pop(slot, None)
        if state.refused is not None:
            self.refused_run[slot], self.taken_since[slot] = set(state.refused), state.taken_since

    def window(self, entity: str) -> np.ndarray:
        """The latest L slots, oldest first, as a view: copy it before the next push."""
        slot = self.slots[entity]
        p = self.pos[slot]
        return self.data[slot, p : p + self.L]

    def filled_inputs(self, entity: str) -> int:
        """How many values of the entity's window were filled rather than measured."""
        return int(self.filled_now[self.slots[entity]])

    def gather(self, entities: list[str]) -> np.ndarray:
        """(B, L, N) windows for several entities in one fancy-indexed copy."""
        slots = np.fromiter((self.slots[e] for e in entities), dtype=np.int64, count=len(entities))
        idx = self.pos[slots][:, None] + self._arange
        return self.data[slots[:, None], idx]
