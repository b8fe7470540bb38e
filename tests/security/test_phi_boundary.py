"""The PHI type and the log filter: every way a value could be printed."""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ConfigDict

from carepost.core.phi import MASK, PHI, PHIJSONEncoder, RedactingFilter, json_default

MARKER = "Qzvphimarker"


class Profile(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    profile_id: str
    first_name: PHI


def test_str_repr_format_masked() -> None:
    value = PHI(MARKER)
    assert str(value) == MASK
    assert repr(value) == MASK
    assert f"{value}" == MASK
    assert "%s" % value == MASK
    assert MARKER not in repr({"name": value})


def test_json_encodings_masked() -> None:
    data = {"first_name": PHI(MARKER), "ids": [1, 2]}
    assert MARKER not in json.dumps(data, cls=PHIJSONEncoder)
    assert MARKER not in json.dumps(data, default=json_default)
    with pytest.raises(TypeError):
        json.dumps({"x": object()}, cls=PHIJSONEncoder)


def test_pydantic_serialization_masked() -> None:
    profile = Profile(profile_id="p1", first_name=PHI(MARKER))
    assert profile.model_dump()["first_name"] == MASK
    assert MARKER not in profile.model_dump_json()
    assert profile.model_dump()["profile_id"] == "p1"


def test_pickle_rejected() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(PHI(MARKER))


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s %(who)s"))
    handler.addFilter(RedactingFilter((MARKER,)))
    logger = logging.getLogger("tests.security.phi")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_filter_masks_message_args_extra(captured) -> None:
    logger, stream = captured
    logger.warning("name %s at %s", MARKER, "sam@example.org",
                   extra={"who": {"name": MARKER}})
    output = stream.getvalue()
    assert MARKER not in output
    assert "sam@example.org" not in output
    assert MASK in output


def test_filter_masks_exception_text(captured) -> None:
    logger, stream = captured
    try:
        raise ValueError(f"could not render {MARKER} for sam@example.org")
    except ValueError:
        logger.exception("render failed", extra={"who": "p-17"})
    output = stream.getvalue()
    assert MARKER not in output
    assert "sam@example.org" not in output
    assert "p-17" in output
    assert "ValueError" in output
