"""Project-level contracts: compose file, README documents every command, module sizes."""

from __future__ import annotations

import re
from pathlib import Path

import click
import yaml
from click.testing import CliRunner

from automation.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_docker_compose_parses_and_references_resolve() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"postgres", "redis", "shoal"} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}) or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in (doc.get("volumes") or {}), f"{name}: unknown volume {source}"
    assert "SHOAL_DATABASE_URL" in services["shoal"]["environment"]


def _commands() -> list[tuple[list[str], click.Command]]:
    """Every leaf command, with its path (``["campaign", "run"]``)."""
    out: list[tuple[list[str], click.Command]] = []
    for name, cmd in main.commands.items():
        if isinstance(cmd, click.Group):
            out += [([name, sub], c) for sub, c in cmd.commands.items()]
        else:
            out.append(([name], cmd))
    return out


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for path, _ in _commands():
        name = " ".join(path)
        assert re.search(rf"`shoal {name}\b", readme), f"`shoal {name}` is not in README.md"


def test_every_command_has_help_and_json() -> None:
    runner = CliRunner()
    for path, cmd in _commands():
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert cmd.help, f"{path} has no help text"
        assert "--json" in result.output, f"{path} has no --json"


def test_modules_stay_small() -> None:
    for path in (ROOT / "automation").rglob("*.py"):
        n = len(path.read_text().splitlines())
        assert n < 600, f"{path} has {n} lines"
