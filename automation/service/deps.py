"""Dependencies: the running state, and bearer-token checks for writes (and reads if set)."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from automation.ingest.pseudonym import pseudonym
from automation.service.state import ServiceState

bearer = HTTPBearer(auto_error=False)


# Async although they do no I/O: FastAPI runs a plain ``def`` dependency in its thread pool, a
# hand-off to another thread and back (with the GIL) for each, per request.


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.shoal
    return state


def _check(state: ServiceState, creds: HTTPAuthorizationCredentials | None) -> None:
    if creds is None or not hmac.compare_digest(creds.credentials, state.token):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required (Authorization: Bearer <SHOAL_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def write_access(
    state: ServiceState = Depends(get_state),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ServiceState:
    _check(state, creds)
    return state


async def read_access(state: ServiceState = Depends(get_state)) -> ServiceState:
    """Reads are open unless ``SHOAL_API_READS=token``; then the app adds
    :func:`read_token` to the read routes (and the OpenAPI spec says so)."""
    return state


async def read_token(
    state: ServiceState = Depends(get_state),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> None:
    _check(state, creds)


def stored_id(state: ServiceState, user_id: str) -> str:
    """The id the store holds for ``user_id`` (its pseudonym when pseudonymisation is on)."""
    key = state.settings.pseudonym_key
    return pseudonym(key, user_id) if key else user_id
