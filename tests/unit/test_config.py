"""Config validation: defaults filled, every error names the file, the key and the allowed values."""

from pathlib import Path

import pytest

from facesets.config import ConfigError, load_config_files


def _write(tmp: Path, text: str, name: str = "config.yaml") -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def _source(tmp: Path, text: str) -> str:
    return _write(tmp, text, "src.yaml")


def test_defaults_are_filled(tmp_path):
    src = _source(tmp_path, f"name: lib\nkind: folder\npath: {tmp_path}\n")
    cfg = load_config_files([_write(tmp_path, f"sources: [{src}]\n")])
    assert cfg.settings["backend"] == "opencv"
    assert cfg.settings["embed"]["det_size"] == 640
    assert cfg.settings["embed"]["opencv"]["det_thresh"] == 0.6
    assert cfg.model_dir == Path("work/models")
    (s,) = cfg.sources
    assert s.name == "lib" and s.root == tmp_path and "**/*.jpg" in s.include


def test_unknown_top_level_key_names_file_and_allowed_keys(tmp_path):
    path = _write(tmp_path, "bakend: opencv\n")
    with pytest.raises(ConfigError) as e:
        load_config_files([path])
    msg = str(e.value)
    assert path in msg and "bakend" in msg and "backend" in msg and "work_root" in msg


def test_wrong_enum_value_lists_allowed_values(tmp_path):
    path = _write(tmp_path, "backend: dlib\n")
    with pytest.raises(ConfigError, match=r"key 'backend'.*'dlib'.*allowed: opencv, insightface"):
        load_config_files([path])


def test_source_errors_name_the_source_file(tmp_path):
    src = _source(tmp_path, f"name: lib\nkind: fodler\npath: {tmp_path}\n")
    with pytest.raises(ConfigError) as e:
        load_config_files([_write(tmp_path, f"sources: [{src}]\n")])
    assert src in str(e.value) and "'kind'" in str(e.value) and "allowed: folder" in str(e.value)


def test_source_overrides_are_validated_like_globals(tmp_path):
    src = _source(tmp_path, f"name: lib\nkind: folder\npath: {tmp_path}\noverrides:\n  embed:\n    det_size: 100\n")
    with pytest.raises(ConfigError) as e:
        load_config_files([_write(tmp_path, f"sources: [{src}]\n")])
    assert "src.yaml (overrides)" in str(e.value) and "embed.det_size" in str(e.value)


def test_source_overrides_apply_to_that_source_only(tmp_path):
    a = _write(
        tmp_path, f"name: a\nkind: folder\npath: {tmp_path}\noverrides:\n  embed:\n    det_size: 320\n", "a.yaml"
    )
    b = _write(tmp_path, f"name: b\nkind: folder\npath: {tmp_path}\n", "b.yaml")
    cfg = load_config_files([_write(tmp_path, f"sources: [{a}, {b}]\n")])
    assert cfg.source("a").settings["embed"]["det_size"] == 320
    assert cfg.source("b").settings["embed"]["det_size"] == 640


def test_missing_source_file_and_duplicate_names(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config_files([_write(tmp_path, f"sources: [{tmp_path / 'nope.yaml'}]\n")])
    a = _write(tmp_path, f"name: same\nkind: folder\npath: {tmp_path}\n", "a.yaml")
    with pytest.raises(ConfigError, match="duplicate source name"):
        load_config_files([_write(tmp_path, f"sources: [{a}, {a}]\n")])


def test_later_files_and_overrides_win(tmp_path):
    base = _write(tmp_path, "backend: opencv\nwork_root: w1\n")
    over = _write(tmp_path, "work_root: w2\n", "over.yaml")
    cfg = load_config_files([base, over], {"output_root": "o3"})
    assert cfg.work_root == Path("w2") and cfg.output_root == Path("o3")


def test_repository_config_is_valid():
    from tests.conftest import REPO

    cfg = load_config_files([str(REPO / "config" / "config.yaml")])
    assert [s.name for s in cfg.sources] == ["demo"]


def test_string_numbers_from_the_command_line_are_coerced(tmp_path):
    cfg = load_config_files([_write(tmp_path, "embed:\n  shards: '3'\n  det_size: '480'\n")])
    assert cfg.settings["embed"]["shards"] == 3 and cfg.settings["embed"]["det_size"] == 480
    with pytest.raises(ConfigError, match=r"embed\.shards"):
        load_config_files([_write(tmp_path, "embed:\n  shards: three\n")])


def test_a_missing_source_path_stops_naming_the_yaml_and_the_key(tmp_path):
    """Issue #11: caught by check-config and -n, before stage runs into a traceback."""
    src = tmp_path / "sources" / "nas.yaml"
    src.parent.mkdir()
    src.write_text(f"name: nas\nkind: folder\npath: {tmp_path / 'not-mounted'}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{src}]\n")
    with pytest.raises(ConfigError) as err:
        load_config_files([str(cfg)])
    assert str(src) in str(err.value) and "key 'path'" in str(err.value) and "does not exist" in str(err.value)
    (tmp_path / "not-mounted").write_text("a file, not a folder")
    with pytest.raises(ConfigError, match="is not a folder"):
        load_config_files([str(cfg)])
