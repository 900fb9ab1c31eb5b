"""``vesalius models``: the model registry (:mod:`vesalius.serving.registry`) from the command line.

``add`` stores a package as the next version of a model, ``list`` shows the versions and where the aliases point,
``promote`` points an alias (``production`` by default) at a version and ``rollback`` moves it back. A running
``vesalius serve`` follows the change at its next request. User errors are raised as
:class:`~vesalius.errors.VesaliusError`, which the main command prints as one line (exit code 2).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:  # the registry loads only when a command runs: `vesalius --help` stays quick
    from vesalius.serving.registry import ModelVersion, Registry


__all__ = ["models_app", "registry_of"]

models_app = typer.Typer(
    help="The model registry of 'vesalius serve': versions of exported packages, and aliases that point at them.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $VESALIUS_HOME or ./vesalius_work)."),
]
AliasOption = Annotated[str, typer.Option("--alias", help="The alias (the service answers with 'production').")]


def registry_of(workspace: Path | None) -> Registry:
    """The registry of the workspace ``workspace`` (``None``: the default one)."""
    from vesalius.serving.registry import Registry
    from vesalius.workspace import Workspace

    return Registry(Workspace.resolve(workspace).serving_dir() / "registry")


def _actor() -> str | None:
    """Who runs the command, for the alias history (``None`` when the system cannot say)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _metric_summary(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    figures = [("Dice", metrics.get("mean_dice")), ("accuracy", metrics.get("accuracy")), ("AUC", metrics.get("auc"))]
    text = ", ".join(f"{label} {value:.3f}" for label, value in figures if isinstance(value, int | float))
    return text or "-"


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


@models_app.command("add")
def add(
    package: Annotated[Path, typer.Argument(help="The exported package: a .vpkg file or a package folder.")],
    name: Annotated[str, typer.Option("--name", help="The model's name in the registry.")],
    workspace: WorkspaceOption = None,
) -> None:
    """Store a package as the next version of a model (v1, v2, ...); every member is checked first."""
    version = registry_of(workspace).add(package, name)
    _say(
        f"{name} {version.version} (sha256 {version.sha256[:8]}…) added; "
        f"promote it with: vesalius models promote {name} {version.version}"
    )


@models_app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """List the registered models, their versions and where their aliases point."""
    from rich.table import Table

    registry = registry_of(workspace)
    models = [registry.get(name)] if name else registry.models()
    if as_json:
        typer.echo(json.dumps([m.to_json() for m in models], indent=2))
        return
    if not models:
        _say("no model registered; add one with: vesalius models add PACKAGE --name NAME")
        return
    table = Table("name", "version", "aliases", "task", "created", "sha256", "validation")
    for model in models:
        for version in model.versions:
            table.add_row(
                model.name,
                version.version,
                ", ".join(model.aliases_of(version.version)),
                version.task,
                version.created,
                version.sha256[:12],
                _metric_summary(version.metrics),
            )
    out.print(table)


def _moved(version: ModelVersion, alias: str, before: str | None) -> None:
    was = f" (was {before})" if before and before != version.version else ""
    _say(f"{version.name} {alias} -> {version.version}{was}")


@models_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str, typer.Argument(help="The version, e.g. v3 (or 3).")],
    alias: AliasOption = "production",
    workspace: WorkspaceOption = None,
) -> None:
    """Point an alias at a version; a running service answers with it from its next request."""
    registry = registry_of(workspace)
    before = registry.get(name).aliases.get(alias)
    _moved(registry.promote(name, version, alias=alias, actor=_actor()), alias, before)


@models_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="The model.")],
    alias: AliasOption = "production",
    workspace: WorkspaceOption = None,
) -> None:
    """Point an alias back at the version it pointed at before its last promotion."""
    registry = registry_of(workspace)
    before = registry.get(name).aliases.get(alias)
    _moved(registry.rollback(name, alias=alias, actor=_actor()), alias, before)
