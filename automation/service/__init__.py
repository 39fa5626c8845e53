"""The HTTP service: ``create_app(settings)`` (FastAPI), started by ``shoal serve``."""

from automation.service.app import create_app

__all__ = ["create_app"]
