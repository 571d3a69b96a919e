"""Tasks for the executor fault tests (a module of their own: spawned workers and Ray import it)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class KillOnce:
    """A task whose first run kills its own worker process (SIGKILL) mid-task; later runs succeed.
    ``marker`` records the first run across processes."""

    def __init__(self, name: str, marker: str | None, seconds: float = 0.2) -> None:
        self.name, self.marker, self.seconds = name, marker, seconds
        self.arms = ()

    def run(self, pool, reference):
        if self.marker is not None and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(self.seconds)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.seconds)
        return [{"name": self.name, "pid": os.getpid()}]
