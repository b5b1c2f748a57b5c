"""A one-line progress display for long builds (the kernel takes minutes).

On a terminal the line is redrawn in place with a spinner, the elapsed time
and the last thing make said; elsewhere (CI logs, pipes) it stays silent
apart from what the caller prints, so logs are not flooded with spinner
frames. The full output always goes to a log file.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

_FRAMES = "|/-\\"


class Progress:
    """Redraws ``[spinner] label mm:ss  detail`` on ``stream`` when enabled."""

    def __init__(self, label: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.start = time.monotonic()
        self._frame = 0
        self._last_draw = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds since the display was created."""
        return time.monotonic() - self.start

    def update(self, detail: str = "") -> None:
        """Show ``detail`` (throttled to ~10 redraws a second)."""
        now = time.monotonic()
        if not self.enabled or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._frame = (self._frame + 1) % len(_FRAMES)
        minutes, seconds = divmod(int(self.elapsed), 60)
        line = f"{_FRAMES[self._frame]} {self.label} {minutes:02d}:{seconds:02d}  {detail.strip()}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()

    def done(self) -> None:
        """Clear the line so the caller's next message starts clean."""
        if self.enabled:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.stream.write("\r" + " " * width + "\r")
            self.stream.flush()
