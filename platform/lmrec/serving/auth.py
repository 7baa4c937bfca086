"""Bearer tokens for the service: a write token guards catalogue writes, an optional read token guards the rest.

Tokens come from the environment of the process that serves HTTP (the ingress replica), never from a Serve
config in the repository:

    LMREC_WRITE_TOKEN / LMREC_WRITE_TOKEN_FILE   required for POST /items; without one, writes are refused (403)
    LMREC_READ_TOKEN  / LMREC_READ_TOKEN_FILE    if set, every read route but /health needs it (or the write token)

``*_FILE`` names a file holding the token (a mounted secret); it wins over the plain variable. Refusing writes
when no token is configured is deliberate: a service started without thinking about auth must not accept catalogue
changes from anyone who can reach its port. ``lmrec serve`` forwards these variables from its own environment to
the replicas (``token_env``), so ``export LMREC_WRITE_TOKEN=...; lmrec serve ...`` is enough.

Only the sha256 of each token is kept, and the presented token's digest is compared with ``hmac.compare_digest``
(constant time). Missing credentials answer 401 with ``WWW-Authenticate: Bearer``; a wrong token answers 403.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

WRITE, READ = "LMREC_WRITE_TOKEN", "LMREC_READ_TOKEN"
VARIABLES = (WRITE, f"{WRITE}_FILE", READ, f"{READ}_FILE")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _token(environ, name: str) -> str | None:
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as e:
            raise ValueError(f"{name}_FILE={path}: unreadable ({e.strerror})") from None
        if not token:
            raise ValueError(f"{name}_FILE={path}: the file is empty")
        return token
    return environ.get(name) or None


@dataclass(frozen=True)
class Tokens:
    """sha256 digests of the configured tokens (None: not configured)."""

    write: bytes | None = None
    read: bytes | None = None

    @classmethod
    def of(cls, write: str | None = None, read: str | None = None) -> "Tokens":
        return cls(_digest(write) if write else None, _digest(read) if read else None)

    @classmethod
    def from_env(cls, environ=None) -> "Tokens":
        environ = os.environ if environ is None else environ
        return cls.of(_token(environ, WRITE), _token(environ, READ))


def token_env(environ=None) -> dict[str, str]:
    """The token variables set in ``environ`` (for a Serve application's ``runtime_env.env_vars``)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in VARIABLES if environ.get(k)}


# auto_error=False: a missing header reaches our check, which answers 401 (FastAPI's own answers 403)
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>` (see lmrec.serving.auth).")


def _matches(credentials: HTTPAuthorizationCredentials | None, *digests: bytes | None) -> bool:
    given = _digest(credentials.credentials)
    found = False
    for d in digests:  # compare with every configured digest: the time taken does not say which one matched
        found |= d is not None and hmac.compare_digest(given, d)
    return found


def _unauthorized(what: str) -> HTTPException:
    return HTTPException(401, f"{what} needs a bearer token (Authorization: Bearer <token>)",
                         headers={"WWW-Authenticate": "Bearer"})


def require_write(tokens: Tokens):
    """Dependency of the write routes."""
    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if tokens.write is None:
            raise HTTPException(403, f"catalogue writes are disabled: set {WRITE} (or {WRITE}_FILE) in the "
                                     f"service's environment to enable them")
        if credentials is None:
            raise _unauthorized("this write")
        if not _matches(credentials, tokens.write):
            raise HTTPException(403, "the bearer token is not valid for writes")
    return check


def require_read(tokens: Tokens):
    """Dependency of the read routes; only installed when a read token is configured (the write token also reads)."""
    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if credentials is None:
            raise _unauthorized("this service")
        if not _matches(credentials, tokens.read, tokens.write):
            raise HTTPException(403, "the bearer token is not valid")
    return check
