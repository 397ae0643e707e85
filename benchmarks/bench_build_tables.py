"""Benchmark (issue #18): embed's ``build_tables`` (listing + store rows -> face and image
tables), vectorised, against the per-row version it replaced, on a generated library.

Both run in the same process on the same tables (``tests/support/reference_tables.py``:
80% photos with 1-4 faces, noface, stored errors, listing errors, aliases), so the ratio is
fair on a shared machine; the outputs are checked equal. Usage:

    .venv/bin/python benchmarks/bench_build_tables.py --images 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa

from facesets import schema
from facesets.embed import build_tables
from tests.support.reference_tables import build_tables_rowwise, synthetic_tables


def _best(fn, repeat: int, *args) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _same(a, b) -> bool:
    def arrow(df, sch):
        return pa.Table.from_pandas(schema.conform(df.copy(), sch), schema=sch, preserve_index=False)

    return arrow(a[0], schema.FACES).equals(arrow(b[0], schema.FACES)) and arrow(a[1], schema.IMAGES).equals(
        arrow(b[1], schema.IMAGES)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    listing, results = synthetic_tables(args.images)
    t_new, new = _best(build_tables, args.repeat, listing, results)
    t_old, old = _best(build_tables_rowwise, 1, listing, results)
    print(
        f"build_tables, {args.images} images ({len(results)} store rows, {len(new[0])} faces) on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}: "
        f"per-row {t_old:.2f} s, vectorised {t_new:.3f} s (best of {args.repeat}), "
        f"ratio {t_old / t_new:.0f}x, outputs equal: {_same(old, new)}"
    )


if __name__ == "__main__":
    main()
