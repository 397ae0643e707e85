"""The face store: a content-addressed, append-only cache of analyzer results.

Layout: ``<store_root>/<model_id>/seg-<time>-<pid>-<rand>.parquet``. Each segment holds
the rows (schema.STORE) of a batch of images, keyed by sha256; a noface or unreadable
image is one row with ``face_index = -1``. Segments are immutable and uniquely named, so
any number of writers (shards, cluster jobs on a network filesystem) can add to the
store at once, and a crash loses at most the batch being written (writes are atomic).
Deleting the store only costs time.

What the store may hold: only facts about the bytes whose sha256 keys them (faces, noface,
undecodable, too large), never a condition of one file on one machine at one moment (file
not found, permission denied, a read error, a file changed since it was listed); those are
reported and retried next run (docs/architecture.md, "What the face store may hold").

Concurrent writers split the work with per-photo claim files (``Claims``, in
``<store>/<model_id>/claims/``): a writer analyses a photo only after creating its claim
with O_EXCL, and removes it after the photo's segment is written. A claim whose holder died
(same host: the pid is gone; any host: untouched for ``CLAIM_STALE_S``) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from facesets import schema
from facesets.segcache import SegmentCache

log = logging.getLogger(__name__)


class FaceStore(SegmentCache):
    """The segment cache (facesets/segcache.py) of ``schema.STORE`` rows under one model id.

    Unlike the other caches a key (sha256) has several rows, one per face: ``load`` keeps
    all rows of an image from the first segment that has it.
    """

    def __init__(self, root: Path, model_id: str) -> None:
        super().__init__(Path(root) / model_id, schema.STORE, "sha256")
        self.model_id = model_id

    def claims(self) -> Claims:
        return Claims(self.dir / "claims")

    def done(self) -> set[str]:
        """sha256 of every image the store has a result for."""
        return self.keys()

    def load(self, shas: Iterable[str]) -> pd.DataFrame:
        """All rows for the given images; the first segment (by name) wins on repeats."""
        wanted = pa.array(sorted(set(shas)), pa.string())
        parts = []
        for seg in self.segments():
            t = self._read(seg)
            if t is None:
                continue
            t = t.filter(pa.compute.is_in(t.column("sha256"), value_set=wanted))
            if t.num_rows:
                df = t.to_pandas()
                df["_seg"] = seg.name
                parts.append(df)
        if not parts:
            return pd.DataFrame({n: pd.Series(dtype=object) for n in schema.STORE.names})
        df = pd.concat(parts, ignore_index=True)
        first = df.groupby("sha256")["_seg"].transform("min")
        return df[df["_seg"] == first].drop(columns="_seg").reset_index(drop=True)

    def compact(self) -> Path | None:
        """Merge all segments into one (safe while no writer runs)."""
        segs = self.segments()
        if len(segs) < 2:
            return None
        tables = [t for t in (self._read(s) for s in segs) if t is not None]
        df = pa.concat_tables(tables).to_pandas().drop_duplicates(["sha256", "face_index"], keep="first")
        new = self.add(df)
        for s in segs:
            s.unlink()
        return new


TAKEOVER_LOCK = ".claims.lock"  # beside the claims folder: serialises taking over abandoned claims
CLAIM_STALE_S = 300.0  # a claim untouched this long is abandoned (its holder refreshes it every 30 s)
CLAIM_TOUCH_S = 30.0
CLAIM_WRITE_GRACE_S = 5.0  # an unreadable claim older than this was cut short by a kill: abandoned
_LIVE_TOKENS: set[str] = set()  # the Claims of this process


def _pid_alive(pid: int) -> bool:
    if os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0: existence check only
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:  # Windows (the DirectML embed host): os.kill(pid, 0) would send CTRL_C_EVENT
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    except Exception:  # noqa: BLE001 - unknown: rely on the stale timeout
        return True


@contextlib.contextmanager
def _takeover_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``.claims.lock`` beside the claims folder (flock: per open file, so threads of one
    process exclude each other too). Without fcntl (Windows) take-overs are not serialised: a
    rare duplicate analysis, never a wrong row."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder.parent / TAKEOVER_LOCK, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Claims:
    """Per-photo claim files: concurrent embeds into one store split the work.

    A claim is ``<dir>/<sha256>`` created with O_CREAT|O_EXCL (atomic on local and NFSv3+
    filesystems) holding the holder's host and pid. Losing a claim race only costs a
    duplicate analysis (results are identical and the first segment wins), never a wrong row.
    """

    def __init__(self, folder: Path, stale_s: float = CLAIM_STALE_S) -> None:
        self.dir = Path(folder)
        self.stale_s = stale_s
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.token = secrets.token_hex(8)  # several writers may live in one process
        _LIVE_TOKENS.add(self.token)
        self.held: set[str] = set()
        self._touched = time.monotonic()

    def _path(self, sha: str) -> Path:
        return self.dir / sha

    def _create(self, sha: str) -> bool:
        """Create the claim whole: written to a temporary file, then hard-linked to its name
        (atomic and exclusive, NFS included), so a kill never leaves a claim half written."""
        body = json.dumps({"host": self.host, "pid": self.pid, "token": self.token, "time": time.time()})
        tmp = self.dir / f".{sha}.{self.token}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(body)
            try:
                os.link(tmp, self._path(sha))
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: exclusive create, then write
                try:
                    fd = os.open(self._path(sha), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as fh:
                    fh.write(body)
        finally:
            tmp.unlink(missing_ok=True)
        self.held.add(sha)
        return True

    def stale(self, sha: str) -> bool:
        """True when the claim on ``sha`` is absent or abandoned."""
        p = self._path(sha)
        try:
            age = time.time() - p.stat().st_mtime
            text = p.read_text()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if age > self.stale_s:
            return True
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if not isinstance(info, dict):  # empty or cut short: a writer killed mid-write (the fallback create)
            return age > CLAIM_WRITE_GRACE_S  # a claim takes microseconds to write
        if info.get("host") == self.host:
            pid = int(info.get("pid", -1))
            if pid == self.pid:  # this process, or an earlier one that had our pid
                return info.get("token") not in _LIVE_TOKENS
            return not _pid_alive(pid)
        return False

    def take(self, sha: str) -> bool:
        """Claim ``sha``; False while another live writer holds it."""
        if sha in self.held:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._create(sha):
            return True
        # Taking over is check-then-replace: two writers that both judged one claim abandoned
        # would both remove and recreate it (and one would remove the other's new claim), so
        # take-overs are serialised by a lock file; creating a free claim needs no lock.
        with _takeover_lock(self.dir):
            if self._create(sha):  # released meanwhile
                return True
            if not self.stale(sha):
                return False
            log.info("store: taking over the abandoned claim on %s", sha)
            self._path(sha).unlink(missing_ok=True)
            return self._create(sha)

    def touch(self) -> None:
        """Refresh the held claims (at most every CLAIM_TOUCH_S), so others see us alive."""
        if time.monotonic() - self._touched < CLAIM_TOUCH_S:
            return
        self._touched = time.monotonic()
        for sha in self.held:
            with contextlib.suppress(OSError):
                os.utime(self._path(sha))

    def sweep(self, done: set[str]) -> int:
        """Remove abandoned claims on photos the store already has (a kill between writing a
        segment and releasing its claims leaves them); returns how many."""
        n = 0
        if not self.dir.is_dir():
            return 0
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp") and p.name.startswith("."):  # a claim's temporary file, left by a kill
                with contextlib.suppress(OSError):
                    if time.time() - p.stat().st_mtime > CLAIM_WRITE_GRACE_S:
                        p.unlink()
                continue
            if p.name in done and p.name not in self.held and self.stale(p.name):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def release(self, shas: Iterable[str]) -> None:
        for sha in shas:
            if sha in self.held:
                self.held.discard(sha)
                self._path(sha).unlink(missing_ok=True)
