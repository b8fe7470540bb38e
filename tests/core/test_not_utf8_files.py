"""Files that are not UTF-8: one line naming the file and byte, others still checked.

The inputs are the tester's: a Latin-1 ``é`` and a UTF-16 file with a byte
order mark, as Windows editors save "Unicode" text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from carepost.core.yamlio import NotUtf8Error, read_utf8_text
from carepost.flows.cli import app
from tests.conftest import REPO

CAMPAIGN = "segment: patient_lifecycle\nstage: checkup_due\n" \
    "template: checkup_reminder\npurpose: care\n"


def _latin1(text: str) -> bytes:
    return ("# Café\n" + text).encode("latin-1")


def _utf16(text: str) -> bytes:
    return text.encode("utf-16")  # little-endian with the FF FE mark


def _project(folder: Path) -> Path:
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text(encoding="utf-8"))
    raw.update({"root": str(folder), "state_dir": str(folder / "state"),
                "campaigns_dir": "campaigns", "templates_dir": "templates",
                "segments_dir": str(REPO / "segments/library")})
    shutil.copytree(REPO / "templates/library", folder / "templates")
    (folder / "campaigns").mkdir()
    config = folder / "carepost.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return config


def _invoke(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


def test_read_names_byte_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc\ndef\xe9\n")

    with pytest.raises(NotUtf8Error) as caught:
        read_utf8_text(path)

    error = caught.value
    assert str(error) == f"{path}: not UTF-8 text (byte 0xe9 at offset 7); save it as UTF-8"
    assert (error.offset, error.byte, error.line, error.column) == (7, 0xE9, 2, 4)


def test_read_names_utf16_mark(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(_utf16("name: x\n"))

    with pytest.raises(NotUtf8Error, match=r"\(byte 0xff at offset 0, a UTF-16 byte "
                       r"order mark\); save it as UTF-8\Z"):
        read_utf8_text(path)


def test_read_keeps_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("Café\n", encoding="utf-8")

    assert read_utf8_text(path) == "Café\n"


@pytest.mark.parametrize("encode", [_latin1, _utf16])
def test_config_not_utf8_one_line(tmp_path: Path, encode) -> None:
    config = _project(tmp_path)
    config.write_bytes(encode(config.read_text(encoding="utf-8")))

    code, out, err = _invoke(config, "campaigns")

    assert code == 2
    assert out == ""
    assert err.startswith(f"error: {config}: not UTF-8 text (byte 0x")
    assert err.endswith("; save it as UTF-8\n")
    assert err.count("\n") == 1


def test_campaign_check_reports_each_file(tmp_path: Path) -> None:
    config = _project(tmp_path)
    folder = tmp_path / "campaigns"
    (folder / "good.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (folder / "latin1.yaml").write_bytes(_latin1(CAMPAIGN))
    (folder / "utf16.yaml").write_bytes(_utf16(CAMPAIGN))
    (folder / "wrong.yaml").write_text(CAMPAIGN.replace("checkup_due", "nope"),
                                       encoding="utf-8")

    code, out, err = _invoke(config, "campaigns", "--check")

    assert code == 1
    lines = out.splitlines()
    assert f"{folder / 'latin1.yaml'}: not UTF-8 text (byte 0xe9 at offset 5); " \
        "save it as UTF-8" in lines
    assert f"{folder / 'utf16.yaml'}: not UTF-8 text (byte 0xff at offset 0, a " \
        "UTF-16 byte order mark); save it as UTF-8" in lines
    assert any(line.startswith("campaigns/wrong.yaml: ") for line in lines)
    assert "checked 4 campaigns: 3 problems" in err
    assert "Traceback" not in out + err


def test_templates_check_reports_each_file(tmp_path: Path) -> None:
    config = _project(tmp_path)
    folder = tmp_path / "templates"
    base = folder / "refill_reminder.html.j2"
    base.write_bytes(b"{# Caf\xe9 #}\n" + base.read_bytes())
    text = folder / "checkup_reminder.txt.j2"
    text.write_bytes(_utf16(text.read_text(encoding="utf-8")))

    code, out, err = _invoke(config, "templates", "check", "--json")

    assert code == 1, err
    report = json.loads(out)
    assert f"{base}: not UTF-8 text (byte 0xe9 at offset 6); save it as UTF-8" \
        in report["problems"]
    assert f"{text}: not UTF-8 text (byte 0xff at offset 0, a UTF-16 byte order " \
        "mark); save it as UTF-8" in report["problems"]
    assert report["templates"] == ["diabetes_education", "missed_appointment"]


def test_templates_check_partial_not_utf8(tmp_path: Path) -> None:
    config = _project(tmp_path)
    partial = sorted((tmp_path / "templates" / "partials").glob("*.j2"))[0]
    partial.write_bytes(partial.read_bytes() + "{# Zoë #}\n".encode("latin-1"))

    code, out, err = _invoke(config, "templates", "check")

    assert code == 1
    assert f"{partial}: not UTF-8 text (byte 0xeb at offset " in out
    assert "Traceback" not in out + err
