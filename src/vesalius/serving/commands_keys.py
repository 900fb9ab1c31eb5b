"""``vesalius serve keys``: the API keys of the service (:mod:`vesalius.serving.keys`) from the command line.

``add`` makes a key and prints it once: the key alone on standard output (so ``KEY=$(vesalius serve keys add ci)``
works), the reminder that it cannot be shown again on standard error. ``list`` shows names, roles and dates, never
secrets; ``remove`` deletes a key. A running service follows the change at its next request. User errors are
raised as :class:`~vesalius.errors.VesaliusError`, which the main command prints as one line (exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from vesalius.serving.keys import KeyStore

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="API keys of 'vesalius serve': 'predict' keys send images, 'admin' keys also manage the service.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $VESALIUS_HOME or ./vesalius_work)."),
]


def _store(workspace: Path | None) -> KeyStore:
    """The key store of the workspace ``workspace`` (``None``: the default one); imported here to keep
    ``vesalius --help`` quick."""
    from vesalius.serving.keys import KeyStore
    from vesalius.workspace import Workspace

    return KeyStore(Workspace.resolve(workspace).serving_dir() / "keys.json")


@keys_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Who gets the key, e.g. radiology-pacs (unique).")],
    role: Annotated[str, typer.Option("--role", help="predict (send images, read results) or admin.")] = "predict",
    workspace: WorkspaceOption = None,
) -> None:
    """Make an API key and print it, once: only its hash is kept."""
    key = _store(workspace).add(name, role)
    out.print(key, markup=False, highlight=False)
    err.print(
        f"API key '{name}' ({role}) added. Copy it now: it is stored only as a hash and cannot be shown again.",
        markup=False,
        highlight=False,
    )


@keys_app.command("list")
def list_keys(workspace: WorkspaceOption = None) -> None:
    """List the keys: name, role, creation date (never the keys themselves)."""
    keys = _store(workspace).list()
    if not keys:
        out.print("no API keys; add one with: vesalius serve keys add NAME --role admin", markup=False)
    for key in keys:
        out.print(f"{key.name}\t{key.role}\t{key.created}", markup=False, highlight=False)


@keys_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="The key's name (see 'vesalius serve keys list').")],
    workspace: WorkspaceOption = None,
) -> None:
    """Delete a key: a running service refuses it from its next request."""
    _store(workspace).remove(name)
    out.print(f"API key '{name}' removed", markup=False, highlight=False)
