"""Progress: a tqdm bar with img/s and ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("facesets.progress")


class Progress:
    def __init__(self, total: int, desc: str, interval_s: float = 10.0, force_plain: bool = False) -> None:
        self.total, self.desc, self.interval = total, desc, interval_s
        self.n, self.t0, self.last = 0, time.monotonic(), 0.0
        self.bar = None
        if not force_plain and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    @property
    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return self.n / dt if dt > 0 else 0.0

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last >= self.interval or self.n == self.total:
            self.last = now
            rate = self.rate
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            log.info(
                "%s: %d/%d images, %.1f img/s, ETA %s",
                self.desc,
                self.n,
                self.total,
                rate,
                "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta)),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
