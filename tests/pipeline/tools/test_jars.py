"""The Kafka jars by the lock, with Python alone: a digest that differs is refused and nothing installed."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from pipeline.settings import REPO_ROOT
from pipeline.tools.jars import LOCK, JarMismatch, fetch, jar_url, read_lock


def repo_with(tmp_path: Path, content: bytes) -> tuple[str, Path]:
    """A Maven-layout repository on disk holding one jar, and a lock naming it with `content`'s digest."""
    repo = tmp_path / "repo"
    jar = Path(jar_url(str(repo), "org.example", "thing", "1.0").removeprefix(str(repo)).lstrip("/"))
    (repo / jar).parent.mkdir(parents=True)
    (repo / jar).write_bytes(b"the real jar")
    lock = tmp_path / "jars.lock"
    lock.write_text(f"# a comment\norg.example thing 1.0 {hashlib.sha256(content).hexdigest()}\n")
    return repo.as_uri(), lock


def test_a_jar_is_fetched_once_and_checked_against_the_lock(tmp_path: Path) -> None:
    repo, lock = repo_with(tmp_path, b"the real jar")
    dest = tmp_path / "jars"
    assert fetch(lock, dest, repo, log=lambda _m: None) == 1
    assert (dest / "thing-1.0.jar").read_bytes() == b"the real jar"
    assert fetch(lock, dest, repo, log=lambda _m: None) == 0  # in place with the right digest: not again


def test_a_jar_whose_digest_differs_is_refused_and_not_installed(tmp_path: Path) -> None:
    repo, lock = repo_with(tmp_path, b"what the lock was made from")
    dest = tmp_path / "jars"
    with pytest.raises(JarMismatch, match=r"thing-1\.0\.jar from .* has SHA-256 [0-9a-f]{64}, the lock says"):
        fetch(lock, dest, repo, log=lambda _m: None)
    assert list(dest.iterdir()) == []  # neither the jar nor a partial download


def test_the_lock_names_the_poms_broker_and_logging_with_a_digest_each() -> None:
    pom = (REPO_ROOT / "infra" / "kafka" / "pom.xml").read_text()
    kafka = re.search(r"<kafka.version>(.+)</kafka.version>", pom)[1]
    log4j = re.search(r"<log4j.version>(.+)</log4j.version>", pom)[1]
    rows = {(g, a): (v, d) for g, a, v, d in read_lock(LOCK)}
    assert rows[("org.apache.kafka", "kafka_2.13")][0] == kafka
    assert rows[("org.apache.logging.log4j", "log4j-slf4j-impl")][0] == log4j
    assert len(rows) >= 40 and all(re.fullmatch(r"[0-9a-f]{64}", d) for _, d in rows.values())
