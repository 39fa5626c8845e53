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


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse((HERE / "dashboard.html").read_text(encoding="utf-8"))


@router.get("/static/echarts.min.js", include_in_schema=False)
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
