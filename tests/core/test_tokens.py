"""Signed link tokens."""

from __future__ import annotations

import pytest

from carepost.core.tokens import TokenError, issue_token, verify_token

KEYS = {"k2": b"new-secret", "k1": b"old-secret"}


def test_token_round_trip() -> None:
    token = issue_token(KEYS, 42, "u")
    claims = verify_token(KEYS, token)
    assert claims.delivery_id == 42
    assert claims.tag == "u"


def test_old_key_still_verifies_after_rotation() -> None:
    old = issue_token({"k1": b"old-secret"}, 7, "c3")
    assert verify_token(KEYS, old).delivery_id == 7


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),
    lambda t: "x" + t,
    lambda t: "",
    lambda t: "!!!",
])
def test_tampered_token_rejected(mangle) -> None:
    token = issue_token(KEYS, 42, "u")
    with pytest.raises(TokenError):
        verify_token(KEYS, mangle(token))


def test_forged_delivery_id_rejected() -> None:
    import base64

    token = issue_token(KEYS, 42, "u")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged = raw.replace(b".42.", b".43.")
    forged_token = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        verify_token(KEYS, forged_token)


def test_unknown_key_id_rejected() -> None:
    token = issue_token({"k9": b"elsewhere"}, 1, "u")
    with pytest.raises(TokenError):
        verify_token(KEYS, token)


def test_click_token_carries_signed_url() -> None:
    url = "https://www.example.test/book?visit=checkup&x=1.5"
    claims = verify_token(KEYS, issue_token(KEYS, 5, "c2", url))
    assert claims.url == url
    assert claims.tag == "c2"


def test_click_url_cannot_be_swapped() -> None:
    import base64

    token = issue_token(KEYS, 5, "c0", "https://www.example.test/a")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    swapped = raw.replace(b"www.example.test", b"evil.example.test")
    with pytest.raises(TokenError):
        verify_token(KEYS, base64.urlsafe_b64encode(swapped).rstrip(b"=").decode())
