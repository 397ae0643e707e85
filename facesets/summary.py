"""The short run summary printed after embed (and by the demo)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from facesets import schema
from facesets.embed import sidecar_paths

NAMED_PER_REASON = 3  # files named under each error reason; the rest are counted


def _error_files(images) -> dict[str, list[str]]:
    err = images[images["status"] == "error"].sort_values("path", kind="stable")
    return {str(k): list(g["path"])[:NAMED_PER_REASON] for k, g in err.groupby("error", sort=False)}


def summarize(face_tables: Sequence[Path]) -> dict:
    out = {"sources": [], "images": 0, "files": 0, "faces": 0, "noface": 0, "errors": 0, "analyzed": 0, "seconds": 0.0}
    for ft in face_tables:
        images_path, stats_path = sidecar_paths(Path(ft))
        images = schema.read_table(images_path, ["source", "path", "status", "error", "aliases"])
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        row = {
            "face_table": str(ft),
            "source": images["source"].iloc[0] if len(images) else Path(ft).parent.name,
            "images": len(images),
            "files": len(images) + int(images["aliases"].map(len).sum()),
            "faces": int(schema.read_table(ft, ["face_key"]).shape[0]),
            "noface": int((images["status"] == "noface").sum()),
            "errors": int((images["status"] == "error").sum()),
            "error_reasons": images.loc[images["status"] == "error", "error"].value_counts().to_dict(),
            "error_files": _error_files(images),
            "finished": stats.get("finished", ""),
            "analyzed": stats.get("analyzed", 0),
            "seconds": stats.get("seconds", 0.0),
            "img_per_s": stats.get("img_per_s", 0.0),
        }
        out["sources"].append(row)
        for k in ("images", "files", "faces", "noface", "errors", "analyzed", "seconds"):
            out[k] += row[k]
    out["img_per_s"] = round(out["analyzed"] / out["seconds"], 2) if out["seconds"] and out["analyzed"] else 0.0
    return out


def format_summary(s: dict) -> str:
    lines = []
    for r in s["sources"]:
        lines.append(
            f"{r['source']}: {r['images']} images ({r['files']} files), {r['faces']} faces, "
            f"{r['noface']} no-face images, {r['errors']} errors, "
            f"{r['analyzed']} analyzed by the last embed"
            + (f" ({r['finished']})" if r.get("finished") else "")
            + f" at {r['img_per_s']} img/s"
        )
        for reason, n in r["error_reasons"].items():
            named = r.get("error_files", {}).get(reason, [])
            more = f", and {n - len(named)} more" if n > len(named) else ""
            lines.append(f"    error x{n}: {reason}: {', '.join(named)}{more}")
    lines.append(
        f"TOTAL: images={s['images']} faces={s['faces']} noface={s['noface']} errors={s['errors']} "
        f"img/s={s['img_per_s']}"
    )
    return "\n".join(lines)
