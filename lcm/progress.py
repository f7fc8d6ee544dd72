"""Progress of long loops, readable in a terminal and in a log file.

In a terminal (stderr is a TTY) a tqdm bar shows the count, items/s and the ETA. Otherwise (a
log file, CI) plain lines go to stderr, at most every ``interval`` seconds, and a background
thread repeats the last state every ``interval`` seconds even while one step takes long, so a
log always shows progress at least that often::

    lcm prepare encode: 1200/5000 documents, 240.0 documents/s, elapsed 0:00:05, ETA 0:00:16

    with Progress("encode", total=5000, unit="documents") as bar:
        for shard in shards:
            ...
            bar.update(len(shard))
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from typing import TextIO

#: Seconds between plain progress lines (the log-file mode); ``LCM_PROGRESS_INTERVAL`` overrides.
DEFAULT_INTERVAL = 30.0


def clock(seconds: float) -> str:
    """``H:MM:SS`` of a duration (negative counts as 0)."""
    return str(timedelta(seconds=int(max(seconds, 0))))


class Progress:
    """A counter with a rate and an ETA, shown as a bar (TTY) or as periodic lines (log file).

    Args:
        stage: What is being counted (``read+split``, ``encode``, ``normalizer``).
        total: Expected count (None: unknown, no ETA).
        unit: Name of the counted items.
        enabled: False shows nothing.
        interval: Seconds between plain lines; default ``LCM_PROGRESS_INTERVAL`` or 30.
        stream: Where to write (default: stderr).
        prefix: Text before the stage name.
        tty: Force the bar (True) or the plain lines (False); default: ``stream.isatty()``.
    """

    def __init__(
        self,
        stage: str,
        total: int | None = None,
        unit: str = "documents",
        enabled: bool = True,
        interval: float | None = None,
        stream: TextIO | None = None,
        prefix: str = "lcm prepare",
        tty: bool | None = None,
    ) -> None:
        self.stage = stage
        self.total = total
        self.unit = unit
        self.enabled = enabled
        env = os.environ.get("LCM_PROGRESS_INTERVAL")
        self.interval = float(interval if interval is not None else env or DEFAULT_INTERVAL)
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.n = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._bar = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if not enabled:
            return
        is_tty = self.stream.isatty() if tty is None else tty
        if is_tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, unit=f" {unit}", desc=f"{prefix} {stage}", file=self.stream
            )
        else:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()

    def line(self) -> str:
        """The current state as one plain line."""
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        text = (
            f"{self.prefix} {self.stage}: {count} {self.unit}, {rate:.1f} {self.unit}/s, "
            f"elapsed {clock(elapsed)}"
        )
        if self.total is not None:
            eta = (self.total - self.n) / rate if rate > 0 else None
            text += f", ETA {clock(eta) if eta is not None else '?'}"
        return text

    def _emit(self) -> None:
        with self._lock:
            print(self.line(), file=self.stream, flush=True)
            self._last_line = time.monotonic()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            if time.monotonic() - self._last_line >= self.interval:
                self._emit()

    def set_total(self, total: int | None) -> None:
        """Replace the expected count (an estimate made exact once it is known)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._emit()

    def close(self) -> None:
        """Stop, and print the final line (plain mode) or close the bar."""
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._emit()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.enabled = False

    def __getstate__(self) -> dict:
        # Spawned worker processes (ddp_spawn) get a silent copy: the parent reports progress.
        state = dict(self.__dict__)
        state.update(_bar=None, _thread=None, _lock=None, _stop=None, stream=None, enabled=False)
        return state

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
