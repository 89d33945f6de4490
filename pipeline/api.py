"""The latest forecast per entity over HTTP (`sensorcast api`): a process of its own, with its own
group-less reader of the forecasts topic, so the serving loop never pays for a query.

    GET /forecasts/{entity}            the entity's latest forecast (404 if none has been seen)
    GET /forecasts?entity=a&entity=b   several at once ({"forecasts": {...}, "missing": [...]})
    GET /forecasts                     the entities it holds
    GET /healthz                       200 once the history is loaded and the topic followed

On start it reads the forecasts written in the last `history_s` seconds (so it answers at once),
then follows the topic. The standard library's threading HTTP server: nothing more to install.
"""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import orjson

from pipeline.kafka import TopicFollower
from pipeline.messages import BadReading, parse_ts
from pipeline.settings import Settings


class LatestForecasts:
    """entity → its latest forecast document (by the reading's timestamp, not by arrival: a replay
    or a second instance's late duplicate never replaces a newer forecast). Thread-safe."""

    def __init__(self) -> None:
        self._docs: dict[str, tuple[int, dict]] = {}
        self._lock = threading.Lock()
        self.received = 0

    def add(self, value: bytes | None) -> None:
        try:
            doc = orjson.loads(value or b"")
            entity, ts = doc["entity"], parse_ts(doc["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError, BadReading):
            return
        if not isinstance(entity, str):
            return
        with self._lock:
            self.received += 1
            held = self._docs.get(entity)
            if held is None or ts >= held[0]:
                self._docs[entity] = (ts, doc)

    def get(self, entity: str) -> dict | None:
        with self._lock:
            held = self._docs.get(entity)
        return held[1] if held else None

    def entities(self) -> list[str]:
        with self._lock:
            return sorted(self._docs)


def handler_for(latest: LatestForecasts, ready: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sensorcast-api"

        def _send(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
            if parts == ["healthz"]:
                ok = ready.is_set()
                body = {"status": "ok" if ok else "loading", "entities": len(latest.entities())}
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
            elif parts == ["forecasts"]:
                wanted = parse_qs(url.query).get("entity")
                if not wanted:
                    self._send(HTTPStatus.OK, {"entities": latest.entities()})
                    return
                found = {e: doc for e in wanted if (doc := latest.get(e)) is not None}
                self._send(HTTPStatus.OK, {"forecasts": found, "missing": [e for e in wanted if e not in found]})
            elif len(parts) == 2 and parts[0] == "forecasts":
                doc = latest.get(parts[1])
                if doc is None:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no forecast for entity {parts[1]!r}"})
                else:
                    self._send(HTTPStatus.OK, doc)
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {url.path}"})

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (quiet: one line per query is noise)
            pass

    return Handler


class ForecastApi:
    """The reader and the HTTP server together; `start()` returns once the port is bound."""

    def __init__(self, settings: Settings, port: int = 8000, host: str | None = None, history_s: float = 86_400):
        self.latest = LatestForecasts()
        self.ready = threading.Event()
        since_ms = int((time.time() - history_s) * 1000)
        self.follower = TopicFollower(settings, settings.forecasts_topic, self.latest.add, since_ms=since_ms)
        self.server = ThreadingHTTPServer((host or settings.host, port), handler_for(self.latest, self.ready))
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="api-http", daemon=True)

    def start(self) -> ForecastApi:
        self.follower.start()
        self._thread.start()
        threading.Thread(target=self._mark_ready, daemon=True).start()
        return self

    def _mark_ready(self) -> None:
        if self.follower.ready.wait(60):
            self.ready.set()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.follower.close()
