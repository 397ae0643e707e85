"""What ``snakemake --report report.html`` shows: contact sheets per face set and run statistics.

* ``contact_sheets(export_dir, out_dir)``: one PNG per face set of an export (contract 4,
  ``<export>/manifest.json``), named after the set: a header (source, crop count, score range) and a grid
  of the exported crops in score order, each with its rank, composite score and a bar per
  score component (frontality, det_score, symmetry, face size, sharpness).
* ``run_stats(sources, out_html)``: one self-contained HTML page with, per source, images,
  files, faces, no-face and unreadable photos (embed), raw clusters and singletons (cluster),
  duplicate groups (dedup), the refine funnel with rejections by gate, and the export's face
  sets, crops and rejections.

Both are pure functions of the stage outputs; rules/report.smk marks their outputs with
Snakemake's ``report()`` flag (captions in ``report/*.rst``).

Sheets are incremental: each has a digest of what it draws (``sheet_digest``: the set's entry,
its crops' identity, the sheet options, ``SHEET_VERSION``); with a cache folder (``SheetCache``)
a sheet whose digest is known is hard-linked from there (same inode, bytes and mtime as before)
and only the others are drawn, in a thread pool of ``workers``.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facesets import ledger as L
from facesets.atomic import TMP_PREFIX, atomic_path, staged_dir, write_text
from facesets.links import link_or_copy
from facesets.manifests import (
    EXPORT_MANIFEST,
    LEDGER,
    RAW_MANIFEST,
    REFINE_MANIFEST,
    SET_MANIFEST,
    read_export_manifest,
    read_json,
    read_library_manifest,
    read_raw_manifest,
    read_refine_manifest,
)
from facesets.quality import COMPONENTS

log = logging.getLogger(__name__)

COMPONENT_COLOURS = ((70, 130, 220), (90, 170, 90), (200, 150, 40), (160, 90, 190), (210, 80, 80))
BACKGROUND = (246, 246, 244)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
LABEL_H = 22 + 5 * len(COMPONENTS) + 6  # score band + one bar per component, below each thumbnail


@dataclass(frozen=True)
class SheetOptions:
    """The ``report`` config section (defaults there; build with ``facesets.options.build``)."""

    columns: int
    thumb: int  # pixels per crop thumbnail
    max_tiles: int  # crops shown per face set (the best by score)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 without sized default font
        return ImageFont.load_default()


def score_colour(score: float) -> tuple[int, int, int]:
    """Red (0) -> amber (0.5) -> green (1) for a score in [0, 1]."""
    s = 0.0 if score is None or not math.isfinite(score) else min(1.0, max(0.0, score))
    if s < 0.5:
        return (200, int(60 + 240 * s), 50)
    return (int(200 - 300 * (s - 0.5)), 180, 60)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, font) -> None:
    for name, colour in zip(COMPONENTS, COMPONENT_COLOURS, strict=True):
        draw.rectangle([x, y + 3, x + 12, y + 13], fill=colour)
        draw.text((x + 16, y), name.replace("_", " "), fill=MUTED, font=font)
        x += 22 + int(draw.textlength(name, font=font))


def _tile(crop_path: Path, entry: Mapping, rank: int, size: int, fonts, label_h: int = LABEL_H) -> Image.Image:
    tile = Image.new("RGB", (size, size + label_h), "white")
    try:
        with Image.open(crop_path) as im:
            tile.paste(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), (0, 0))
    except (OSError, ValueError) as exc:
        log.warning("contact sheet: cannot read %s (%s)", crop_path, exc)
        ImageDraw.Draw(tile).text((8, size // 2), "unreadable", fill=(200, 0, 0), font=fonts[1])
    draw = ImageDraw.Draw(tile)
    mode = (entry.get("crop") or {}).get("mode")
    if mode and mode != "clean":  # export masked a bystander or shrank the margin: worth a look
        w = draw.textlength(mode, font=fonts[2])
        draw.rectangle([0, 0, w + 8, 16], fill=(40, 40, 40))
        draw.text((4, 1), mode, fill="white", font=fonts[2])
    score = entry.get("score")
    score_txt = f"{score:.2f}" if isinstance(score, (int, float)) else "-"
    draw.rectangle(
        [0, size, size - 1, size + 20], fill=score_colour(score if isinstance(score, (int, float)) else None)
    )
    draw.text((5, size + 2), f"#{rank}", fill="white", font=fonts[1])
    w = draw.textlength(score_txt, font=fonts[1])
    draw.text((size - 5 - w, size + 2), score_txt, fill="white", font=fonts[1])
    comps = entry.get("components") or {}
    y = size + 24
    for name, colour in zip(COMPONENTS, COMPONENT_COLOURS, strict=True) if comps else ():
        v = comps.get(name)
        draw.rectangle([4, y, size - 5, y + 3], fill=(228, 228, 228))
        if isinstance(v, (int, float)) and math.isfinite(v):
            draw.rectangle([4, y, 4 + int((size - 9) * min(1.0, max(0.0, v))), y + 3], fill=colour)
        y += 5
    return tile


def render_sheet(
    export_dir: Path,
    entry: Mapping,
    source: str,
    opts: SheetOptions,
    title: str | None = None,
    details: Sequence[str] = (),
) -> Image.Image:
    """The contact sheet of one face set (an entry of the export manifest's ``facesets``).

    ``title``: the header line instead of ``<name> · <source>``; ``details``: more lines under
    the facts (the library's sheets: kind, label, sources, eras). The component legend is
    drawn only when the crops carry components.
    """
    crops = sorted(entry.get("crops", []), key=lambda c: -(c.get("score") or 0.0))
    shown = crops[: opts.max_tiles]
    fonts = (_font(22), _font(14), _font(12))
    cols = max(1, min(opts.columns, len(shown) or 1))
    legend = any(c.get("components") for c in crops)
    gap, margin = 8, 16
    header = 58 + 20 * len(details) + (20 if legend else 0)
    label_h = LABEL_H if legend else 21  # no components (the library's crops): the score band only
    tile_h = opts.thumb + label_h
    rows = math.ceil(len(shown) / cols) if shown else 0
    width = max(2 * margin + cols * opts.thumb + (cols - 1) * gap, 760)
    height = header + margin + rows * (tile_h + gap) + (40 if not shown else 0)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    scores = [c["score"] for c in crops if isinstance(c.get("score"), (int, float))]
    name = entry.get("name", "?")
    title = title or (f"{name}  ·  {source}" if source else name)
    draw.text((margin, 10), title, fill=INK, font=fonts[0])
    facts = f"{len(crops)} crops from {entry.get('unique_images', '?')} photos"
    if scores:
        facts += f"  ·  score {min(scores):.2f} to {max(scores):.2f}, median {sorted(scores)[len(scores) // 2]:.2f}"
    if len(crops) > len(shown):
        facts += f"  ·  showing the best {len(shown)}"
    draw.text((margin, 38), facts, fill=MUTED, font=fonts[1])
    for i, line in enumerate(details):
        draw.text((margin, 58 + 20 * i), line, fill=MUTED, font=fonts[1])
    if legend:
        _legend(draw, margin, 58 + 20 * len(details), fonts[2])
    if not shown:
        draw.text((margin, header + 8), "no crops exported", fill=(200, 0, 0), font=fonts[1])
    for i, c in enumerate(shown):
        r, k = divmod(i, cols)
        x = margin + k * (opts.thumb + gap)
        y = header + r * (tile_h + gap)
        sheet.paste(_tile(export_dir / c["file"], c, i, opts.thumb, fonts, label_h), (x, y))
    return sheet


def sheet_name(faceset: str) -> str:
    """File name of a face set's sheet: the face set's name, made safe for a file name."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in faceset).lstrip(".")
    return f"{safe or '_'}.png"


SHEET_VERSION = 1  # bump when render_sheet draws differently: the sheet cache is keyed by it


def crop_signature(path: Path) -> list[int] | None:
    """What identifies a crop file's bytes here: (inode, size, mtime ns). Crops are only ever
    replaced, never rewritten, so new bytes mean a new signature (a new inode at least)."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # drawn as "unreadable": the digest says so too
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def sheet_digest(payload: object, opts: SheetOptions) -> str:
    """The cache key of a sheet: everything it draws (``payload``, JSON) and how (options, version)."""
    blob = json.dumps([SHEET_VERSION, asdict(opts), payload], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


NAME_KEYS = ("name", "dir", "bundles")  # where an export set is, not what its sheet draws


def export_title(source: str) -> str:
    """An export sheet's header. Not the set's name: refine numbers sets by size, so one set that
    grows renames the smaller ones; the file name and the report's label name the set."""
    return f"{source}  ·  exported crops" if source else "exported crops"


def export_sheet_digest(export_dir: Path, entry: Mapping, source: str, opts: SheetOptions) -> str:
    """An export set's sheet digest: its entry without where it lives (name, folder, file names),
    the export's ``digest`` of the crops' content keys standing for their pixels (an entry
    without one: the shown crops' file signatures). A set renamed by refine keeps its sheet."""
    pixels = entry.get("digest") or [
        crop_signature(export_dir / c["file"]) for c in entry.get("crops", [])[: opts.max_tiles + 1]
    ]
    drawn = {k: v for k, v in entry.items() if k not in NAME_KEYS}
    drawn["crops"] = [{k: v for k, v in c.items() if k != "file"} for c in entry.get("crops", [])]
    return sheet_digest({"entry": drawn, "title": export_title(source), "pixels": pixels}, opts)


@dataclass
class SheetCache:
    """Finished sheets by digest (``<folder>/<digest>.png``), placed into the output as hard links.

    ``folder`` None: nothing cached, every sheet drawn. ``prune`` after the output folder was
    swapped in removes the sheets this run did not use (one cache folder per output)."""

    folder: Path | None
    used: set[str] = field(default_factory=set)
    drawn: int = 0
    reused: int = 0

    def entry(self, digest: str) -> Path | None:
        return self.folder / f"{digest}.png" if self.folder is not None else None

    def prune(self) -> int:
        if self.folder is None or not self.folder.is_dir():
            return 0
        gone = [p for p in self.folder.iterdir() if p.name not in self.used]
        for p in gone:
            p.unlink(missing_ok=True)
        return len(gone)


@dataclass(frozen=True)
class SheetJob:
    name: str  # file name in the output folder
    digest: str
    draw: Callable[[], Image.Image]


def _save(img: Image.Image, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG", optimize=True)


def write_sheets(jobs: Sequence[SheetJob], tmp: Path, cache: SheetCache, workers: int) -> None:
    """Each job's sheet into ``tmp``: linked from the cache when its digest is there, else drawn
    (``workers`` at a time) into the cache and linked (drawn straight into ``tmp`` without one)."""

    def one(job: SheetJob) -> bool:
        cached = cache.entry(job.digest)
        if cached is not None and cached.exists():
            try:
                link_or_copy(cached, tmp / job.name)
                return False
            except FileNotFoundError:
                pass  # removed meanwhile: draw it
        if cached is None:
            _save(job.draw(), tmp / job.name)
        else:
            _save(job.draw(), cached)
            link_or_copy(cached, tmp / job.name)
        return True

    if cache.folder is not None:
        cache.folder.mkdir(parents=True, exist_ok=True)
        for p in cache.folder.glob(f"{TMP_PREFIX}*"):  # a killed run's half-written sheet
            p.unlink(missing_ok=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow's resize and zlib release the GIL
        for job, drawn in zip(jobs, pool.map(one, jobs), strict=True):
            cache.used.add(f"{job.digest}.png")
            cache.drawn += drawn
            cache.reused += not drawn
    log.info("contact sheets: %d drawn, %d unchanged (linked from the cache)", cache.drawn, cache.reused)


def contact_sheets(
    export_dir: Path, out_dir: Path, opts: SheetOptions, cache: Path | None = None, workers: int = 1
) -> list[Path]:
    """One PNG per face set of the export into ``out_dir`` (replaced atomically as a folder).

    ``cache``: a folder of this output's finished sheets (only changed sets are drawn);
    ``workers``: sheets drawn at once."""
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    manifest = read_export_manifest(export_dir)
    source = manifest.get("source", "")
    jobs = [
        SheetJob(
            sheet_name(entry.get("name", "faceset")),
            export_sheet_digest(export_dir, entry, source, opts),
            lambda entry=entry: render_sheet(export_dir, entry, source, opts, title=export_title(source)),
        )
        for entry in manifest["facesets"]
    ]
    sheets = SheetCache(Path(cache) if cache is not None else None)
    with staged_dir(out_dir) as tmp:
        write_sheets(jobs, tmp, sheets, workers)
    sheets.prune()
    return [out_dir / j.name for j in jobs]


# ---------------------------------------------------------------- the library


@dataclass(frozen=True)
class LibraryIdentity:
    """One identity of facesets_swap_ready/ as the report shows it."""

    number: int
    name: str
    kind: str
    label: str | None
    parent: str | None
    sources: list[str]
    aliases: list[str]
    faces: int
    photos: int
    thin: bool
    dir: str
    eras: list[str]  # "<name> (<faces>)" of its eras, thin ones marked
    entries: list[str]  # "<source>/<export entry>" merged into it (the per-source names)

    @property
    def sheet(self) -> str:
        return sheet_name(f"{self.number:03d}_{self.name}")

    def details(self) -> list[str]:
        kind = f"{self.kind}" + (f", label {self.label!r}" if self.label else "")
        if self.parent:
            kind += f", era of {self.parent}" + (" (thin: fewer than min_era_faces)" if self.thin else "")
        lines = [f"kind {kind}  ·  sources: {', '.join(self.sources) or '-'}"]
        if self.eras:
            lines.append(f"eras: {', '.join(self.eras)}")
        if self.entries:
            # how many export sets of each source, not their names: refine renumbers those whenever
            # a set grows past another, which would redraw unchanged identities' sheets (the
            # overview page maps the names)
            per: dict[str, int] = {}
            for e in self.entries:
                per[e.rsplit("/", 1)[0]] = per.get(e.rsplit("/", 1)[0], 0) + 1
            sets = ", ".join(f"{s} ({n} set{'s' if n > 1 else ''})" for s, n in sorted(per.items()))
            lines.append(f"from: {sets}"[:160])
        return lines


def library_identities(swap_ready: Path) -> tuple[list[LibraryIdentity], list[dict]]:
    """The library's identities (numbered order) and the merge's notes, from manifest.json + ledger.json."""
    swap_ready = Path(swap_ready)
    manifest = read_library_manifest(swap_ready)
    path = swap_ready / LEDGER
    ledger = L.from_json(read_json(path, "the identity ledger (run manifest-merge first)"), where=str(path))
    idents = {i.number: i for i in ledger.identities}
    entries: dict[int, list[str]] = {}
    for source, batch in ledger.batches.items():
        for entry, number in batch.get("entries", {}).items():
            entries.setdefault(number, []).append(f"{source}/{entry}")
    out = []
    rows = [*manifest.get("facesets", []), *manifest.get("thin_eras", [])]
    for e in sorted(rows, key=lambda e: e["number"]):
        ident = idents.get(e["number"]) or L.Identity(e["number"], e["name"], e["kind"])  # not in the ledger
        names = {e["name"], *ident.aliases}
        eras = [
            f"{i.name} ({len(i.members)}{', thin' if i.thin else ''})"
            for i in sorted(idents.values(), key=lambda i: i.number)
            if i.kind == "era" and i.parent in names
        ]
        out.append(
            LibraryIdentity(
                number=e["number"],
                name=e["name"],
                kind=e["kind"],
                label=ident.label,
                parent=ident.parent,
                sources=list(ident.sources),
                aliases=list(ident.aliases),
                faces=int(e["faces"]),
                photos=int(e["unique_images"]),
                thin=ident.thin,
                dir=e["dir"],
                eras=eras,
                entries=sorted(entries.get(e["number"], [])),
            )
        )
    return out, [n for b in ledger.batches.values() for n in b.get("notes", [])]


def library_sheets(
    swap_ready: Path, out_dir: Path, opts: SheetOptions, cache: Path | None = None, workers: int = 1
) -> list[Path]:
    """One PNG per library identity, ``<number>_<name>.png``, from the library's own crops.

    A sheet's digest: the identity's manifest (members, ranks, scores), title, details and the
    signatures of the crops it shows; ``cache``/``workers`` as for ``contact_sheets``."""
    swap_ready, out_dir = Path(swap_ready), Path(out_dir)
    idents, _ = library_identities(swap_ready)
    jobs = []
    for ident in idents:
        d = swap_ready / ident.dir
        entry = read_json(d / SET_MANIFEST, f"the manifest of identity #{ident.number} (run manifest-merge)")
        entry = {**entry, "unique_images": ident.photos}
        title = f"#{ident.number}  {ident.name}"
        shown = sorted(entry.get("crops", []), key=lambda c: -(c.get("score") or 0.0))[: opts.max_tiles]
        payload = {
            "entry": entry,
            "title": title,
            "details": ident.details(),
            "pixels": [crop_signature(d / c["file"]) for c in shown],
        }
        draw = lambda d=d, entry=entry, title=title, ident=ident: render_sheet(  # noqa: E731
            d, entry, "", opts, title=title, details=ident.details()
        )
        jobs.append(SheetJob(ident.sheet, sheet_digest(payload, opts), draw))
    sheets = SheetCache(Path(cache) if cache is not None else None)
    with staged_dir(out_dir) as tmp:
        write_sheets(jobs, tmp, sheets, workers)
    sheets.prune()
    return [out_dir / j.name for j in jobs]


_NOTE_TITLES = {
    "label_conflict": "Labels in conflict (not merged)",
    "label_split": "Hand-sorted faces in other identities (not moved)",
    "held": "Held back: below refine.min_faces after every gate",
    "duplicates": "Near-duplicates left out",
    "relocated": "Photos found at a new path",
}


def render_library_html(idents: Sequence[LibraryIdentity], notes: Sequence[dict], sheets_dir: str | None) -> str:
    """The library overview page: every identity with its provenance, then what the merge reported."""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "name", "kind", "label", "sources", "faces", "photos", "eras", "from (per-source names)")
    )
    body = []
    for i in idents:
        kind = i.kind + (" (thin)" if i.thin else "") + (f" of {html.escape(i.parent)}" if i.parent else "")
        name = html.escape(i.name) + (
            f"<br><span class='m'>was {html.escape(', '.join(i.aliases))}</span>" if i.aliases else ""
        )
        body.append(
            f"<tr><td class='n'>{i.number}</td><td>{name}</td><td>{kind}</td><td>{html.escape(i.label or '')}</td>"
            f"<td>{html.escape(', '.join(i.sources))}</td><td class='n'>{i.faces}</td><td class='n'>{i.photos}</td>"
            f"<td>{html.escape(', '.join(i.eras))}</td><td class='m'>{html.escape(', '.join(i.entries))}</td></tr>"
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>face-sets library</title>"
        f"<style>{_CSS} td.m,span.m{{color:#666;font-size:12px}} li{{font-size:13px;margin:2px 0}}</style>"
        "</head><body><h1>The library: facesets_swap_ready/</h1>",
        f"<p class='note'>{len([i for i in idents if not i.thin])} identities and "
        f"{len([i for i in idents if i.thin])} thin eras, by library number (numbers never change). "
        "One contact sheet per identity is in this report's Library section"
        + (f" ({html.escape(sheets_dir)})" if sheets_dir else "")
        + "; the per-source sheets show the exports under their own names, mapped here in the last column.</p>",
        f"<table><tr>{head}</tr>{''.join(body)}</table>",
    ]
    kinds = [k for k in _NOTE_TITLES if any(n.get("kind") == k for n in notes)]
    parts.append("<h2>What the merge reported</h2>")
    if not kinds:
        parts.append("<p class='note'>Nothing: no label conflicts, no held sets, no duplicates left out.</p>")
    for k in kinds:
        items = "".join(f"<li>{html.escape(n.get('message', ''))}</li>" for n in notes if n.get("kind") == k)
        parts.append(f"<h3>{_NOTE_TITLES[k]}</h3><ul>{items}</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def library_report(
    swap_ready: Path, out_dir: Path, page: Path, opts: SheetOptions, cache: Path | None = None, workers: int = 1
) -> list[Path]:
    """``facesets library-report``: the per-identity sheets into ``out_dir`` and the overview ``page``."""
    written = library_sheets(swap_ready, out_dir, opts, cache, workers)
    idents, notes = library_identities(swap_ready)
    write_text(page, render_library_html(idents, notes, Path(out_dir).name + "/"))
    return written


# ---------------------------------------------------------------- run statistics


@dataclass(frozen=True)
class SourceFiles:
    """A source's stage outputs the statistics page reads (any may be None when absent)."""

    name: str
    faces: Path | None = None  # faces.parquet (faces.images.parquet and faces.stats.json beside it)
    raw: Path | None = None  # raw clusters folder (manifest.json)
    duplicates: Path | None = None
    refine: Path | None = None  # refine folder (refine_manifest.json)
    export: Path | None = None  # export folder (manifest.json)


def _load_json(path: Path | None) -> dict | None:
    if path is None or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _present(folder: Path | None, name: str) -> bool:
    """The stage wrote its manifest ``name`` into ``folder`` (absent: the page leaves the stage out)."""
    return folder is not None and (Path(folder) / name).exists()


def source_stats(s: SourceFiles) -> dict:
    """The numbers of one source, stage by stage (None where the stage's output is absent)."""
    from facesets.embed import sidecar_paths

    out: dict = {"source": s.name}
    if s.faces is not None and Path(s.faces).exists():
        _, stats_path = sidecar_paths(Path(s.faces))
        emb = _load_json(stats_path) or {}
        out["embed"] = {k: emb.get(k) for k in ("images", "files", "faces", "noface", "errors", "analyzed", "model_id")}
    raw = read_raw_manifest(s.raw) if _present(s.raw, RAW_MANIFEST) else None
    if raw is not None:
        multi = [c for c in raw["clusters"] if c["name"] != "_singletons"]
        single = sum(c["faces"] for c in raw["clusters"] if c["name"] == "_singletons")
        out["cluster"] = {"clusters": len(multi), "faces_in_clusters": sum(c["faces"] for c in multi),
                          "singletons": single, "threshold": raw.get("threshold")}  # fmt: skip
    dup = _load_json(s.duplicates)
    if dup is not None:
        out["dedup"] = {
            "byte_identical_groups": len(dup.get("byte_identical", [])),
            "byte_identical_extra_files": sum(len(g["paths"]) - 1 for g in dup.get("byte_identical", [])),
            "near_duplicate_groups": len(dup.get("near_duplicate", [])),
            "near_duplicate_photos": sum(len(g["members"]) for g in dup.get("near_duplicate", [])),
        }
    ref = read_refine_manifest(s.refine) if _present(s.refine, REFINE_MANIFEST) else None
    if ref is not None:
        st = ref.get("stats", {})
        out["refine"] = {
            "faces": st.get("faces"),
            "clusters_initial": st.get("clusters_initial"),
            "after_merge": st.get("after_merge"),
            "rejected": st.get("rejected", {}),
            "facesets": st.get("facesets", len(ref["facesets"])),
            "settings": ref.get("settings", {}),
        }
    exp = read_export_manifest(s.export) if _present(s.export, EXPORT_MANIFEST) else None
    if exp is not None:
        st = exp.get("stats", {})
        out["export"] = {
            "facesets": st.get("facesets", len(exp["facesets"])),
            "crops": st.get("crops"),
            "candidates": st.get("candidates", len(exp.get("candidates", []))),
            "rejected": st.get("rejected", {}),
            "settings": exp.get("settings", {}),
            "per_faceset": [
                {"name": e.get("name"), "faces": e.get("faces"), "crops": len(e.get("crops", [])),
                 "unique_images": e.get("unique_images"),
                 "median_score": _median([c.get("score") for c in e.get("crops", [])])}
                for e in exp["facesets"]
            ],
        }  # fmt: skip
    return out


_GATES = {
    "min_short": "face too small (short edge < {min_short} px)",
    "min_blur": "too blurry (blur < {min_blur})",
    "min_det_score": "low detector score (< {min_det_score})",
    "outlier": "outlier (> {outlier_threshold} from its cluster)",
    "size": "in clusters of < {min_faces} photos",
    "outlier_tight": "outlier, tight gate (> {outlier_tight})",
    "duplicate": "near-duplicate of a kept face",
    "min_face_short": "face too small (short edge < {min_face_short} px)",
    "bystander_unfixable": "bystander inside every crop",
    "crop_no_face": "no face found again in the crop",
    "crop_masks_larger_face": "crop would mask a face larger than the subject",
    "crop_not_subject": "the crop's face is not the set's person (> {subject_distance})",
    "unreadable": "photo unreadable",
}


def gate_label(gate: str, settings: Mapping) -> str:
    """A reader's name for a gate, with its threshold where the settings have it."""
    text = _GATES.get(gate)
    if text is None:
        return gate
    try:
        return text.format(**{k: _fmt(v) for k, v in settings.items()})
    except (KeyError, IndexError):
        return text.split(" (")[0]


def _median(values: Sequence) -> float | None:
    v = sorted(x for x in values if isinstance(x, (int, float)))
    return round(v[len(v) // 2], 3) if v else None


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"
    return html.escape(str(v))


def _table(rows: Sequence[tuple[str, object]], head: tuple[str, str] | None = None) -> str:
    h = f"<tr><th>{html.escape(head[0])}</th><th>{html.escape(head[1])}</th></tr>" if head else ""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td class='n'>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{h}{body}</table>"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 6px;color:#444} p.note{color:#666;font-size:13px;margin:4px 0 12px}
.grid{display:flex;flex-wrap:wrap;gap:24px} table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f4f4f2}
"""


def render_stats_html(stats: Sequence[dict]) -> str:
    """The statistics page (self-contained HTML, no scripts)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>face-sets run statistics</title>"
             f"<style>{_CSS}</style></head><body><h1>Run statistics</h1>"
             "<p class='note'>Per source, stage by stage: what came in, what each stage kept, and why faces "
             "were left out. Rejections count faces (refine's size gate: faces in the dropped clusters).</p>"]  # fmt: skip
    totals = {"images": 0, "faces": 0, "clusters": 0, "facesets": 0, "crops": 0}
    for s in stats:
        totals["images"] += (s.get("embed") or {}).get("images") or 0
        totals["faces"] += (s.get("embed") or {}).get("faces") or 0
        totals["clusters"] += (s.get("cluster") or {}).get("clusters") or 0
        totals["facesets"] += (s.get("export") or s.get("refine") or {}).get("facesets") or 0
        totals["crops"] += (s.get("export") or {}).get("crops") or 0
    parts.append("<h2>All sources</h2>" + _table([(k, v) for k, v in totals.items()], ("", "total")))
    for s in stats:
        parts.append(f"<h2>Source {html.escape(s['source'])}</h2><div class='grid'>")
        e = s.get("embed")
        if e:
            parts.append("<div><h3>Photos and faces (embed)</h3>" + _table([
                ("unique photos", e["images"]), ("files (with byte-identical copies)", e["files"]),
                ("faces", e["faces"]), ("photos without a face", e["noface"]),
                ("unreadable photos", e["errors"]), ("model", e["model_id"])]) + "</div>")  # fmt: skip
        c = s.get("cluster")
        if c:
            parts.append("<div><h3>Raw clusters (cluster)</h3>" + _table([
                ("clusters (2+ faces)", c["clusters"]), ("faces in them", c["faces_in_clusters"]),
                ("singleton faces", c["singletons"]), ("threshold", c["threshold"])]) + "</div>")  # fmt: skip
        d = s.get("dedup")
        if d:
            parts.append("<div><h3>Duplicates (dedup)</h3>" + _table([
                ("byte-identical groups", d["byte_identical_groups"]),
                ("extra byte-identical files", d["byte_identical_extra_files"]),
                ("near-duplicate groups", d["near_duplicate_groups"]),
                ("photos in them", d["near_duplicate_photos"])]) + "</div>")  # fmt: skip
        r = s.get("refine")
        if r:
            rows = [("faces", r["faces"]), ("initial clusters", r["clusters_initial"]),
                    ("after centroid merge", r["after_merge"])]  # fmt: skip
            rows += [(f"rejected: {gate_label(k, r['settings'])}", v) for k, v in r["rejected"].items()]
            rows.append(("face sets", r["facesets"]))
            parts.append("<div><h3>Refine: the funnel and its gates</h3>" + _table(rows) + "</div>")
        x = s.get("export")
        if x:
            rows = [("face sets", x["facesets"]), ("crops", x["crops"]), ("candidates", x["candidates"])]
            rows += [(f"rejected: {gate_label(k, x['settings'])}", v) for k, v in x["rejected"].items()]
            parts.append("<div><h3>Export (swap-ready)</h3>" + _table(rows) + "</div>")
        parts.append("</div>")
        if x and x["per_faceset"]:
            head = "<tr><th>face set</th><th>faces</th><th>photos</th><th>crops</th><th>median score</th></tr>"
            body = "".join(
                f"<tr><td>{html.escape(str(f['name']))}</td><td class='n'>{_fmt(f['faces'])}</td>"
                f"<td class='n'>{_fmt(f['unique_images'])}</td><td class='n'>{_fmt(f['crops'])}</td>"
                f"<td class='n'>{_fmt(f['median_score'])}</td></tr>"
                for f in x["per_faceset"]
            )
            parts.append(f"<h3>Face sets</h3><table>{head}{body}</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def run_stats(sources: Sequence[SourceFiles], out_html: Path, out_json: Path | None = None) -> list[dict]:
    """Write the statistics page (and the numbers as JSON); returns the numbers."""
    stats = [source_stats(s) for s in sources]
    write_text(out_html, render_stats_html(stats))
    if out_json is not None:
        write_text(out_json, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
