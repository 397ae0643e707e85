"""Immich as a photo source (``kind: immich``).

The stage step for an Immich server: enumerate the IMAGE assets of one or more API keys,
keep the assets where Immich's own face boxes show a face big enough, download those
originals (checksum-verified, deduplicated by sha256 against the face store and within the
run) into ``<work>/immich/<label>/files/`` under a safe relative path, and remember every
decision in ``state.json`` so the same command resumes. The folder then becomes an ordinary
listing (``facesets.listing.stage_source``), so embed and cluster work unchanged.

Modules: ``paths`` (untrusted ``originalPath`` -> safe local path), ``geometry`` (face boxes
from preview space to original pixels), ``models`` (tolerant parsing of v2.7 .. v4 responses),
``client`` (HTTP: retries, Retry-After, circuit breaker, secrets kept out of messages),
``state`` (atomic, throttled state.json), ``stage`` (the concurrent pipeline and its report).
"""
