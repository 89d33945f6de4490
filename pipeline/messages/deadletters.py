"""Dead letters: a refused message, its reason and a bounded copy of its payload."""

from __future__ import annotations

import base64
import hashlib

import orjson

from pipeline.messages.readings import BadReading

DEAD_LETTER_PAYLOAD_BYTES = 16 * 1024


def encode_dead_letter(
    error: BadReading | str,
    topic: str,
    partition: int,
    offset: int,
    payload: bytes | None,
    max_payload: int = DEAD_LETTER_PAYLOAD_BYTES,
) -> bytes:
    """A refusal with its reason and at most `max_payload` bytes of the payload, with the payload's
    full size and SHA-256 to find the original by. Bounded: base64 grows a prefix by 4/3, JSON escapes a
    control character to 6 bytes, so a dead letter is under 6 × max_payload + 2 KiB whatever arrived."""
    raw = payload or b""
    prefix = raw[:max_payload]
    try:
        text, encoding = prefix.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        if len(prefix) < len(raw) and e.start >= len(prefix) - 3:  # the cut split a character: drop its bytes
            prefix = prefix[: e.start]
            try:
                text, encoding = prefix.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
        else:
            text, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
    reason = error.reason if isinstance(error, BadReading) else "error"
    message = str(error).encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogates
    return orjson.dumps(
        {
            "error": message if len(message) <= 1024 else message[:1024] + "…",
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "payload": text,
            "payload_encoding": encoding,
            "payload_bytes": len(raw),
            "payload_sha256": hashlib.sha256(raw).hexdigest(),
            "truncated": len(prefix) < len(raw),
        }
    )
