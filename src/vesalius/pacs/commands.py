"""``vesalius pacs``: find studies and series on a DICOMweb PACS, retrieve a series, store files.

``find`` lists studies (QIDO-RS) or, with ``--study``, that study's series; ``get`` writes one series into a folder
(WADO-RS); ``push`` stores DICOM files (STOW-RS). ``vesalius predict --from-pacs`` (in the main command) uses the
same connection options. Every option can come from the environment (``VESALIUS_PACS_URL``, ``..._USER``,
``..._PASSWORD``, ``..._TOKEN``), so that secrets stay out of the shell history.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from vesalius.errors import VesaliusError

if TYPE_CHECKING:  # the client loads only when a command runs: `vesalius --help` stays quick
    from vesalius.pacs.client import Pacs

__all__ = ["PasswordOption", "TimeoutOption", "TokenOption", "UrlOption", "UserOption", "connect", "pacs_app"]

pacs_app = typer.Typer(
    help="A PACS over DICOMweb: find studies and series, get a series, push files.", no_args_is_help=True
)
out = Console(soft_wrap=True)

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="VESALIUS_PACS_URL", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."),
]
UserOption = Annotated[
    str | None, typer.Option("--user", envvar="VESALIUS_PACS_USER", help="User for HTTP basic authentication.")
]
PasswordOption = Annotated[
    str | None,
    typer.Option("--password", envvar="VESALIUS_PACS_PASSWORD", help="Password (better: $VESALIUS_PACS_PASSWORD)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="VESALIUS_PACS_TOKEN", help="Bearer token (better: $VESALIUS_PACS_TOKEN)."),
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for each answer.")]


def connect(url: str, user: str | None, password: str | None, token: str | None, timeout: float = 60.0) -> Pacs:
    """The :class:`~vesalius.pacs.client.Pacs` of the command-line options."""
    from vesalius.pacs.client import Pacs

    return Pacs(url, user=user, password=password, token=token, timeout_s=timeout)


def _table(uid_column: str, uids: list[str], *columns: str) -> Table:
    """A table whose first column holds UIDs, never wrapped (they are copied into the next command)."""
    table = Table()
    table.add_column(uid_column, no_wrap=True, min_width=max([len(uid_column), *map(len, uids)]))
    for column in columns:
        table.add_column(column)
    return table


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


@pacs_app.command("find")
def find(
    url: UrlOption,
    patient: Annotated[str | None, typer.Option("--patient", help="PatientID (wildcards * and ?).")] = None,
    patient_name: Annotated[str | None, typer.Option("--patient-name", help="PatientName, e.g. 'DOE^*'.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="StudyInstanceUID: list this study's series.")] = None,
    accession: Annotated[str | None, typer.Option("--accession", help="AccessionNumber.")] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="CT, MR, SEG, SR, ...")] = None,
    date: Annotated[str | None, typer.Option("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many studies.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    user: UserOption = None,
    password: PasswordOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Find studies (QIDO-RS); with --study, list the series of that study."""
    pacs = connect(url, user, password, token, timeout)
    if study and not (patient or patient_name or accession or date):
        series = pacs.find_series(study, modality=modality)
        if as_json:
            _say(json.dumps([asdict(s) for s in series], indent=2))
            return
        table = _table("series UID", [s.series_uid for s in series], "modality", "number", "description", "instances")
        for s in series:
            count = "" if s.num_instances is None else str(s.num_instances)
            table.add_row(s.series_uid, s.modality, s.number, s.description, count)
        out.print(table)
        _say(f"{len(series)} series in study {study}")
        return
    studies = pacs.find_studies(
        patient_id=patient,
        patient_name=patient_name,
        study_uid=study,
        accession=accession,
        modality=modality,
        date=date,
        limit=limit,
    )
    if as_json:
        _say(json.dumps([asdict(s) for s in studies], indent=2))
        return
    uids = [s.study_uid for s in studies]
    table = _table("study UID", uids, "patient ID", "patient name", "date", "modalities", "series", "description")
    for s in studies:
        count = "" if s.num_series is None else str(s.num_series)
        table.add_row(s.study_uid, s.patient_id, s.patient_name, s.date, ",".join(s.modalities), count, s.description)
    out.print(table)
    _say(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} found")


@pacs_app.command("get")
def get(
    url: UrlOption,
    study: Annotated[str, typer.Option("--study", help="StudyInstanceUID.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the series' files.")],
    series: Annotated[
        str | None, typer.Option("--series", help="SeriesInstanceUID (default: the study's only image series).")
    ] = None,
    user: UserOption = None,
    password: PasswordOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Retrieve one series (WADO-RS) into a folder, one file per instance."""
    pacs = connect(url, user, password, token, timeout)
    chosen = pacs.image_series(study, series)
    written = pacs.retrieve_series(chosen, output)
    _say(f"{len(written)} files of series {chosen.series_uid} ({chosen.modality}) written to {output}")


@pacs_app.command("push")
def push(
    url: UrlOption,
    files: Annotated[list[Path], typer.Argument(help="DICOM files or folders (walked recursively).")],
    user: UserOption = None,
    password: PasswordOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = 60.0,
    batch: Annotated[int, typer.Option("--batch", help="Objects per STOW-RS request.")] = 50,
) -> None:
    """Store DICOM files (STOW-RS)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    pacs = connect(url, user, password, token, timeout)
    paths = sorted({p for f in files for p in ([f] if f.is_file() else f.rglob("*")) if p.is_file()})
    if not paths:
        raise VesaliusError("no files to push", remedy="give DICOM files or folders that hold them")
    stored = 0
    for start in range(0, len(paths), max(batch, 1)):
        datasets = []
        for path in paths[start : start + max(batch, 1)]:
            try:
                datasets.append(pydicom.dcmread(path))
            except (InvalidDicomError, OSError, ValueError) as e:
                raise VesaliusError(f"not a readable DICOM file ({e})", path, "push DICOM files only") from None
        stored += len(pacs.store(datasets))
    _say(f"{stored} object(s) stored on {pacs.url}")
