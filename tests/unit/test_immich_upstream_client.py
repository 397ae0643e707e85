"""Client pieces of issue 15: the Retry-After cap, the server version, the v3.2 search shape,
external-library checksums, edited-photo geometry and redaction of echoed keys."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest

from facesets.immich.client import ImmichRequestError, ImmichTransientError, parse_version, redact
from facesets.immich.geometry import FaceBox, largest_face_short
from facesets.immich.models import ResponseShapeError, parse_asset, parse_cursor_page, sha1_path_checksum
from facesets.immich.stage import search_api_for
from tests.support.fake_immich import FakeImmich, Fault, default_users
from tests.unit.test_immich_client import SEARCH, assets, group_asset, make_client  # noqa: F401


@pytest.fixture
def server(assets):  # noqa: F811
    with FakeImmich(assets, default_users(), version="3.2") as srv:
        yield srv
    assert srv.violations == [], srv.violations


def test_retry_after_999999_is_capped_in_total_and_says_so(server, caplog):
    server.add_fault(Fault("rate_limit", count=60, path="/api/search/metadata", retry_after="999999"))
    c, sleeps = make_client(server, max_retry_after_s=300.0, max_rate_limit_wait_s=900.0)
    with caplog.at_level(logging.WARNING), pytest.raises(ImmichTransientError) as err:
        c.search_metadata(SEARCH)
    assert sleeps == [300.0, 300.0, 300.0]  # not 300 s x 50 attempts
    assert "900 s" in str(err.value) and "max_rate_limit_wait_s" in str(err.value)
    assert "asks to wait 999999 s" in caplog.text


def test_short_retry_after_still_waits_as_asked(server):
    server.add_fault(Fault("rate_limit", count=2, path="/api/search/metadata", retry_after="2"))
    c, sleeps = make_client(server)
    assert c.search_metadata(SEARCH)["assets"]["items"]
    assert sleeps == [2.0, 2.0]


@pytest.mark.parametrize(
    ("version", "want", "api"),
    [("2.7", (2, 7, 0), "flat"), ("3", (3, 1, 0), "flat"), ("3.2", (3, 2, 0), "filter"), ("4", (4, 0, 0), "filter")],
)
def test_server_version_picks_the_search_api(assets, version, want, api):  # noqa: F811
    with FakeImmich(assets, default_users(), version=version) as srv:
        c, _ = make_client(srv)
        assert c.server_version() == want
        assert srv.violations == []
    assert search_api_for(want) == api
    assert search_api_for(None) == "flat"


def test_filter_tree_and_cursor_page_through_everything(server):
    c, _ = make_client(server)
    body = {"filter": {"type": {"eq": "IMAGE"}, "visibility": {"eq": "timeline"}}, "size": 2, "withExif": False}
    ids, pages = [], 0
    while True:
        page = parse_cursor_page(c.search_metadata(body))
        ids += [a.id for a in page.assets]
        pages += 1
        if page.next_cursor is None:
            break
        body = {**body, "cursor": page.next_cursor}
    assert len(ids) == len(set(ids)) == 6 and pages == 3


def test_parse_version_and_cursor_reject_other_shapes():
    assert parse_version({"major": 3, "minor": 2, "patch": 1, "prerelease": None}) == (3, 2, 1)
    with pytest.raises(ValueError):
        parse_version({"major": "x"})
    with pytest.raises(ResponseShapeError, match="nextCursor"):
        parse_cursor_page({"assets": {"items": [], "nextPage": None}})


def test_external_library_checksum_is_recognised():
    path = "/mnt/nas/photos/2019/IMG_0001.JPG"
    expected = base64.b64encode(hashlib.sha1(b"path:" + path.encode()).digest()).decode()
    assert sha1_path_checksum(path) == expected
    base = {"id": "a", "originalPath": path, "type": "IMAGE", "libraryId": "lib"}
    assert parse_asset({**base, "checksum": expected}).path_checksum
    content = base64.b64encode(hashlib.sha1(b"bytes").digest()).decode()
    assert not parse_asset({**base, "checksum": content}).path_checksum


def test_edited_photo_boxes_are_not_rescaled():
    # Original 4000x3000, cropped in Immich to 2000x1500: boxes come in the edited full-size frame.
    box = FaceBox(100, 100, 220, 260, 2000, 1500)
    assert largest_face_short([box], 4000, 3000, edited=True) == 120
    assert largest_face_short([box], 4000, 3000) == 240  # the preview rule would double it
    preview = FaceBox(50, 50, 110, 130, 1440, 1080)  # unedited: preview space, scaled up
    assert largest_face_short([preview], 4000, 3000) == pytest.approx(60 * 4000 / 1440)


def test_an_echoed_key_is_redacted_from_the_error(server):
    server.add_fault(Fault("echo_key", count=1, path="/api/faces"))
    c, _ = make_client(server)
    key = server.users["alice"].key
    with pytest.raises(ImmichRequestError) as err:
        c.faces(group_asset(server).id)
    assert key not in str(err.value) and "***" in str(err.value)
    assert redact(f"x {key} y", [key, ""]) == "x *** y"


def test_config_keys_and_cli_flag_reach_the_stage():
    from facesets.cli import build_parser
    from facesets.cli.immich import immich_block

    block = immich_block('{"url_env": "IMMICH_URL", "api_key_env": "IMMICH_API_KEY"}', "source s")
    assert block["recheck_no_face"] is False and block["max_rate_limit_wait_s"] == 900
    args = build_parser().parse_args(
        ["stage-immich", "out.parquet", "--name", "s", "--immich-settings", "{}", "--recheck-no-face"]
    )
    assert args.recheck_no_face is True
