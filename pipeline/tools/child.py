"""`sensorcast serve` as a child process, as the demo, the latency benchmark and the end-to-end tests
run it: configured by environment variables, its output in a log file, ready once it logs that it is
consuming, stopped with SIGTERM (then SIGKILL after a grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServeProcess:
    """One `sensorcast serve` child. A context manager: leaving the block stops it."""

    def __init__(self, model_uri: str, env: dict[str, str], log_path: Path, *args: str):
        self.cmd = [sys.executable, "-m", "pipeline.tools.cli", "serve", "--model", model_uri, "-v", *args]
        self.env = {**os.environ, **env}
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 120) -> ServeProcess:
        """Return once the service consumes; raise with the log's tail if it exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while "consuming" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited with {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else f"not ready in {timeout_s} s"
                )
                raise RuntimeError(f"the service {state}; see {self.log_path}:\n{self.output()[-2000:]}")
            time.sleep(0.1)
        return self

    def stop(self, grace_s: float = 60) -> int:
        """SIGTERM (the service lands its batch in flight and commits), SIGKILL if it overstays."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
