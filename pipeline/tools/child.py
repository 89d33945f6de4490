"""`sensorcast` commands as child processes, as the demo, the benchmarks and the end-to-end tests run
them: configured by environment variables, output in a log file, ready once they log a known line,
stopped with SIGTERM (then SIGKILL after a grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class CliProcess:
    """One `sensorcast ARGS...` child. A context manager: leaving the block stops it."""

    ready_marker = ""  # a line the command logs once it is ready (see wait_ready)

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.cmd = [sys.executable, "-m", "pipeline.tools.cli", *args]
        self.env = {**os.environ, **env}
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 120):
        """Return once the ready line is logged; raise with the log's tail if it exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while self.ready_marker not in self.output():
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

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class ServeProcess(CliProcess):
    """`sensorcast serve --model URI -v`, ready once it consumes."""

    ready_marker = "consuming"

    def __init__(self, model_uri: str, env: dict[str, str], log_path: Path, *args: str):
        super().__init__(["serve", "--model", model_uri, "-v", *args], env, log_path)


class RelayProcess(CliProcess):
    """`sensorcast bench relay`: the service's loop with no model, ready once it consumes."""

    ready_marker = "consuming"

    def __init__(self, env: dict[str, str], log_path: Path):
        super().__init__(["bench", "relay"], env, log_path)
