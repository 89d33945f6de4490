"""Forecasts on the wire: one encoded (`encode_forecast`), or a batch from one template
(`ForecastEncoder`)."""

from __future__ import annotations

import numpy as np
import orjson

from pipeline.messages.readings import format_ts


def encode_forecast(
    entity: str,
    ts_ms: int,
    channels: list[str],
    forecast_nh: np.ndarray,
    model_name: str,
    model_version: str,
    produced_at: str,
    step_ms: int | None = None,
    filled: int = 0,
    intervals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> bytes:
    """`forecast_nh` is (N, H) and C-contiguous: each row goes out as one channel's list.
    `produced_at` comes formatted (`format_ts`): a batch formats it once for all its forecasts.
    `ts` is the reading's slot on the grid; step k of the forecast is for ts + k·`step_ms`;
    `filled` counts the values in the model's input window that were filled, not measured.
    `intervals` maps a level ("0.8") to its (lower, upper), each (N, H) like the forecast; a model
    without intervals sends none (and the message has no "intervals" key)."""
    doc = {
        "entity": entity,
        "ts": format_ts(ts_ms),
        "step_ms": step_ms,
        "filled": filled,
        "horizon": int(forecast_nh.shape[1]),
        "channels": channels,
        "forecast": {c: forecast_nh[i] for i, c in enumerate(channels)},
    }
    if intervals:
        doc["intervals"] = {
            level: {
                "lower": {c: lower[i] for i, c in enumerate(channels)},
                "upper": {c: upper[i] for i, c in enumerate(channels)},
            }
            for level, (lower, upper) in intervals.items()
        }
    doc |= {"model": {"name": model_name, "version": str(model_version)}, "produced_at": produced_at}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


class ForecastEncoder:
    """`encode_forecast` for a batch, byte for byte, with little Python per forecast: the numbers of
    the whole batch are written in one orjson call, and each forecast is one %-format of a template
    that holds what the batch's forecasts share (channels, horizon, model, produced_at).

    >>> enc = ForecastEncoder(["temp"])
    >>> enc.encode(["a"], [0], np.ones((1, 1, 2), np.float32), "m", "1", "2026-01-01T00:00:00Z", [None], [0])
    [b'{"entity":"a","ts":"1970-01-01T00:00:00Z","step_ms":null,"filled":0,"horizon":2,"channels":["temp"],\
"forecast":{"temp":[1.0,1.0]},"model":{"name":"m","version":"1"},"produced_at":"2026-01-01T00:00:00Z"}']
    """

    CACHE = 4096  # entities and times remembered between batches (their JSON, their ISO form)

    def __init__(self, channels: list[str]):
        self.channels = list(channels)
        self._entity: dict[str, bytes] = {}
        self._ts: dict[int, bytes] = {}
        self._templates: dict[tuple, bytes] = {}  # by model and horizon: what a batch's forecasts share

    def _template(self, model_name: str, model_version: str, horizon: int, levels: tuple[str, ...] = ()) -> bytes:
        """One forecast as a %-template: entity, ts, step, filled, each channel's row (the forecast's,
        then each level's lower and upper rows), produced_at."""
        shared = lambda x: orjson.dumps(x).replace(b"%", b"%%")  # noqa: E731 (a literal % in a name)
        rows = b"".join(shared(c) + b":[%b" for c in self.channels)  # each %b brings its "],"
        intervals = b""
        if levels:
            each = [shared(level) + b':{"lower":{' + rows + b'},"upper":{' + rows + b"}}" for level in levels]
            intervals = b',"intervals":{' + b",".join(each) + b"}"
        return (
            b'{"entity":%b,"ts":"%b","step_ms":%b,"filled":%d,"horizon":'
            + str(horizon).encode()
            + b',"channels":'
            + shared(self.channels)
            + b',"forecast":{'
            + rows
            + b"}"
            + intervals
            + b',"model":'
            + shared({"name": model_name, "version": model_version})
            + b',"produced_at":%b}'
        )

    def encode(
        self,
        entities: list[str],
        ts_ms: list[int],
        forecasts_bnh: np.ndarray,
        model_name: str,
        model_version: str,
        produced_at: str,
        steps_ms: list[int | None],
        filled: list[int],
        bounds: np.ndarray | None = None,
        levels: tuple[str, ...] = (),
    ) -> list[bytes]:
        """Forecast i: `entities[i]` at its slot `ts_ms[i]`, `forecasts_bnh[i]` (N, H) row per channel;
        `bounds[i]` (2·levels, N, H): each level's lower, then upper (None: no intervals)."""
        b, n, h = forecasts_bnh.shape
        if not b:
            return []
        dumps = orjson.dumps
        blocks = forecasts_bnh[:, None] if bounds is None else np.concatenate([forecasts_bnh[:, None], bounds], axis=1)
        k = blocks.shape[1]  # (forecast, lower, upper, ...) per forecast, each N rows
        numbers = dumps(np.ascontiguousarray(blocks).reshape(b * k * n, h), option=orjson.OPT_SERIALIZE_NUMPY)
        rows = numbers.split(b"[")[2:]  # no number holds a bracket: the B·K·N rows, each with its "]," or "]]"
        levels = tuple(levels) if bounds is not None else ()
        key = (model_name, str(model_version), h, levels)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > 16:
                self._templates.clear()
            template = self._templates[key] = self._template(model_name, str(model_version), h, levels)
        produced = dumps(produced_at)
        names, times = self._entity, self._ts
        if len(names) > self.CACHE:
            names.clear()
        if len(times) > self.CACHE:
            times.clear()
        out = []
        for i, entity in enumerate(entities):
            name = names.get(entity)
            if name is None:
                name = names[entity] = dumps(entity)
            ts = ts_ms[i]
            when = times.get(ts)
            if when is None:
                when = times[ts] = format_ts(ts).encode()
            step = b"null" if steps_ms[i] is None else b"%d" % steps_ms[i]
            if k == 1:
                last = rows[i * n + n - 1][:-1]  # the forecast's last row: its "]" without the "," (or "]") after
                out.append(template % (name, when, step, filled[i], *rows[i * n : i * n + n - 1], last, produced))
                continue
            own = rows[i * k * n : (i + 1) * k * n]
            for j in range(n - 1, k * n, n):  # each block's last row closes its object: no "," after its "]"
                own[j] = own[j][:-1]
            out.append(template % (name, when, step, filled[i], *own, produced))
        return out
