"""Docs stay true: every table column is documented, README carries the two commands."""

import re

from facesets import schema
from tests.conftest import REPO


def test_every_column_is_documented():
    doc = (REPO / "docs" / "face-table.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", doc))
    for table in (schema.FACES, schema.IMAGES, schema.LISTING, schema.STORE):
        missing = [n for n in table.names if n not in documented]
        assert not missing, missing


def test_readme_commands_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
