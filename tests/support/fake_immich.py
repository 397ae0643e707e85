"""A local Immich for tests and benchmarks: a real HTTP server that implements the endpoints
the stage step uses, straight from Immich's OpenAPI spec.

* Every request is checked against the spec (path, method, query parameters, JSON body,
  the api_key security scheme) and every JSON response the fake sends is checked against the
  spec's response schema. Objects are validated strictly (no property the spec does not
  name), so a client that sends a key the server would silently drop, or a fake that serves
  a field the client then relies on, both fail: ``server.violations`` collects the problems
  and the request gets a 400.
* The photos are real files (the demo set, dev-faces); face boxes come from a real detector
  (YuNet through ``facesets.analyzers.opencv``) run on a preview-sized copy, and are served in
  that preview's pixel space with its ``imageWidth`` x ``imageHeight``, like Immich.
* Users have separate API keys (and permission sets); an asset is visible to its owner and
  to partners who share their timeline.
* Faults: status bursts (5xx), 429 with Retry-After, slow answers (client timeouts), truncated
  bodies, corrupted downloads (checksum mismatch), a permanently wrong checksum, per-request
  latency, and an outage that starts after N requests and lasts D seconds (connections
  dropped, or 503), during which the ping probe fails too.
* ``version="3"`` serves v3.1 shapes; ``version="2.7"`` serves the v2.7 differences
  (``duration`` as "H:MM:SS.fffff", ``people`` with faces, ``unassignedFaces``, no
  ``prerelease`` in the version), validated against the v3.1 schemas patched with exactly
  those differences. ``version="3.2"`` adds the search API of immich PR #30179 (a ``filter``
  tree and an opaque ``cursor``, answered with ``assets.nextCursor``; the flat fields still
  work, deprecated); ``version="4"`` has only the filter tree (a flat field is a violation).
  ``GET /api/server/version`` answers the version.
* External libraries: an asset with ``library`` set has a ``libraryId`` and Immich's path
  checksum (base64 SHA-1 of ``"path:" + originalPath``), not one of its bytes.
* Late faces: ``faces_late`` assets answer ``/faces`` with [] until ``detect_late()`` runs
  Immich's face detection on them (which also moves their ``updatedAt``).
* Mid-listing changes: ``on_search(n, fn)`` calls ``fn(server)`` right after the n-th search
  request (e.g. ``remove()`` an asset an earlier page held: offset paging then skips one).
* ``Fault(kind="echo_key")`` answers 400 with an error message that quotes the request's key.

Importable by the benchmark: ``from tests.support.fake_immich import FakeImmich, build_library``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO.parent / "shared" / "reference" / "immich-openapi-v3.1.0.json"
SPEC_COPY = Path(__file__).resolve().parent / "data" / "immich-openapi-v3.1.0.json"
ALL_PERMISSIONS = frozenset({"all"})
IMPLEMENTED = {
    ("GET", "/server/ping"),
    ("GET", "/server/version"),
    ("POST", "/search/metadata"),
    ("GET", "/faces"),
    ("GET", "/assets/{id}/original"),
}
_SKIP_KEYS = {"example", "nullable", "discriminator", "xml", "externalDocs", "deprecated", "readOnly", "writeOnly"}


def spec_path() -> Path:
    """The OpenAPI spec: ../shared/reference, else the copy under tests/data."""
    for p in (SPEC_PATH, SPEC_COPY):
        if p.exists():
            return p
    raise FileNotFoundError(f"Immich OpenAPI spec not found at {SPEC_PATH} or {SPEC_COPY}")


# -- OpenAPI 3.0 -> JSON Schema 2020-12 ------------------------------------------------------


def to_json_schema(node: Any, strict: bool = True) -> Any:
    """Convert an OpenAPI 3.0 schema node: ``nullable``, ``$ref`` to ``$defs``, strict objects."""
    if isinstance(node, list):
        return [to_json_schema(x, strict) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k.startswith("x-") or k in _SKIP_KEYS:
            continue
        if k == "$ref":
            out[k] = v.replace("#/components/schemas/", "#/$defs/")
        elif k == "properties":
            out[k] = {pk: to_json_schema(pv, strict) for pk, pv in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = to_json_schema(v, strict)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [to_json_schema(x, strict) for x in v]
        else:
            out[k] = copy.deepcopy(v)
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out and "$ref" not in out and "allOf" not in out:
            t = out["type"]
            out["type"] = [t, "null"] if isinstance(t, str) else [*t, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def v27_patch(defs: dict[str, Any]) -> dict[str, Any]:
    """The v3.1 schemas as v2.7 served them (immich-notes.md: the documented differences)."""
    defs = copy.deepcopy(defs)
    face_wo_person = {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "boundingBoxX1",
            "boundingBoxX2",
            "boundingBoxY1",
            "boundingBoxY2",
            "id",
            "imageHeight",
            "imageWidth",
        ],
        "properties": {
            **{k: {"type": "integer"} for k in ("boundingBoxX1", "boundingBoxX2", "boundingBoxY1", "boundingBoxY2")},
            "id": {"type": "string", "format": "uuid"},
            "imageHeight": {"type": "integer", "minimum": 0},
            "imageWidth": {"type": "integer", "minimum": 0},
            "sourceType": {"$ref": "#/$defs/SourceType"},
        },
    }
    person = copy.deepcopy(defs["PersonResponseDto"])
    person["properties"]["faces"] = {"type": "array", "items": {"$ref": "#/$defs/AssetFaceWithoutPersonResponseDto"}}
    person["required"] = [*person["required"], "faces"]
    defs["AssetFaceWithoutPersonResponseDto"] = face_wo_person
    defs["PersonWithFacesResponseDto"] = person
    a = defs["AssetResponseDto"]
    a["properties"]["duration"] = {"type": "string", "pattern": r"^\d+:\d\d:\d\d\.\d+$"}
    a["properties"]["people"] = {"type": "array", "items": {"$ref": "#/$defs/PersonWithFacesResponseDto"}}
    a["properties"]["unassignedFaces"] = {
        "type": "array",
        "items": {"$ref": "#/$defs/AssetFaceWithoutPersonResponseDto"},
    }
    return defs


def _enum_filter(values: list[str]) -> dict[str, Any]:
    one = {"type": "string", "enum": values}
    return {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "eq": one,
            "ne": one,
            "in": {"type": "array", "items": one},
            "notIn": {"type": "array", "items": one},
        },
    }


def v32_patch(defs: dict[str, Any], drop_flat: bool = False) -> dict[str, Any]:
    """The v3.1 schemas with the v3.2 search API (immich PR #30179, server/src/dtos/search.dto.ts):
    ``filter`` (SearchFilter: branches of per-field filters, ``or`` of branches) and ``cursor`` in
    the request, ``nextCursor`` in the answer. Only the branch fields this project could use are
    modelled; ``drop_flat`` (v4) removes the deprecated flat fields."""
    defs = copy.deepcopy(defs)
    bool_filter = {
        "type": "object",
        "additionalProperties": False,
        "required": ["eq"],
        "properties": {"eq": {"type": "boolean"}},
    }
    id_nullable = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {"eq": {"type": ["string", "null"]}, "ne": {"type": ["string", "null"]}},
    }
    date_filter = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {k: {"type": "string", "format": "date-time"} for k in ("eq", "ne", "gt", "gte", "lt", "lte")},
    }
    branch = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": _enum_filter(["IMAGE", "VIDEO", "AUDIO", "OTHER"]),
            "visibility": _enum_filter(["archive", "timeline", "hidden", "locked"]),
            "libraryId": id_nullable,
            "isOffline": bool_filter,
            "isFavorite": bool_filter,
            "updatedAt": date_filter,
            "createdAt": date_filter,
        },
    }
    defs["SearchFilterBranch"] = branch
    tree = copy.deepcopy(branch)
    tree["properties"]["or"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/SearchFilterBranch"}}
    defs["SearchFilter"] = tree
    m = defs["MetadataSearchDto"]
    if drop_flat:
        keep = {"size", "withExif", "withDeleted", "withStacked", "withPeople", "order"}
        m["properties"] = {k: v for k, v in m["properties"].items() if k in keep}
    m["properties"]["filter"] = {"$ref": "#/$defs/SearchFilter"}
    m["properties"]["cursor"] = {"type": "string", "minLength": 1}
    r = defs["SearchAssetResponseDto"]
    r["properties"]["nextCursor"] = {"type": ["string", "null"]}
    r["required"] = [*r["required"], "nextCursor"]
    return defs


def v2_version_patch(defs: dict[str, Any]) -> dict[str, Any]:
    """v2.x had no ``prerelease`` in ServerVersionResponseDto (added in v3.0.0)."""
    defs = copy.deepcopy(defs)
    v = defs["ServerVersionResponseDto"]
    v["properties"].pop("prerelease", None)
    v["required"] = [k for k in v["required"] if k != "prerelease"]
    return defs


def version_tuple(version: str) -> tuple[int, int, int]:
    """"3" means v3.1.0 (the spec at hand); "2.7" v2.7.0; "3.2" v3.2.0; "4" v4.0.0."""
    if version == "3":
        return (3, 1, 0)
    parts = [int(p) for p in version.split(".")] + [0, 0]
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # without the /api server prefix
    regex: re.Pattern[str]
    params: tuple[dict[str, Any], ...]
    body_schema: Any | None
    body_required: bool
    responses: dict[str, Any]
    secured: bool
    permission: str | None


class SpecValidator:
    """Request and response checks for one spec (and one response-shape version)."""

    def __init__(self, version: str = "3", strict: bool = True) -> None:
        spec = json.loads(spec_path().read_text(encoding="utf-8"))
        self.server_prefix = spec["servers"][0]["url"].rstrip("/")  # "/api"
        defs = {k: to_json_schema(v, strict) for k, v in spec["components"]["schemas"].items()}
        if version.startswith("2"):
            defs = v2_version_patch(v27_patch(defs))
        elif version_tuple(version) >= (3, 2, 0):
            defs = v32_patch(defs, drop_flat=version_tuple(version) >= (4, 0, 0))
        self.defs = defs
        self.operations: list[Operation] = []
        for template, item in spec["paths"].items():
            pattern = "^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            for method, op in item.items():
                if method not in ("get", "post", "put", "delete", "patch"):
                    continue
                body = op.get("requestBody") or {}
                body_schema = (body.get("content") or {}).get("application/json", {}).get("schema")
                self.operations.append(
                    Operation(
                        method=method.upper(),
                        template=template,
                        regex=re.compile(pattern),
                        params=tuple(op.get("parameters", [])),
                        body_schema=to_json_schema(body_schema, strict) if body_schema else None,
                        body_required=bool(body.get("required")),
                        responses=op.get("responses", {}),
                        secured=bool(op.get("security")),
                        permission=op.get("x-immich-permission"),
                    )
                )
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def _validator(self, key: str, schema: Any) -> jsonschema.Draft202012Validator:
        if key not in self._validators:
            root = {**schema, "$defs": self.defs} if isinstance(schema, dict) else {"$defs": self.defs}
            self._validators[key] = jsonschema.Draft202012Validator(
                root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
        return self._validators[key]

    def errors(self, key: str, schema: Any, instance: Any) -> list[str]:
        v = self._validator(key, schema)
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
            for e in sorted(v.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
        ]

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """(operation, path params, path exists with another method)."""
        if not path.startswith(self.server_prefix + "/"):
            return None, {}, False
        rel = path[len(self.server_prefix) :]
        other = False
        # literal templates win over parameterised ones (as routers do)
        for op in sorted(self.operations, key=lambda o: o.template.count("{")):
            m = op.regex.match(rel)
            if m:
                if op.method == method:
                    return op, m.groupdict(), False
                other = True
        return None, {}, other

    def check_request(
        self,
        op: Operation,
        path_params: dict[str, str],
        query: dict[str, list[str]],
        content_type: str,
        body: bytes,
    ) -> list[str]:
        problems = []
        declared = {p["name"]: p for p in op.params}
        for name, values in query.items():
            p = declared.get(name)
            if p is None or p.get("in") != "query":
                problems.append(f"query parameter {name!r} is not in the spec")
                continue
            if len(values) != 1:
                problems.append(f"query parameter {name!r} given {len(values)} times")
                continue
            problems += [f"query {name}: {e}" for e in self._param_errors(op, p, values[0])]
        for name, p in declared.items():
            if p.get("in") == "query" and p.get("required") and name not in query:
                problems.append(f"required query parameter {name!r} missing")
            if p.get("in") == "path":
                problems += [f"path {name}: {e}" for e in self._param_errors(op, p, path_params.get(name, ""))]
        if op.body_schema is None:
            if body:
                problems.append("a request body where the spec defines none")
        else:
            if not body:
                if op.body_required:
                    problems.append("request body required")
            elif not content_type.startswith("application/json"):
                problems.append(f"request body content type {content_type!r}, spec says application/json")
            else:
                try:
                    obj = json.loads(body)
                except ValueError:
                    problems.append("request body is not JSON")
                else:
                    key = f"req:{op.method}:{op.template}"
                    problems += [f"body {e}" for e in self.errors(key, op.body_schema, obj)]
        return problems

    def _param_errors(self, op: Operation, p: dict[str, Any], raw: str) -> list[str]:
        schema = to_json_schema(p.get("schema", {}))
        t = schema.get("type")
        value: Any = raw
        if t == "boolean":
            if raw not in ("true", "false"):
                return [f"{raw!r} is not a boolean"]
            value = raw == "true"
        elif t == "integer":
            try:
                value = int(raw)
            except ValueError:
                return [f"{raw!r} is not an integer"]
        return self.errors(f"param:{op.method}:{op.template}:{p['name']}", schema, value)

    def check_response(self, op: Operation, status: int, body: Any) -> list[str]:
        resp = op.responses.get(str(status))
        if resp is None:
            return [f"status {status} is not a documented response"]
        content = resp.get("content") or {}
        if "application/json" not in content:
            return []
        schema = to_json_schema(content["application/json"]["schema"])
        return self.errors(f"resp:{op.method}:{op.template}:{status}", schema, body)


# -- the library ----------------------------------------------------------------------------


def stable_uuid(*parts: str) -> str:
    """A deterministic UUID of version 4 (Immich validates ids with a v4 pattern)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).digest()[:16]
    return str(uuid.UUID(bytes=digest, version=4))


@dataclass
class FakeUser:
    name: str
    key: str
    permissions: frozenset[str] = ALL_PERMISSIONS
    sees_partners: tuple[str, ...] = ()  # names of users whose timeline this user sees

    @property
    def id(self) -> str:
        return stable_uuid("user", self.name)

    def may(self, permission: str | None) -> bool:
        return permission is None or "all" in self.permissions or permission in self.permissions


@dataclass
class FakeAsset:
    id: str
    owner: str  # user name
    data: bytes
    original_path: str
    type: str = "IMAGE"
    visibility: str = "timeline"
    width: int | None = None  # oriented
    height: int | None = None
    preview: tuple[int, int] = (0, 0)
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)
    is_trashed: bool = False
    is_offline: bool = False
    checksum_override: str | None = None  # a permanently wrong checksum
    created: str = "2024-01-01T00:00:00.000Z"
    mime: str = "image/jpeg"
    library: str | None = None  # external library name: libraryId set, path checksum
    faces_late: bool = False  # Immich's face detection has not run on it yet
    updated: str | None = None  # updatedAt (default: created)

    @property
    def library_id(self) -> str | None:
        return stable_uuid("library", self.library) if self.library else None

    @property
    def checksum(self) -> str:
        if self.checksum_override:
            return self.checksum_override
        if self.library:  # Immich's library service: sha1 of "path:" + originalPath
            return base64.b64encode(hashlib.sha1(("path:" + self.original_path).encode()).digest()).decode()
        return base64.b64encode(hashlib.sha1(self.data).digest()).decode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Detected:
    width: int  # oriented original
    height: int
    preview: tuple[int, int]
    faces: tuple[tuple[int, int, int, int], ...]  # preview pixels


def preview_size(width: int, height: int, preview_long: int) -> tuple[int, int]:
    """Immich's preview: the long side brought down to ``preview_long``, never enlarged."""
    long = max(width, height)
    if long <= preview_long:
        return width, height
    r = preview_long / long
    return max(1, round(width * r)), max(1, round(height * r))


def detect_in_preview(data: bytes, analyzer: Any, preview_long: int) -> Detected:
    """Faces found by a real detector on the preview-sized, oriented image."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        pw, ph = preview_size(w, h, preview_long)
        small = im.resize((pw, ph), Image.Resampling.BILINEAR) if (pw, ph) != (w, h) else im
        rgb = np.asarray(small)
    faces = []
    for d in analyzer.detect(rgb):
        x1, y1, x2, y2 = (round(float(v)) for v in d.bbox)
        faces.append((x1, y1, x2, y2))
    return Detected(w, h, (pw, ph), tuple(sorted(faces)))


class DetectionCache:
    """Detections per (sha256, model, preview size), kept in one JSON file between runs."""

    def __init__(self, path: Path | None, analyzer: Any, preview_long: int) -> None:
        self.path = path
        self.analyzer = analyzer
        self.preview_long = preview_long
        self.tag = f"{getattr(analyzer, 'model_id', 'detector')}:{preview_long}"
        self.data: dict[str, Any] = {}
        if path and path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.data = {}
        self.dirty = False

    def get(self, data: bytes) -> Detected:
        key = f"{self.tag}:{hashlib.sha256(data).hexdigest()}"
        if key not in self.data:
            d = detect_in_preview(data, self.analyzer, self.preview_long)
            self.data[key] = [d.width, d.height, list(d.preview), [list(f) for f in d.faces]]
            self.dirty = True
        w, h, p, faces = self.data[key]
        return Detected(w, h, (p[0], p[1]), tuple(tuple(f) for f in faces))

    def save(self) -> None:
        if self.path and self.dirty:
            from facesets.atomic import write_text

            write_text(self.path, json.dumps(self.data, sort_keys=True))
            self.dirty = False


@dataclass(frozen=True)
class PhotoSpec:
    """One asset to serve: a real photo file (or bytes) under a server path."""

    file: Path | None
    original_path: str
    owner: str
    visibility: str = "timeline"
    type: str = "IMAGE"
    data: bytes | None = None
    known_size: bool = True  # False: width/height null (the stage step must measure)
    is_trashed: bool = False
    is_offline: bool = False
    checksum_override: str | None = None
    library: str | None = None
    faces_late: bool = False


def build_assets(specs: Iterable[PhotoSpec], cache: DetectionCache) -> list[FakeAsset]:
    out = []
    for i, s in enumerate(specs):
        data = s.data if s.data is not None else s.file.read_bytes()  # type: ignore[union-attr]
        aid = stable_uuid("asset", s.owner, s.original_path, str(i))
        if s.type != "IMAGE":
            out.append(
                FakeAsset(aid, s.owner, data, s.original_path, type=s.type, visibility=s.visibility, mime="video/mp4")
            )
            continue
        d = cache.get(data)
        out.append(
            FakeAsset(
                aid,
                s.owner,
                data,
                s.original_path,
                visibility=s.visibility,
                width=d.width if s.known_size else None,
                height=d.height if s.known_size else None,
                preview=d.preview,
                faces=list(d.faces),
                is_trashed=s.is_trashed,
                is_offline=s.is_offline,
                checksum_override=s.checksum_override,
                library=s.library,
                faces_late=s.faces_late,
                created=f"20{10 + i % 14:02d}-0{1 + i % 9}-1{i % 10}T12:00:00.000Z",
                mime="image/png" if s.original_path.lower().endswith(".png") else "image/jpeg",
            )
        )
    cache.save()
    return out


# -- faults ---------------------------------------------------------------------------------


@dataclass
class Fault:
    """Affects ``count`` requests whose path contains ``path`` (after skipping ``after``)."""

    kind: str  # status | rate_limit | slow | truncate | corrupt | drop | echo_key
    count: int = 1
    path: str = ""
    after: int = 0
    status: int = 503
    retry_after: str = "1"
    delay_s: float = 2.0
    seen: int = 0
    fired: int = 0
    fired_on: list[str] = field(default_factory=list)  # the request paths it affected


@dataclass
class Outage:
    after_requests: int
    duration_s: float
    mode: str = "drop"  # drop (connections closed) | 503
    started: float | None = None

    def active(self, n_requests: int, now: float) -> bool:
        if self.started is None and n_requests > self.after_requests:
            self.started = now
        return self.started is not None and now < self.started + self.duration_s


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    user: str | None
    t: float


# -- the server ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.app.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.app.handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.app.handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.app.handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    app: FakeImmich


class FakeImmich:
    """``with FakeImmich(assets, users) as srv: ... srv.url ...``; see the module doc."""

    def __init__(
        self,
        assets: Sequence[FakeAsset],
        users: Sequence[FakeUser],
        version: str = "3",
        latency_s: float = 0.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.assets = list(assets)
        self.by_id = {a.id: a for a in self.assets}
        self.users = {u.name: u for u in users}
        self.by_key = {u.key: u for u in users}
        self.version = version
        self.latency_s = latency_s
        self.tls = tls
        self.validator = SpecValidator(version)
        self.violations: list[str] = []
        self.log: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.outage: Outage | None = None
        self.search_hooks: dict[int, Any] = {}
        self.searches = 0
        self._lock = threading.Lock()
        self._n = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> FakeImmich:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        if self.tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeImmich:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{host}:{self._httpd.server_address[1]}"

    # control
    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def schedule_outage(self, after_requests: int, duration_s: float, mode: str = "drop") -> Outage:
        with self._lock:
            self.outage = Outage(after_requests, duration_s, mode)
        return self.outage

    def on_search(self, n: int, fn: Any) -> None:
        """Call ``fn(self)`` right after the ``n``-th search request has been answered from the
        library (a change in the middle of a listing)."""
        self.search_hooks[n] = fn

    def remove(self, asset_id: str) -> FakeAsset:
        """The asset is deleted from the server (search no longer lists it)."""
        with self._lock:
            a = self.by_id.pop(asset_id)
            self.assets = [x for x in self.assets if x.id != asset_id]
        return a

    def detect_late(self, asset_ids: Iterable[str] | None = None, when: str = "2026-11-30T12:00:00.000Z") -> int:
        """Immich's face detection job catches up: the assets' faces appear, updatedAt moves."""
        n = 0
        with self._lock:
            for a in self.assets:
                if a.faces_late and (asset_ids is None or a.id in set(asset_ids)):
                    a.faces_late, a.updated, n = False, when, n + 1
        return n

    def end_outage(self) -> None:
        with self._lock:
            self.outage = None

    def requests_to(self, fragment: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.log if fragment in r.path]

    def downloads(self) -> dict[str, int]:
        """Asset id -> number of completed original downloads (status 200)."""
        out: dict[str, int] = {}
        for r in self.requests_to("/original"):
            if r.status == 200:
                aid = r.path.split("/")[3]
                out[aid] = out.get(aid, 0) + 1
        return out

    # request handling
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.path in path and f.fired < f.count:
                    f.seen += 1
                    if f.seen > f.after:
                        f.fired += 1
                        f.fired_on.append(path)
                        return f
        return None

    def handle(self, h: _Handler, method: str) -> None:
        t = time.monotonic()
        parts = urlsplit(h.path)
        path = parts.path
        target = h.path  # recorded with its query string
        with self._lock:
            self._n += 1
            n = self._n
            outage = self.outage.active(n, t) if self.outage else False
            mode = self.outage.mode if self.outage else ""
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if self.latency_s:
            time.sleep(self.latency_s)
        if outage:
            self._record(method, target, 0 if mode == "drop" else 503, None, t)
            if mode == "drop":
                return self._drop(h)
            return self._send_json(h, 503, {"message": "Service Unavailable"})
        op, path_params, other_method = self.validator.match(method, path)
        if op is None:
            msg = f"{method} {path}: " + ("method not in the spec" if other_method else "path not in the spec")
            self._violation(msg)
            self._record(method, target, 404, None, t)
            return self._send_json(h, 404, {"message": msg})
        if (op.method, op.template) not in IMPLEMENTED:
            self._violation(f"{method} /api{op.template}: outside the endpoints the stage step may use")
            self._record(method, target, 501, None, t)
            return self._send_json(h, 501, {"message": "not implemented by the fake"})
        query = parse_qs(parts.query, keep_blank_values=True)
        problems = self.validator.check_request(op, path_params, query, h.headers.get("Content-Type", ""), body)
        if problems:
            for p in problems:
                self._violation(f"{method} {path}: {p}")
            self._record(method, target, 400, None, t)
            return self._send_json(h, 400, {"message": problems, "error": "Bad Request", "statusCode": 400})
        fault = self._take_fault(path)
        if fault and fault.kind == "echo_key":  # a server (or proxy) quoting the request's key
            self._record(method, target, 400, None, t)
            key = h.headers.get("x-api-key", "")
            return self._send_json(
                h, 400, {"message": f"Invalid request for key {key}", "error": "Bad Request", "statusCode": 400}
            )
        if fault and fault.kind in ("status", "rate_limit", "slow", "drop"):
            self._record(method, target, {"status": fault.status, "rate_limit": 429}.get(fault.kind, 0), None, t)
            if fault.kind == "status":
                return self._send_json(h, fault.status, {"message": "injected failure"})
            if fault.kind == "rate_limit":
                return self._send_json(h, 429, {"message": "Too Many Requests"}, {"Retry-After": fault.retry_after})
            if fault.kind == "drop":
                return self._drop(h)
            time.sleep(fault.delay_s)  # slow: the client has given up by now
        user = None
        if op.secured:
            user = self.by_key.get(h.headers.get("x-api-key", ""))
            if user is None:
                self._record(method, target, 401, None, t)
                return self._send_json(
                    h, 401, {"message": "Invalid API key", "error": "Unauthorized", "statusCode": 401}
                )
            if not user.may(op.permission):
                self._record(method, target, 403, user.name, t)
                return self._send_json(
                    h,
                    403,
                    {
                        "message": f"Missing required permission: {op.permission}",
                        "error": "Forbidden",
                        "statusCode": 403,
                    },
                )
        elif h.headers.get("x-api-key"):
            pass  # harmless, but the client is expected not to send it to ping
        status, payload, ctype = self._dispatch(op, path_params, query, body, user)
        if isinstance(payload, bytes):
            if fault and fault.kind == "corrupt" and payload:
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            self._record(method, target, status, user.name if user else None, t)
            return self._send_bytes(h, status, payload, ctype, truncate=bool(fault and fault.kind == "truncate"))
        if status == 200:
            for p in self.validator.check_response(op, status, payload):
                self._violation(f"response {method} {path}: {p}")
        self._record(method, target, status, user.name if user else None, t)
        return self._send_json(h, status, payload, truncate=bool(fault and fault.kind == "truncate"))

    def _violation(self, msg: str) -> None:
        with self._lock:
            self.violations.append(msg)

    def _record(self, method: str, path: str, status: int, user: str | None, t: float) -> None:
        with self._lock:
            self.log.append(RequestRecord(method, path, status, user, t))

    # endpoints
    def _visible(self, user: FakeUser, a: FakeAsset) -> bool:
        return a.owner == user.name or (a.owner in user.sees_partners and a.visibility == "timeline")

    def _dispatch(
        self, op: Operation, pp: dict[str, str], query: dict[str, list[str]], body: bytes, user: FakeUser | None
    ) -> tuple[int, Any, str]:
        key = (op.method, op.template)
        if key == ("GET", "/server/ping"):
            return 200, {"res": "pong"}, "application/json"
        if key == ("GET", "/server/version"):
            major, minor, patch = version_tuple(self.version)
            body = {"major": major, "minor": minor, "patch": patch}
            if major >= 3:
                body["prerelease"] = None
            return 200, body, "application/json"
        assert user is not None
        if key == ("POST", "/search/metadata"):
            with self._lock:
                self.searches += 1
                n = self.searches
            answer = self._search(user, json.loads(body))
            hook = self.search_hooks.pop(n, None)
            if hook:
                hook(self)
            return 200, answer, "application/json"
        if key == ("GET", "/faces"):
            a = self.by_id.get(query["id"][0])
            if a is None or not self._visible(user, a):
                return (
                    400,
                    {"message": "Not found or no face.read access", "error": "Bad Request", "statusCode": 400},
                    "application/json",
                )
            if a.faces_late:
                return 200, [], "application/json"
            return 200, [self._face_dto(a, i, f) for i, f in enumerate(a.faces)], "application/json"
        if key == ("GET", "/assets/{id}/original"):
            a = self.by_id.get(pp["id"])
            if a is None or not self._visible(user, a) or a.is_offline:
                return (
                    400,
                    {"message": "Not found or no asset.download access", "error": "Bad Request", "statusCode": 400},
                    "application/json",
                )
            return 200, a.data, "application/octet-stream"
        raise AssertionError(key)

    def _search(self, user: FakeUser, q: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            items = [a for a in self.assets if self._visible(user, a)]
        f = q.get("filter") or {}
        want_type = q.get("type") or (f.get("type") or {}).get("eq")
        want_vis = q.get("visibility") or (f.get("visibility") or {}).get("eq")
        if want_type:
            items = [a for a in items if a.type == want_type]
        if want_vis:
            items = [a for a in items if a.visibility == want_vis]
        elif self.version.startswith("3") or self.version.startswith("4"):
            items = [a for a in items if a.visibility != "locked"]
        else:
            items = [a for a in items if a.visibility == "timeline"]
        if not q.get("withDeleted"):
            items = [a for a in items if not a.is_trashed]
        desc = q.get("order", "desc") == "desc"
        items.sort(key=lambda a: (a.created, a.id), reverse=desc)
        size = int(q.get("size", 250))
        cursor_api = "filter" in q or "cursor" in q
        if cursor_api:  # keyset paging: the cursor is the sort key of the last item served
            if "cursor" in q:
                last = tuple(json.loads(base64.urlsafe_b64decode(q["cursor"].encode())))
                items = [a for a in items if ((a.created, a.id) < last if desc else (a.created, a.id) > last)]
            chunk = items[:size]
            more = len(items) > size
            nxt = None
            nxt_cursor = (
                base64.urlsafe_b64encode(json.dumps([chunk[-1].created, chunk[-1].id]).encode()).decode()
                if more
                else None
            )
        else:
            page = int(q.get("page", 1))
            chunk = items[(page - 1) * size : page * size]
            nxt = str(page + 1) if page * size < len(items) else None
        block: dict[str, Any] = {
            "count": len(chunk),
            "facets": [],
            "items": [self._asset_dto(a, bool(q.get("withExif"))) for a in chunk],
            "nextPage": nxt,
            "total": len(chunk),  # Immich reports the page's count here
        }
        if version_tuple(self.version) >= (3, 2, 0):
            block["nextCursor"] = nxt_cursor if cursor_api else None
        return {"albums": {"count": 0, "facets": [], "items": [], "total": 0}, "assets": block}

    def _asset_dto(self, a: FakeAsset, with_exif: bool) -> dict[str, Any]:
        name = a.original_path.replace("\\", "/").rsplit("/", 1)[-1] or "asset"
        dto: dict[str, Any] = {
            "id": a.id,
            "ownerId": self.users[a.owner].id,
            "originalPath": a.original_path,
            "originalFileName": name,
            "originalMimeType": a.mime,
            "checksum": a.checksum,
            "type": a.type,
            "createdAt": a.created,
            "fileCreatedAt": a.created,
            "fileModifiedAt": a.created,
            "localDateTime": a.created,
            "updatedAt": a.updated or a.created,
            "libraryId": a.library_id,
            "duration": None if a.type == "IMAGE" else 3000,
            "hasMetadata": True,
            "width": a.width,
            "height": a.height,
            "isArchived": a.visibility == "archive",
            "isEdited": False,
            "isFavorite": False,
            "isOffline": a.is_offline,
            "isTrashed": a.is_trashed,
            "thumbhash": None,
            "visibility": a.visibility,
            "livePhotoVideoId": None,
            "duplicateId": None,
        }
        if with_exif:
            dto["exifInfo"] = {"exifImageWidth": a.width, "exifImageHeight": a.height, "orientation": "1"}
        if self.version.startswith("2"):
            dto["duration"] = "0:00:00.00000" if a.type == "IMAGE" else "0:00:03.00000"
            people: dict[str, dict[str, Any]] = {}
            unassigned = []
            for i, f in enumerate(a.faces):
                face = self._face_dto(a, i, f)
                person = face.pop("person")
                if person is None:
                    unassigned.append(face)
                else:
                    people.setdefault(person["id"], {**person, "faces": []})["faces"].append(face)
            dto["people"] = list(people.values())
            dto["unassignedFaces"] = unassigned
        return dto

    def _face_dto(self, a: FakeAsset, i: int, f: tuple[int, int, int, int]) -> dict[str, Any]:
        person = None
        if i % 2 == 0:  # some faces are named people, others unassigned
            pid = stable_uuid("person", a.owner, str(i))
            person = {
                "birthDate": None,
                "id": pid,
                "isHidden": False,
                "name": f"person {i}",
                "thumbnailPath": f"/data/thumbs/{pid}.jpeg",
            }
        return {
            "id": stable_uuid("face", a.id, str(i)),
            "boundingBoxX1": f[0],
            "boundingBoxY1": f[1],
            "boundingBoxX2": f[2],
            "boundingBoxY2": f[3],
            "imageWidth": a.preview[0],
            "imageHeight": a.preview[1],
            "person": person,
            "sourceType": "machine-learning",
        }

    # wire
    def _send_json(
        self, h: _Handler, status: int, obj: Any, headers: dict[str, str] | None = None, truncate: bool = False
    ) -> None:
        self._send_bytes(h, status, json.dumps(obj).encode(), "application/json; charset=utf-8", headers, truncate)

    def _send_bytes(
        self,
        h: _Handler,
        status: int,
        data: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
        truncate: bool = False,
    ) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            if truncate:
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ssl_errors()):
            h.close_connection = True

    def _drop(self, h: _Handler) -> None:
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)


@lru_cache(maxsize=1)
def ssl_errors() -> type[BaseException]:
    import ssl

    return ssl.SSLError


# -- ready-made libraries ---------------------------------------------------------------------

HOSTILE_PATHS = (
    "../../../../../../tmp/facesets-escape-1.jpg",
    "/../../etc/facesets-escape-2.jpg",
    "C:\\Users\\mallory\\..\\..\\..\\Windows\\facesets-escape-3.jpg",
    "D:facesets-escape-4.jpg",
    "\\\\evil-server\\share\\..\\..\\facesets-escape-5.jpg",
    "//?/C:/facesets-escape-6.jpg",
    "photos/nul\x00byte/../../facesets-escape-7.jpg",
    "photos/" + "x" * 400 + ".jpg",
    "/" + "/".join(["deep"] * 300) + "/facesets-escape-8.jpg",
    "photos/CON.jpg",
    "photos/aux/trailing dots... /file .jpg. ",
    'photos/ctrl\x01\x1f<>:"|?*.jpg',
    "..",
    "",
    "photos/.hidden/.tmp-x.part",
    "photos/Case.JPG",
    "photos/case.jpg",
)


def photo_files(demo_photos: Path | None, dev_faces: Path | None, limit: int | None = None) -> list[Path]:
    files: list[Path] = []
    if demo_photos and demo_photos.exists():
        files += sorted(p for p in demo_photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if dev_faces and dev_faces.exists():
        files += sorted(p for p in dev_faces.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[:limit] if limit else files


def rotated_copy(path: Path, orientation: int = 6) -> bytes:
    """The photo stored turned by a quarter and tagged with an EXIF orientation that undoes it."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        stored = im.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates it back (270° = -90°)
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        stored.save(buf, "JPEG", quality=92, exif=exif.tobytes())
        return buf.getvalue()


def thumbnail_bytes(path: Path, long: int = 250) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((long, long))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return buf.getvalue()


def standard_specs(files: Sequence[Path], hostile: bool = True, extras: bool = True) -> list[PhotoSpec]:
    """Two users (alice sees bob's timeline as a partner); every kind of asset the stage meets.

    The first half of ``files`` belongs to alice under an upload-style path, the rest to bob
    under an external-library path; then hostile paths, a byte-identical copy under another
    path, Immich thumbnails indexed as photos, a rotated photo with EXIF orientation, an asset
    whose size the server does not know, archived/locked/hidden/trashed/offline assets, a
    video, and an asset whose checksum never matches.
    """
    half = len(files) // 2
    specs = []
    for i, f in enumerate(files):
        owner = "alice" if i < half else "bob"
        root = "/usr/src/app/upload/library/alice" if owner == "alice" else "/mnt/nas/bob"
        vis = "archive" if i % 11 == 5 else "timeline"
        specs.append(PhotoSpec(f, f"{root}/{f.parent.name}/{f.name}", owner, visibility=vis))
    if not extras or not files:
        return specs
    a = files[0]
    faces_photo = next((f for f in files if f.name == "t1.jpg"), a)
    specs += [
        PhotoSpec(a, "/usr/src/app/upload/library/alice/copies/same-bytes.jpg", "alice"),
        PhotoSpec(None, "/mnt/nas/bob/thumbs/x/y/abc-preview.jpeg", "bob", data=thumbnail_bytes(faces_photo, 720)),
        PhotoSpec(
            None, "/mnt/nas/bob/@eaDir/t1.jpg/SYNOPHOTO_THUMB_XL.jpg", "bob", data=thumbnail_bytes(faces_photo, 640)
        ),
        PhotoSpec(None, "/mnt/nas/bob/encoded-video/clip.jpg", "bob", data=thumbnail_bytes(faces_photo, 600)),
        PhotoSpec(None, "/mnt/nas/bob/rotated/group-exif6.jpg", "bob", data=rotated_copy(faces_photo)),
        PhotoSpec(
            None,
            "/usr/src/app/upload/library/alice/unknown-size/group.jpg",
            "alice",
            known_size=False,
            data=_variant(faces_photo, 99),
        ),
        PhotoSpec(faces_photo, "/usr/src/app/upload/library/alice/locked/secret.jpg", "alice", visibility="locked"),
        PhotoSpec(
            None,
            "/usr/src/app/upload/library/alice/live.mov",
            "alice",
            type="VIDEO",
            visibility="hidden",
            data=b"\x00\x00\x00\x18ftypqt  fake video",
        ),
        PhotoSpec(faces_photo, "/usr/src/app/upload/library/alice/trash/deleted.jpg", "alice", is_trashed=True),
        PhotoSpec(faces_photo, "/mnt/nas/bob/offline/gone.jpg", "bob", is_offline=True),
        PhotoSpec(
            faces_photo,
            "/mnt/nas/bob/bad/checksum.jpg",
            "bob",
            checksum_override=base64.b64encode(b"\x00" * 20).decode(),
        ),
    ]
    if hostile:
        for j, p in enumerate(HOSTILE_PATHS):
            specs.append(PhotoSpec(None, p, "alice", data=_variant(faces_photo, j)))
    return specs


def _variant(path: Path, j: int) -> bytes:
    """Distinct bytes of the same picture (a JPEG comment), so hostile-path assets are not duplicates."""
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return data + b"\x00" * (j + 1)
    comment = f"variant {j}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def default_users(extra_keys: bool = True) -> list[FakeUser]:
    users = [
        FakeUser("alice", "alice-key-" + "A" * 24, sees_partners=("bob",)),
        FakeUser("bob", "bob-key-" + "B" * 26),
    ]
    if extra_keys:
        no_face_read = frozenset({"asset.read", "asset.download"})
        users.append(FakeUser("carol", "carol-key-no-faces-" + "C" * 20, no_face_read, sees_partners=("alice",)))
    return users


DETECTION_CACHE = REPO / "work" / "cache" / "fake_immich" / "detections.json"


def detection_cache(analyzer: Any, preview_long: int = 720, path: Path | None = DETECTION_CACHE) -> DetectionCache:
    """Detections cached between test runs (the first run pays ~7 s for the whole photo set)."""
    return DetectionCache(path, analyzer, preview_long)


def small_photo_set(demo_photos: Path | None, dev_faces: Path | None, every: int = 5) -> list[Path]:
    """Real photos: every ``every``-th demo photo, the group photo, and dev-faces when present."""
    demo = photo_files(demo_photos, None)
    files = demo[::every] + [p for p in demo if p.name == "t1.jpg" and p not in demo[::every]]
    return files + photo_files(None, dev_faces)


def assets_for_tests(analyzer: Any, demo_photos: Path, dev_faces: Path | None, every: int = 5) -> list[FakeAsset]:
    """The fake server's library for a test module; skips (pytest) without the OpenAPI spec."""
    import pytest

    try:
        spec_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    dev = dev_faces if dev_faces is not None and (dev_faces / "labels.csv").exists() else None
    return build_assets(standard_specs(small_photo_set(demo_photos, dev, every=every)), detection_cache(analyzer))
