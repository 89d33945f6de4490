"""Fetch the Kafka broker's jars from Maven Central, checked against infra/kafka/jars.lock, with the
Python standard library alone: a fresh machine needs no Maven for `make test` or `make demo`, and an
installed package fetches them the same way on first use (the wheel carries the lock).

    python -m pipeline.tools.jars            # download what is missing into infra/kafka/jars/
    python -m pipeline.tools.jars --lock     # write jars.lock again from infra/kafka/pom.xml (needs mvn)

Each jar's SHA-256 must match the lock's, or nothing is installed for it and the step fails with the
jar's name and both digests. `SENSORCAST_MAVEN_REPO` names a mirror (default: Maven Central).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra" / "kafka"  # in a checkout
LOCK = INFRA / "jars.lock" if (INFRA / "jars.lock").is_file() else Path(__file__).with_name("kafka-jars.lock")
JARS = INFRA / "jars"
CENTRAL = "https://repo.maven.apache.org/maven2"


class JarMismatch(RuntimeError):
    """A downloaded jar is not the one the lock names."""


def read_lock(path: Path = LOCK) -> list[tuple[str, str, str, str]]:
    """(group, artifact, version, sha256) of every runtime jar, as the lock lists them."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            group, artifact, version, digest = line.split()
            rows.append((group, artifact, version, digest))
    return rows


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def jar_url(repo: str, group: str, artifact: str, version: str) -> str:
    return f"{repo.rstrip('/')}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"


def fetch(lock: Path = LOCK, dest: Path = JARS, repo: str | None = None, log=print) -> int:
    """Download every jar of the lock that `dest` lacks (or holds with another digest), verify it, and
    move it in place. Returns how many were downloaded; raises JarMismatch on a wrong digest."""
    repo = repo or os.environ.get("SENSORCAST_MAVEN_REPO") or CENTRAL
    dest.mkdir(parents=True, exist_ok=True)
    rows = read_lock(lock)
    fetched = 0
    for i, (group, artifact, version, digest) in enumerate(rows, 1):
        target = dest / f"{artifact}-{version}.jar"
        if target.exists() and sha256(target) == digest:
            continue
        url = jar_url(repo, group, artifact, version)
        log(f"[{i}/{len(rows)}] {group}:{artifact}:{version}")
        with tempfile.NamedTemporaryFile(dir=dest, suffix=".part", delete=False) as tmp:
            part = Path(tmp.name)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        tmp.write(block)
            except Exception:
                part.unlink(missing_ok=True)
                raise
        got = sha256(part)
        if got != digest:
            part.unlink(missing_ok=True)
            raise JarMismatch(
                f"{artifact}-{version}.jar from {url} has SHA-256 {got}, the lock says {digest}: not installed "
                "(a tampered mirror or a changed artifact; regenerate the lock only if you trust the change)"
            )
        part.replace(target)
        fetched += 1
    return fetched


def write_lock(pom: Path = INFRA / "pom.xml", lock: Path = LOCK) -> None:
    """Resolve the pom's runtime jars with Maven and write their coordinates and digests."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "deps.txt"
        subprocess.run(
            ["mvn", "-q", "-f", str(pom), "dependency:list", "-DincludeScope=runtime",
             f"-DoutputFile={listing}", "-DoutputAbsoluteArtifactFilename=true"],
            check=True,
        )  # fmt: skip
        rows = []
        for line in listing.read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 6 and parts[2] == "jar":
                group, artifact, _, version, _, path = parts
                rows.append(f"{group} {artifact} {version} {sha256(Path(path))}")
    header = [
        "# The Kafka broker's runtime jars: group artifact version sha256, one per line.",
        "# Generated from infra/kafka/pom.xml by `python -m pipeline.tools.jars --lock` (needs Maven);",
        "# `make kafka-jars` fetches them from Maven Central and refuses any whose digest differs.",
    ]
    lock.write_text("\n".join(header + sorted(rows)) + "\n")


def main(argv: list[str]) -> int:
    if "--lock" in argv:
        write_lock()
        print(f"wrote {LOCK}")
        return 0
    dest = Path(argv[argv.index("--dest") + 1]) if "--dest" in argv else JARS
    try:
        n = fetch(dest=dest)
    except (JarMismatch, OSError) as e:
        print(f"error: could not fetch the Kafka jars: {e}", file=sys.stderr)
        return 1
    print(f"Kafka jars: {n} downloaded, {len(read_lock()) - n} already in place ({dest})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
