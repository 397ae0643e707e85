"""Progress: a tqdm bar with img/s and ETA on a terminal, plain lines every ``interval_s`` otherwise.

Plain lines go to the log and, with ``echo`` (a text stream), also there: under Snakemake a
job's stderr goes to its log file, so the embed rule hands the console to the job as another
file descriptor (``--progress-fd``) and a person sees the lines while snakemake runs.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("facesets.progress")


def _eta(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


class Progress:
    def __init__(
        self,
        total: int,
        desc: str,
        interval_s: float = 10.0,
        force_plain: bool = False,
        echo: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.interval = total, desc, interval_s
        self.n, self.t0, self.last = 0, time.monotonic(), 0.0
        self.echo = echo
        self.bar = None
        if not force_plain and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    @property
    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return self.n / dt if dt > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        return f"{self.desc}: {self.n}/{self.total} images, {rate:.1f} img/s, ETA {_eta(eta)}"

    def _emit(self) -> None:
        text = self.line()
        log.info("%s", text)
        if self.echo is not None:
            try:
                self.echo.write(f"{time.strftime('%H:%M:%S')} {text}\n")
                self.echo.flush()
            except (OSError, ValueError):
                self.echo = None  # the console went away; the log keeps the lines

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last >= self.interval or self.n == self.total:
            self.last = now
            self._emit()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
