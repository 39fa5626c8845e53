"""Shared by every command: domain and database errors become one line (or one JSON object)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.exc import SQLAlchemyError

from automation.errors import ShoalError


def emit_error(err: ShoalError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(err.to_dict()))
    else:
        click.echo(f"shoal: error: {err}", err=True)


@contextmanager
def errors(as_json: bool) -> Iterator[None]:
    """Domain and database errors -> one line (or JSON) and exit 1, never a traceback."""
    try:
        yield
    except ShoalError as err:
        emit_error(err, as_json)
        sys.exit(1)
    except SQLAlchemyError as err:
        orig = getattr(err, "orig", None) or err
        emit_error(ShoalError(f"database error: {str(orig).splitlines()[0]}"), as_json)
        sys.exit(1)
