"""SMART Backend Services authorization: a signed JWT for an access token.

The client signs a short-lived JWT assertion (RFC 7523) with its private
key and posts it to the token endpoint with ``grant_type=client_credentials``,
and the server returns a bearer token and its lifetime. The token is
cached until shortly before it expires. Claims follow the SMART App Launch
specification, "Backend Services" (``iss`` and ``sub`` are the client id,
``aud`` is the token URL, ``exp`` at most five minutes ahead, a unique
``jti``; header ``kid`` names the key in the client's JWKS).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import httpx
import jwt
from pydantic import SecretStr

from carepost.core.errors import CarepostError
from carepost.core.sources import SmartAuth, read_secret

log = logging.getLogger("carepost.connectors.fhir")

__all__ = ["FhirAuthError", "SmartTokenProvider"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300
# A token is renewed this long before it expires, so a request never
# starts with a token that runs out in flight.
EXPIRY_MARGIN_SECONDS = 60


class FhirAuthError(CarepostError):
    """The token endpoint rejected the client or returned an invalid response."""


class SmartTokenProvider:
    """Return a cached bearer token, fetching a new one when it nears expiry."""

    def __init__(self, auth: SmartAuth, root: Path) -> None:
        self._auth = auth
        self._key = self._private_key(auth, root)
        self._token: SecretStr | None = None
        self._expires_at = 0.0

    @staticmethod
    def _private_key(auth: SmartAuth, root: Path) -> SecretStr:
        if auth.private_key_env:
            return read_secret(auth.private_key_env, "FHIR private key")
        if auth.private_key_file:
            path = Path(auth.private_key_file)
            path = path if path.is_absolute() else root / path
            try:
                return SecretStr(path.read_text(encoding="ascii"))
            except OSError as error:
                raise FhirAuthError(
                    f"cannot read the FHIR private key file {path}: {error.strerror}",
                    hint="check auth.private_key_file",
                ) from None
        raise FhirAuthError(
            "FHIR auth has no private key",
            hint="set auth.private_key_env or auth.private_key_file",
        )

    def invalidate(self) -> None:
        """Forget the cached token, after the server returned 401 for it."""
        self._token = None

    async def token(self, client: httpx.AsyncClient) -> SecretStr:
        """Return a valid access token, requesting one if none is cached."""
        if self._token is not None and time.monotonic() < self._expires_at:
            return self._token
        response = await client.post(
            self._auth.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": self._auth.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._assertion(),
            },
            headers={"Accept": "application/json"},
        )
        if response.status_code != 200:
            raise FhirAuthError(
                f"token endpoint returned {response.status_code} "
                f"({_oauth_error(response)})",
                hint="check auth.client_id, auth.key_id and the registered public key",
            )
        body = response.json()
        if body.get("token_type", "").lower() != "bearer" or "access_token" not in body:
            raise FhirAuthError("token endpoint returned no bearer access_token")
        lifetime = float(body.get("expires_in", 300))
        self._token = SecretStr(body["access_token"])
        self._expires_at = time.monotonic() + max(lifetime - EXPIRY_MARGIN_SECONDS, 0)
        log.info("obtained a FHIR access token valid for %d s", lifetime)
        return self._token

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self._auth.client_id,
            "sub": self._auth.client_id,
            "aud": self._auth.token_url,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims,
            self._key.get_secret_value(),
            algorithm=self._auth.algorithm,
            headers={"kid": self._auth.key_id, "typ": "JWT"},
        )


def _oauth_error(response: httpx.Response) -> str:
    """Return the OAuth ``error`` code of a failed token response, if any."""
    try:
        return str(response.json().get("error", "no error code"))
    except ValueError:
        return "no JSON body"
