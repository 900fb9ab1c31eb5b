"""``vesalius serve`` (start the service; ``serve keys ...`` manages its API keys) and ``vesalius monitor report``.

Thin: options become :class:`~vesalius.serving.settings.ServeSettings`; the work is in the serving modules, which
load (FastAPI, uvicorn, ONNX Runtime) only when a command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vesalius.errors import VesaliusError
from vesalius.serving.commands_keys import keys_app
from vesalius.units import parse_duration, parse_size

__all__ = ["monitor_app", "serve_app"]

out = Console(soft_wrap=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $VESALIUS_HOME or ./vesalius_work)."),
]

serve_app = typer.Typer(
    help="Serve the registered models over HTTP (jobs, API keys, limits, metrics, drift); 'serve keys' manages keys.",
    invoke_without_command=True,
)
serve_app.add_typer(keys_app, name="keys")
monitor_app = typer.Typer(help="What the service saw: reports on served models.", no_args_is_help=True)


@serve_app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Prediction threads.", min=1)] = 2,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads per worker (default: cores/workers).")
    ] = None,
    queue_limit: Annotated[int, typer.Option(help="Queued jobs beyond which requests get 429.", min=1)] = 64,
    max_upload: Annotated[str, typer.Option(help="Largest upload (e.g. 512M, 2G).")] = "512M",
    max_voxels: Annotated[int, typer.Option(help="Largest image in voxels (checked on the header).")] = 512**3,
    retention: Annotated[
        str, typer.Option(help="Delete a job's files this long after it ended (e.g. 7d, 12h).")
    ] = "7d",
    rate_limit: Annotated[str, typer.Option(help="Requests per API key (e.g. 600/min, 10/s; 0: none).")] = "600/min",
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="An origin allowed to call from a browser (repeat; default: CORS off).")
    ] = None,
    shadow_fraction: Annotated[
        float, typer.Option(help="Share of requests also predicted by the 'staging' version.", min=0.0, max=1.0)
    ] = 0.0,
    drift_window: Annotated[int, typer.Option(help="Jobs per drift score.", min=2)] = 50,
    drift_min_jobs: Annotated[int, typer.Option(help="Jobs before the first drift score.", min=2)] = 10,
    drift_threshold: Annotated[float, typer.Option(help="Drift score that warns.")] = 3.0,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM), with --ssl-certfile.")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the choice of shadowed requests.")] = 0,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve the registered models over HTTP: POST /v1/models/NAME/predict, jobs, results, /metrics, /monitor,
    OpenAPI at /docs. Needs an API key: vesalius serve keys add NAME --role admin."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from vesalius.serving.app import create_app
    from vesalius.serving.keys import KeyStore
    from vesalius.serving.ratelimit import parse_rate
    from vesalius.serving.settings import ServeSettings
    from vesalius.serving.uploads import Limits
    from vesalius.workspace import Workspace

    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise VesaliusError("TLS needs both --ssl-keyfile and --ssl-certfile", remedy="give both, or neither")
    settings = ServeSettings(
        root=Workspace.resolve(workspace).serving_dir(),
        workers=workers,
        threads_per_worker=threads,
        queue_limit=queue_limit,
        limits=Limits(max_upload_bytes=parse_size(max_upload), max_voxels=max_voxels),
        retention_s=parse_duration(retention),
        rate_per_minute=parse_rate(rate_limit),
        cors_origins=tuple(cors_origin or ()),
        shadow_fraction=shadow_fraction,
        drift_window=drift_window,
        drift_min_jobs=drift_min_jobs,
        drift_threshold=drift_threshold,
        seed=seed,
    )
    if not KeyStore(settings.keys_file).list():
        raise VesaliusError(
            "no API keys: every request needs one",
            settings.keys_file,
            "add one with: vesalius serve keys add NAME --role admin",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheme = "https" if ssl_certfile else "http"
    out.print(f"Vesalius service: {scheme}://{host}:{port} (OpenAPI at /docs; Ctrl+C stops)", markup=False)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        log_level="info",
        timeout_graceful_shutdown=30,
    )


@monitor_app.command("report")
def report(
    name: Annotated[str, typer.Argument(help="The model's name in the registry.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report as JSON here.")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """How each version of a served model did: jobs, time, score against feedback per day, and staging versions
    run in shadow compared with production."""
    from vesalius.io.atomic import write_json_atomic
    from vesalius.serving.jobs import JobStore
    from vesalius.serving.report import monitor_report
    from vesalius.serving.settings import ServeSettings
    from vesalius.workspace import Workspace

    settings = ServeSettings(root=Workspace.resolve(workspace).serving_dir())
    if not settings.database.is_file():
        raise VesaliusError("no service has run in this workspace", settings.database, "start one with vesalius serve")
    result = monitor_report(JobStore(settings.database), name)
    if not result["versions"]:
        raise VesaliusError(f"no jobs of model '{name}'", settings.database, "check the name: vesalius models list")

    def number(value: float | None, spec: str = ".3f") -> str:
        return "n/a" if value is None else format(value, spec)

    table = Table(title=f"{name}: served versions (score: mean Dice or accuracy against feedback)")
    for column in ("version", "jobs", "succeeded", "failed", "median s", "feedback", "score"):
        table.add_column(column)
    for version, v in result["versions"].items():
        table.add_row(
            version,
            *(str(v[k]) for k in ("jobs", "succeeded", "failed")),
            number(v["median_seconds"], ".2f"),
            str(v["feedback"]),
            number(v["score"]),
        )
    out.print(table)
    for s in result["shadow"]:
        out.print(
            f"shadow: staging {s['staging']} beside production {s['production']} on {s['compared']} requests, "
            f"agreement (mean Dice) {number(s['agreement'])}; on {s['feedback']} with feedback: production "
            f"{number(s['production_dice'])}, staging {number(s['staging_dice'])}",
            markup=False,
        )
    if output is not None:
        write_json_atomic(output, result)
        out.print(f"report written to {output}", markup=False)
