"""A DICOMweb connection to a PACS: QIDO-RS search, WADO-RS retrieval of a series, STOW-RS storage.

Why ``dicomweb-client`` underneath: it implements the three services' requests and multipart encodings and is
kept by the highdicom authors; this module adds what a command-line user needs on top: authentication options
(HTTP basic, bearer token), result tables with the attributes people search by, a retrieved series written as
files that :func:`vesalius.io.dicom.read_dicom_series` reads, a check that no instance went missing on the way,
and one-line errors for every failure (server down, wrong credentials, study or series not found) that name
the server without the password.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydicom.dataset import Dataset

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path

__all__ = ["Pacs", "SeriesSummary", "StudySummary"]

#: QIDO-RS attributes asked for beyond the defaults, so that a listing shows what people choose a study by.
STUDY_FIELDS = (
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_FIELDS = ("Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances")


def _value(item: dict[str, Any], tag: str) -> str:
    """The first value of a DICOM JSON attribute as text (a person name's alphabetic form), or ``""``."""
    values = item.get(tag, {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # PN in DICOM JSON: {"Alphabetic": "DOE^JANE"}
        return str(first.get("Alphabetic", ""))
    return str(first)


def _values(item: dict[str, Any], tag: str) -> list[str]:
    return [str(v) for v in item.get(tag, {}).get("Value") or []]


def _count(item: dict[str, Any], tag: str) -> int | None:
    text = _value(item, tag)
    return int(text) if text.strip().lstrip("-").isdigit() else None


@dataclass(frozen=True)
class StudySummary:
    """One study as QIDO-RS lists it."""

    study_uid: str
    patient_id: str
    patient_name: str
    date: str
    description: str
    accession: str
    modalities: tuple[str, ...]
    num_series: int | None
    num_instances: int | None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> StudySummary:
        return cls(
            study_uid=_value(item, "0020000D"),
            patient_id=_value(item, "00100020"),
            patient_name=_value(item, "00100010"),
            date=_value(item, "00080020"),
            description=_value(item, "00081030"),
            accession=_value(item, "00080050"),
            modalities=tuple(_values(item, "00080061")),
            num_series=_count(item, "00201206"),
            num_instances=_count(item, "00201208"),
        )


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    modality: str
    number: str
    description: str
    num_instances: int | None

    @classmethod
    def from_json(cls, item: dict[str, Any], study_uid: str) -> SeriesSummary:
        return cls(
            study_uid=_value(item, "0020000D") or study_uid,
            series_uid=_value(item, "0020000E"),
            modality=_value(item, "00080060"),
            number=_value(item, "00200011"),
            description=_value(item, "0008103E"),
            num_instances=_count(item, "00201209"),
        )


#: Modalities of objects that are not images to segment (results of earlier runs, reports, presentation states).
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC"})


def _literal_wildcards_session() -> Any:
    import requests

    class LiteralWildcards(requests.Session):
        """Sends QIDO-RS wildcards ``*`` and ``?`` in the query as they are, not percent-encoded: both are legal
        there (RFC 3986), and Orthanc 1.10 matches ``%2A`` literally, so an encoded ``DOE*`` finds nobody."""

        def send(self, request: Any, **kwargs: Any) -> Any:
            if request.url and "?" in request.url:
                path, query = request.url.split("?", 1)
                request.url = f"{path}?{query.replace('%2A', '*').replace('%3F', '?')}"
            return super().send(request, **kwargs)

    return LiteralWildcards()


@dataclass
class Pacs:
    """A DICOMweb server and how to authenticate with it.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc).
        user, password: HTTP basic authentication (both or neither).
        token: a bearer token (``Authorization: Bearer ...``); not together with ``user``.
        timeout_s: seconds to wait for the server's answer to each request.
        attempts: tries of each request when the server cannot be reached or answers 429, 408, 503 or 504
            (exponential back-off from 0.5 s).
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    attempts: int = 3

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VesaliusError(
                f"'{self.url}' is not a DICOMweb address",
                remedy="give http(s)://HOST[:PORT]/PATH, e.g. http://127.0.0.1:8042/dicom-web",
            )
        if parts.username:  # credentials in the address: take them out, so that no message shows them
            self.user = self.user or parts.username
            self.password = self.password or parts.password
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        self.url = self.url.rstrip("/")
        if self.token and self.user:
            raise VesaliusError("both a user and a bearer token given", remedy="give --user/--password or --token")
        if (self.user is None) != (self.password is None):
            raise VesaliusError(
                "basic authentication needs both a user and a password",
                remedy="give --user and --password (or $VESALIUS_PACS_PASSWORD)",
            )
        self._client: Any = None

    # -- the connection -------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``dicomweb_client.DICOMwebClient``, made on first use."""
        if self._client is None:
            try:
                from dicomweb_client import DICOMwebClient
            except ImportError:
                raise VesaliusError(
                    "DICOMweb needs the dicomweb-client package", remedy="pip install 'vesalius[pacs]'"
                ) from None
            session = _literal_wildcards_session()
            if self.user is not None:
                session.auth = (self.user, self.password or "")
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._client = DICOMwebClient(self.url, session=session, headers=headers, timeout=self.timeout_s)
            # dicomweb-client retries every failed request, a refused connection too, 5 times over ~30 s; a
            # command-line user waiting on a server that is down wants the answer within seconds
            self._client.set_http_retry_params(max_attempts=self.attempts, wait_exponential_multiplier=250)
        return self._client

    @contextmanager
    def _request(self, what: str, *, not_found: str | None = None) -> Iterator[None]:
        """Turn the failures of one exchange with the server into a one-line :class:`VesaliusError`."""
        import requests

        try:
            yield
        except requests.exceptions.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status in (401, 403):
                raise VesaliusError(
                    f"the PACS at {self.url} refused the credentials (HTTP {status}) while {what}",
                    remedy="check --user/--password or --token",
                ) from None
            if status == 404 and not_found:
                raise VesaliusError(f"{not_found} on the PACS at {self.url}", remedy="check the UID") from None
            raise VesaliusError(
                f"the PACS at {self.url} answered HTTP {status} while {what}",
                remedy="check the address (the DICOMweb root, e.g. .../dicom-web) and the server's log",
            ) from None
        except requests.exceptions.Timeout:
            raise VesaliusError(
                f"the PACS at {self.url} did not answer within {self.timeout_s:g} s while {what}",
                remedy="try again, or give a longer --timeout",
            ) from None
        except requests.exceptions.ConnectionError:
            raise VesaliusError(
                f"cannot reach the PACS at {self.url} while {what}",
                remedy="check --url and that the server is running",
            ) from None
        except requests.exceptions.RequestException as e:
            raise VesaliusError(f"talking to the PACS at {self.url} failed while {what}: {e}") from None

    # -- QIDO-RS ---------------------------------------------------------------------------------------------

    def find_studies(
        self,
        *,
        patient_id: str | None = None,
        patient_name: str | None = None,
        study_uid: str | None = None,
        accession: str | None = None,
        modality: str | None = None,
        date: str | None = None,
        limit: int | None = None,
    ) -> list[StudySummary]:
        """The studies matching every filter given (``patient_name`` and ``patient_id`` may use ``*`` and ``?``;
        ``date``: ``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD``)."""
        filters = {
            "PatientID": patient_id,
            "PatientName": patient_name,
            "StudyInstanceUID": study_uid,
            "AccessionNumber": accession,
            "ModalitiesInStudy": modality,
            "StudyDate": date,
        }
        given = {k: v for k, v in filters.items() if v}
        with self._request("searching for studies"):
            found = self.client.search_for_studies(search_filters=given, fields=list(STUDY_FIELDS), limit=limit)
        return [StudySummary.from_json(item) for item in found]

    def find_series(self, study_uid: str, *, modality: str | None = None) -> list[SeriesSummary]:
        """The series of one study (of one modality when given), in series-number order."""
        filters = {"Modality": modality} if modality else None
        with self._request(f"listing the series of study {study_uid}", not_found=f"study {study_uid} not found"):
            found = self.client.search_for_series(
                study_instance_uid=study_uid, search_filters=filters, fields=list(SERIES_FIELDS)
            )
        series = [SeriesSummary.from_json(item, study_uid) for item in found]
        return sorted(series, key=lambda s: (int(s.number) if s.number.isdigit() else 1 << 30, s.series_uid))

    def image_series(self, study_uid: str, series_uid: str | None = None) -> SeriesSummary:
        """The series to work on: ``series_uid``, or else the study's only image series (SEG, SR and other
        results of earlier runs do not count)."""
        series = self.find_series(study_uid)
        if not series:
            raise VesaliusError(
                f"study {study_uid} not found (or empty) on the PACS at {self.url}",
                remedy="check the UID: vesalius pacs find --url URL",
            )
        if series_uid:
            chosen = [s for s in series if s.series_uid == series_uid]
            if not chosen:
                raise VesaliusError(
                    f"series {series_uid} not found in study {study_uid} on the PACS at {self.url}",
                    remedy=f"check the UID: vesalius pacs find --url URL --study {study_uid}",
                )
            return chosen[0]
        images = [s for s in series if s.modality.upper() not in NON_IMAGE_MODALITIES]
        if len(images) != 1:
            listing = "; ".join(f"{s.series_uid} ({s.modality} '{s.description}')" for s in images) or "none"
            raise VesaliusError(
                f"study {study_uid} has {len(images)} image series ({listing})",
                remedy="choose one with --series UID",
            )
        return images[0]

    # -- WADO-RS ---------------------------------------------------------------------------------------------

    def retrieve_series(self, series: SeriesSummary, folder: str | Path) -> list[Path]:
        """Every instance of ``series`` written into ``folder`` as ``<SOPInstanceUID>.dcm`` (atomically).

        Raises when the server delivers fewer instances than its QIDO-RS listing counts (a transfer that lost
        slices would otherwise give a shorter volume without a word).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        what = f"retrieving series {series.series_uid}"
        with self._request(what, not_found=f"series {series.series_uid} not found"):
            for ds in self.client.iter_series(series.study_uid, series.series_uid):
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                with atomic_path(path) as tmp:
                    ds.save_as(tmp, enforce_file_format=True)
                written.append(path)
        if not written or (series.num_instances is not None and len(written) < series.num_instances):
            raise VesaliusError(
                f"the PACS at {self.url} delivered {len(written)} of the {series.num_instances} instances of "
                f"series {series.series_uid}",
                remedy="try again; if it persists, check the series on the PACS",
            )
        return written

    # -- STOW-RS ---------------------------------------------------------------------------------------------

    def store(self, datasets: Sequence[Dataset]) -> list[str]:
        """Store ``datasets`` (one request); returns their SOP Instance UIDs. Raises when any is refused."""
        if not datasets:
            return []
        with self._request(f"storing {len(datasets)} object(s)"):
            response = self.client.store_instances(list(datasets))
        failed = response.get("FailedSOPSequence") or []
        if failed:
            reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')}" for item in failed)
            raise VesaliusError(
                f"the PACS at {self.url} refused {len(failed)} of {len(datasets)} object(s): {reasons}",
                remedy="check the server's log for why",
            )
        return [str(ds.SOPInstanceUID) for ds in datasets]
