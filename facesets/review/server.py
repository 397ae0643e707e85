"""``facesets review``: a local page over the library that writes curation decisions.

A ``ThreadingHTTPServer`` bound to 127.0.0.1 only. Every request needs the random token printed
on start (the first page load turns the URL's token into a same-site cookie, so thumbnails load);
requests that change something need it in the ``X-Facesets-Token`` header and must come from the
page itself (``Origin`` and ``Sec-Fetch-Site`` checked, JSON body), so another web page cannot
make the browser write decisions. Files: the package's own static files, files under the library
folder (``/lib/...``, resolved, never outside it), a face's crop by face key and, on request, the
source photo of a face the library holds. Nothing else on the disk is reachable.

The page shows the library as the decisions file says it will be (``decisions.apply`` over the
ledger), and what is pending until the next ``snakemake --profile wsl all``.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from facesets import decisions as D
from facesets import ledger as L

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}
COOKIE = "facesets_review"
TOKEN_HEADER = "X-Facesets-Token"
MAX_BODY = 1 << 20
CONFLICT_KINDS = ("label_conflict", "label_split")


class Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------- the library's state


@dataclass
class Snapshot:
    ledger: L.Ledger
    decisions: list[D.Decision]
    view: D.View
    error: str | None
    eras: dict[str, list[int]]  # parent name -> era identity numbers
    known: dict[str, L.Member]  # every face the library has seen (decisions.known_faces)


class Library:
    """The ledger + decisions file, re-read when either changes on disk (the ledger only when it does)."""

    def __init__(self, swap_ready: Path, decisions_path: Path):
        self.root = Path(swap_ready).resolve()
        self.decisions_path = Path(decisions_path).resolve()
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._snap: Snapshot | None = None
        self._ledger: tuple[tuple | None, L.Ledger] | None = None

    @staticmethod
    def _stat(p: Path) -> tuple | None:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def ledger(self) -> L.Ledger:
        """The ledger (never changed here: decisions.apply is pure), re-read when the file changed."""
        path = self.root / "ledger.json"
        stamp = self._stat(path)
        if self._ledger is None or self._ledger[0] != stamp:
            self._ledger = (stamp, L.load(path))
        return self._ledger[1]

    def snapshot(self) -> Snapshot:
        with self._lock:
            key = (self._stat(self.root / "ledger.json"), self._stat(self.decisions_path))
            if self._snap is None or key != self._key:
                self._snap, self._key = self._load(), key
            return self._snap

    def _load(self) -> Snapshot:
        ledger = self.ledger()
        error = None
        try:
            decisions = D.load(self.decisions_path)
            view = D.apply(ledger, decisions)
        except D.DecisionError as exc:
            error, decisions, view = str(exc), [], D.apply(ledger, [])
        eras: dict[str, list[int]] = {}
        for ident in view.identities.values():
            if ident.kind == "era" and ident.parent:
                eras.setdefault(ident.parent, []).append(ident.number)
        return Snapshot(ledger, decisions, view, error, eras, D.known_faces(ledger))

    def check(self, decisions: list[D.Decision]) -> None:
        """Refuse a decisions file that would not apply to the library (raises DecisionError)."""
        with self._lock:
            ledger = self.ledger()
        D.apply(ledger, decisions)


def _conflicts(ledger: L.Ledger) -> list[dict[str, Any]]:
    return [n for b in ledger.batches.values() for n in b.get("notes", []) if n.get("kind") in CONFLICT_KINDS]


def _eras_of(snap: Snapshot, ident: L.Identity) -> list[dict[str, Any]]:
    names = {
        ident.name,
        *ident.aliases,
        *(i.name for i in snap.ledger.identities if i.number == ident.number),
    }
    out = []
    for name in names:
        for n in snap.eras.get(name, []):
            e = snap.view.identities[n]
            out.append({"number": n, "name": e.name, "faces": len(e.members), "thin": e.thin})
    return sorted(out, key=lambda e: e["number"])


def summary(snap: Snapshot, ident: L.Identity) -> dict[str, Any]:
    ranked = sorted(ident.members.items(), key=lambda kv: (-kv[1].score, kv[0]))
    return {
        "number": ident.number,
        "name": ident.name,
        "kind": ident.kind,
        "label": ident.label,
        "parent": ident.parent,
        "sources": list(ident.sources),
        "faces": len(ident.members),
        "photos": len(ident.photos()),
        "hidden": ident.number in snap.view.hidden,
        "thin": ident.thin,
        "eras": _eras_of(snap, ident),
        "candidates": len(snap.view.candidates.get(ident.number, [])),
        "preview": [k for k, _ in ranked[:6]],
    }


def _page(args: Mapping[str, list[str]], default_per: int) -> tuple[int, int]:
    try:
        page = max(0, int(args.get("page", ["0"])[0]))
        per = min(500, max(1, int(args.get("per", [str(default_per)])[0])))
    except ValueError:
        raise Refused(HTTPStatus.BAD_REQUEST, "page and per must be whole numbers") from None
    return page, per


def identities_page(snap: Snapshot, args: Mapping[str, list[str]]) -> dict[str, Any]:
    q = args.get("q", [""])[0].strip().lower()
    which = args.get("filter", ["all"])[0]
    conflicted = {int(n["identity"]) for n in _conflicts(snap.ledger) if "identity" in n}
    rows = []
    for n in sorted(snap.view.identities):
        ident = snap.view.identities[n]
        if q.startswith("#"):  # "#12": that number only
            if q[1:] != str(n):
                continue
        elif q and not (q in ident.name.lower() or q == str(n) or any(q in a.lower() for a in ident.aliases)):
            continue
        if which == "hidden" and n not in snap.view.hidden:
            continue
        if which == "candidates" and not snap.view.candidates.get(n):
            continue
        if which == "conflicts" and n not in conflicted:
            continue
        if which == "thin" and not ident.thin:
            continue
        rows.append(ident)
    page, per = _page(args, 50)
    return {
        "total": len(rows),
        "page": page,
        "per": per,
        "items": [summary(snap, i) for i in rows[page * per : (page + 1) * per]],
    }


def identity_detail(snap: Snapshot, number: int, args: Mapping[str, list[str]]) -> dict[str, Any]:
    ident = snap.view.identities.get(number)
    if ident is None:
        where = snap.view.retired.get(number)
        msg = f"identity {number} was merged into {snap.view.resolve(number)}" if where else f"no identity {number}"
        raise Refused(HTTPStatus.NOT_FOUND, msg)
    page, per = _page(args, 100)
    ranked = sorted(ident.members.items(), key=lambda kv: (-kv[1].score, kv[0]))
    faces = [
        {"face_key": k, "score": m.score, "source": m.source, "path": m.path}
        for k, m in ranked[page * per : (page + 1) * per]
    ]
    known = snap.known
    return {
        **summary(snap, ident),
        "page": page,
        "per": per,
        "faces_total": len(ranked),
        "face_list": faces,
        "candidate_list": snap.view.candidates.get(number, []),
        "rejected": sorted(snap.view.rejected.get(number, set()) & set(known)),
        "conflicts": [n for n in _conflicts(snap.ledger) if n.get("identity") == number],
    }


def state(lib: Library, snap: Snapshot) -> dict[str, Any]:
    return {
        "library": str(lib.root),
        "decisions_file": str(lib.decisions_path),
        "error": snap.error,
        "decisions": [{**d.as_dict(), "index": i, "line": d.line} for i, d in enumerate(snap.decisions)],
        "pending": D.pending(snap.ledger, snap.decisions),
        "identities": len(snap.view.identities),
        "hidden": sorted(snap.view.hidden),
        "retired": [
            {"number": n, "name": snap.view.retired_names.get(n), "merged_into": snap.view.resolve(n)}
            for n in sorted(snap.view.retired)
        ],
        "conflicts": _conflicts(snap.ledger),
        "never_export": len(snap.view.never_export),
    }


# ---------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "facesets-review"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # -- responses
    def _send(self, status: int, body: bytes, ctype: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, int(status))

    def _file(self, path: Path, ctype: str | None = None) -> None:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise Refused(HTTPStatus.NOT_FOUND, f"not found: {path.name}") from None
        self._send(200, data, ctype or mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    # -- checks
    def _check_host(self) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.hosts:
            raise Refused(
                HTTPStatus.FORBIDDEN, f"refused: unexpected Host {host!r} (the page is served as {self.server.origin})"
            )

    def _token_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.server.token.encode())

    def _check_read(self, query: Mapping[str, list[str]]) -> bool:
        """True when the token came in the URL (then the page sets the cookie)."""
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        if self._token_ok(self.headers.get(TOKEN_HEADER)):
            return False
        if COOKIE in cookie and self._token_ok(cookie[COOKIE].value):
            return False
        if self._token_ok(query.get("token", [None])[0]):
            return True
        raise Refused(
            HTTPStatus.FORBIDDEN,
            "refused: missing or wrong token; open the URL that `facesets review` printed (it ends in ?token=...)",
        )

    def _check_write(self) -> Any:
        if not self._token_ok(self.headers.get(TOKEN_HEADER)):
            raise Refused(HTTPStatus.FORBIDDEN, f"refused: a change needs the token in the {TOKEN_HEADER} header")
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:
            raise Refused(HTTPStatus.FORBIDDEN, f"refused: cross-origin request from {origin!r}")
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Refused(HTTPStatus.FORBIDDEN, f"refused: cross-site request (Sec-Fetch-Site: {site})")
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "refused: changes are sent as application/json")
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "refused: request too large")
        try:
            return json.loads(self.rfile.read(n) or b"null")
        except json.JSONDecodeError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"refused: the request body is not JSON ({exc})") from None

    # -- dispatch
    def do_GET(self) -> None:
        self._handle(self._get)

    def do_HEAD(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _handle(self, fn: Any) -> None:
        try:
            self._check_host()
            fn()
        except Refused as exc:
            self._error(exc.status, str(exc))
        except D.DecisionError as exc:
            self._error(HTTPStatus.CONFLICT, str(exc))
        except (ValueError, OSError) as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

    def _get(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        from_url = self._check_read(query)
        path = unquote(url.path)
        lib = self.server.library
        if path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path in ("/", "/index.html"):
            extra = {}
            if from_url:
                extra["Set-Cookie"] = f"{COOKIE}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"
            body = (STATIC / "index.html").read_bytes()
            self._send(200, body, "text/html; charset=utf-8", extra)
        elif path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC_FILES:
                raise Refused(HTTPStatus.NOT_FOUND, f"not found: {name}")
            self._file(STATIC / name, STATIC_FILES[name] + "; charset=utf-8")
        elif path == "/api/state":
            self._json(state(lib, lib.snapshot()))
        elif path == "/api/identities":
            self._json(identities_page(lib.snapshot(), query))
        elif path.startswith("/api/identity/"):
            try:
                number = int(path.removeprefix("/api/identity/"))
            except ValueError:
                raise Refused(HTTPStatus.BAD_REQUEST, "an identity number is expected") from None
            self._json(identity_detail(lib.snapshot(), number, query))
        elif path.startswith("/face/"):
            self._file(self._face_crop(path.removeprefix("/face/").removesuffix(".png")), "image/png")
        elif path.startswith("/photo/"):
            self._file(self._photo(path.removeprefix("/photo/")))
        elif path.startswith("/lib/"):
            self._file(self._under_library(path.removeprefix("/lib/")))
        else:
            raise Refused(HTTPStatus.NOT_FOUND, f"not found: {path}")

    def _face_crop(self, key: str) -> Path:
        if not D.FACE_KEY.match(key):
            raise Refused(HTTPStatus.BAD_REQUEST, "refused: not a face key")
        kept = self.server.library.root / D.FACES_DIR / f"{key}.png"
        if kept.exists():
            return kept
        m = self.server.library.snapshot().known.get(key)
        if m is None:
            raise Refused(HTTPStatus.NOT_FOUND, f"no face {key} in the library")
        return self._under_library(m.crop)

    def _photo(self, key: str) -> Path:
        """The source photo of a face the library knows (the path its ledger records), nothing else."""
        if not D.FACE_KEY.match(key):
            raise Refused(HTTPStatus.BAD_REQUEST, "refused: not a face key")
        m = self.server.library.snapshot().known.get(key)
        if m is None or not m.path:
            raise Refused(HTTPStatus.NOT_FOUND, f"no photo recorded for face {key}")
        p = Path(m.path)
        if not p.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, f"the photo of face {key} is not at {m.path} any more")
        return p

    def _under_library(self, rel: str) -> Path:
        root = self.server.library.root
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or "\x00" in rel:
            raise Refused(HTTPStatus.FORBIDDEN, f"refused: {rel!r} is outside the library {root}")
        if not target.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, f"not found in the library: {rel}")
        return target

    def _post(self) -> None:
        url = urlsplit(self.path)
        body = self._check_write()
        lib = self.server.library
        if not isinstance(body, dict):
            raise Refused(HTTPStatus.BAD_REQUEST, "refused: a JSON object is expected")
        if url.path == "/api/decisions":
            entry = body.get("decision")
            if not isinstance(entry, dict):
                raise Refused(HTTPStatus.BAD_REQUEST, "refused: {'decision': {...}} is expected")
            D.append(lib.decisions_path, entry, lib.check)
        elif url.path == "/api/undo":
            index, expected = body.get("index"), body.get("decision")
            if not isinstance(index, int) or not isinstance(expected, dict):
                raise Refused(HTTPStatus.BAD_REQUEST, "refused: {'index': n, 'decision': {...}} is expected")
            D.remove(lib.decisions_path, index, expected, lib.check)
        else:
            raise Refused(HTTPStatus.NOT_FOUND, f"not found: {url.path}")
        self._json(state(lib, lib.snapshot()))


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, library: Library, port: int = 0, token: str | None = None, verbose: bool = False):
        super().__init__(("127.0.0.1", port), Handler)
        self.library = library
        self.token = token or secrets.token_urlsafe(24)
        self.verbose = verbose
        port = self.server_address[1]
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.origin = f"http://127.0.0.1:{port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.token}"


def serve(swap_ready: Path, decisions_path: Path, port: int = 0, verbose: bool = False) -> ReviewServer:
    """A review server (not yet serving: call ``serve_forever``)."""
    swap_ready = Path(swap_ready)
    if not (swap_ready / "ledger.json").exists():
        raise ValueError(f"{swap_ready}: no ledger.json; run the workflow first (snakemake --profile wsl all)")
    return ReviewServer(Library(swap_ready, decisions_path), port=port, verbose=verbose)
