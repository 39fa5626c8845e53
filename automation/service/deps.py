"""Dependencies: the running state, and bearer-token checks for writes (and reads if set)."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from automation.ingest.pseudonym import pseudonym
from automation.service.state import ServiceState

bearer = HTTPBearer(auto_error=False)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.shoal
    return state


def _check(state: ServiceState, creds: HTTPAuthorizationCredentials | None) -> None:
    if creds is None or not hmac.compare_digest(creds.credentials, state.token):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required (Authorization: Bearer <SHOAL_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def write_access(
    state: ServiceState = Depends(get_state),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ServiceState:
    _check(state, creds)
    return state


def read_access(state: ServiceState = Depends(get_state)) -> ServiceState:
    """Reads are open unless ``SHOAL_API_READS=token``; then the app adds
    :func:`read_token` to the read routes (and the OpenAPI spec says so)."""
    return state


def read_token(
    state: ServiceState = Depends(get_state),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> None:
    _check(state, creds)


def stored_id(state: ServiceState, user_id: str) -> str:
    """The id the store holds for ``user_id`` (its pseudonym when pseudonymisation is on)."""
    key = state.settings.pseudonym_key
    return pseudonym(key, user_id) if key else user_id
