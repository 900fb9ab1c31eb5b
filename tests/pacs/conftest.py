"""The PACS the tests talk to: one Orthanc for the session (:mod:`tests.pacs.orthanc`), emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pacs.orthanc import Orthanc, installed, running_orthanc


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 (basic authentication) with DICOMweb; skips, saying why, where it is not installed."""
    why = installed()
    if why:
        pytest.skip(why)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def pacs(orthanc: Orthanc) -> Iterator[Orthanc]:
    """The shared Orthanc, emptied before the test."""
    orthanc.clear()
    yield orthanc
