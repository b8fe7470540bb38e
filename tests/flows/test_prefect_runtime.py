"""carepost's embedded Prefect server belongs to one state folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from carepost.flows import prefect_runtime
from carepost.flows.prefect_runtime import PrefectServerError, default_port


def test_port_differs_by_state_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(prefect_runtime.PORT_ENV, raising=False)
    first = default_port(tmp_path / "one")
    assert first == default_port(tmp_path / "one")
    assert first != default_port(tmp_path / "two")
    assert prefect_runtime.PORT_BASE <= first < prefect_runtime.PORT_BASE + 700


def test_port_setting_validated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(prefect_runtime.PORT_ENV, "99999")
    with pytest.raises(PrefectServerError, match="99999"):
        default_port(tmp_path)


@pytest.mark.prefect
def test_foreign_server_not_reused(tmp_path: Path, prefect_api: str,
                                   monkeypatch) -> None:
    monkeypatch.delenv(prefect_runtime.API_URL_ENV, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    port = urlparse(prefect_api).port
    other_home = tmp_path / "prefect"
    other_home.mkdir()

    with pytest.raises(PrefectServerError, match="did not start"):
        prefect_runtime.ensure_server(other_home, port)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
