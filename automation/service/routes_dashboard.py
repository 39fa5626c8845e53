"""The dashboard at ``/`` (one HTML page, ECharts vendored in ``static/``, no build step) and
the JSON it draws from, ``GET /v1/dashboard``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, HTMLResponse

from automation.service.dashboard_data import dashboard_data
from automation.service.deps import read_access
from automation.service.schemas import ERRORS
from automation.service.state import ServiceState

HERE = Path(__file__).resolve().parent
router = APIRouter(tags=["dashboard"], responses=ERRORS)
#: The page and its script: never behind the token (a browser cannot send a bearer header when
#: it opens a page); with SHOAL_API_READS=token the page sends the token it is given in its
#: address (``/#token=...``) with its data request.
pages = APIRouter(include_in_schema=False)


@pages.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse((HERE / "dashboard.html").read_text(encoding="utf-8"))


@pages.get("/static/echarts.min.js")
def echarts() -> FileResponse:
    return FileResponse(HERE / "static" / "echarts.min.js", media_type="text/javascript")


@router.get("/v1/dashboard")
def data(
    since: datetime | None = None,
    until: datetime | None = None,
    state: ServiceState = Depends(read_access),
) -> dict[str, Any]:
    """Segment sizes over time, migration flows between two dates, profiles, transitions,
    drift alerts and campaign results."""
    return dashboard_data(state.engine, since, until)
