"""The YAML loader of carepost.yaml, campaign and mapping files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from carepost.connectors.files_mapping import MappingError, load_mapping
from carepost.core.campaign import load_campaign
from carepost.core.errors import ConfigError
from carepost.core.settings import load_settings
from carepost.core.yamlio import (
    DuplicateKeyError,
    UniqueKeyLoader,
    YamlFileError,
    load_yaml_file,
)
from tests.conftest import REPO

MARKETING_CAMPAIGN = """\
segment: diabetes_prediabetes_adults
template: diabetes_education
purpose: marketing
schedule:
  cron: "0 9 * * 1"
  timezone: America/Chicago
purpose: care
"""


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_key_in_campaign(tmp_path: Path) -> None:
    path = _write(tmp_path, "education.yaml", MARKETING_CAMPAIGN)

    with pytest.raises(YamlFileError) as caught:
        load_campaign(path)

    assert caught.value.line == 7
    assert caught.value.column == 1
    assert str(caught.value).startswith(
        f"{path}:7:1: duplicate key 'purpose' (first at line 3)")


def test_duplicate_key_in_settings(tmp_path: Path) -> None:
    text = (REPO / "carepost.yaml").read_text().replace(
        "  port: 587\n", "  port: 587\n  host: other.example.test\n")
    path = _write(tmp_path, "carepost.yaml", text)

    with pytest.raises(ConfigError, match=r"carepost\.yaml:\d+:3: duplicate key 'host'"):
        load_settings(path)


def test_duplicate_nested_key_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", "a:\n  b:\n    c: 1\n    c: 2\n")

    with pytest.raises(YamlFileError, match=r"d\.yaml:4:5: duplicate key 'c' \(first at line 3\)"):
        load_yaml_file(path)


def test_duplicate_key_in_mapping_file(tmp_path: Path) -> None:
    text = ("profiles:\n  email: {column: mail}\n  email: {column: e_mail}\n")
    path = _write(tmp_path, "mapping.yaml", text)

    with pytest.raises(MappingError, match=r"mapping\.yaml:3:3: duplicate key 'email'"):
        load_mapping(path)


def test_equal_keys_spelled_differently(tmp_path: Path) -> None:
    # YAML 1.1 reads both as the integer 10, so a dict would keep one.
    path = _write(tmp_path, "n.yaml", "10: a\n0xA: b\n")

    with pytest.raises(YamlFileError, match="duplicate key 10"):
        load_yaml_file(path)


def test_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = "base: &base {x: 1, y: 2}\nchild:\n  <<: *base\n  x: 3\n"
    path = _write(tmp_path, "m.yaml", text)

    assert load_yaml_file(path).data["child"] == {"x": 3, "y": 2}


def test_loader_usable_with_yaml_load() -> None:
    with pytest.raises(DuplicateKeyError):
        yaml.load("a: 1\na: 2\n", Loader=UniqueKeyLoader)  # noqa: S506
    assert yaml.load("a: [1, 2]\n", Loader=UniqueKeyLoader) == {"a": [1, 2]}  # noqa: S506


@pytest.mark.parametrize(("text", "where", "problem", "hint"), [
    ("practice:\n  name: a: b\n", "2:10", "mapping values are not allowed here",
     "quote a value that contains ': '"),
    ("practice:\n\tname: a\n", "2:1", "found character '\\t' that cannot start",
     "indent with spaces"),
    ("practice: [a, b\nsender: x\n", "2:7", "expected ',' or ']'",
     "check the indentation and quoting"),
])
def test_syntax_error_points_at_line(tmp_path: Path, text: str, where: str,
                                     problem: str, hint: str) -> None:
    path = _write(tmp_path, "carepost.yaml", text)

    with pytest.raises(YamlFileError) as caught:
        load_settings(path)

    message = str(caught.value)
    assert message.startswith(f"{path}:{where}: {problem}")
    assert hint in message
    assert "<unicode string>" not in message


def test_non_utf8_file_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "carepost.yaml", b"practice:\n  name: Caf\xe9\n")

    with pytest.raises(YamlFileError) as caught:
        load_settings(path)

    assert str(caught.value) == (
        f"{path}: not UTF-8 text (byte 0xe9 at offset 21); save it as UTF-8")
    assert (caught.value.line, caught.value.column) == (2, 12)


def test_position_of_key_paths(tmp_path: Path) -> None:
    text = "smtp:\n  port: 99999\nsources:\n  crm:\n    kind: fhir\nlist:\n  - a\n  - b\n"
    document = load_yaml_file(_write(tmp_path, "p.yaml", text))

    assert document.position(("smtp", "port")) == (2, 9)
    assert document.position(("smtp", "missing")) == (2, 3)
    assert document.position(("sources", "crm", "fhir", "kind")) == (5, 11)
    assert document.position(("list", 1)) == (8, 5)
    assert document.position(()) == (1, 1)


def test_empty_file_has_no_data(tmp_path: Path) -> None:
    document = load_yaml_file(_write(tmp_path, "e.yaml", "# only a comment\n"))

    assert document.data is None
    assert document.position(("a",)) == (1, 1)
