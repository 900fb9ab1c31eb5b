"""The API fuzzed from its own OpenAPI description (schemathesis): whatever a client sends, never a ``500``.

Runs in process on the ASGI app (schemathesis generates the cases; hypothesis drives them: its pytest plugin does not
run under this pytest), with an admin key (every route reachable), the phantom model registered, and no
workers (jobs stay queued: the fuzzing exercises the requests, not the predictions).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from vesalius.serving.app import create_app
from vesalius.serving.keys import KeyStore
from vesalius.serving.registry import Registry
from vesalius.serving.settings import ServeSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def admin_key(tmp_path_factory: pytest.TempPathFactory, segmentation_packages: tuple[Path, Path]) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("fuzz") / "serving"
    Registry(root / "registry").add(segmentation_packages[0], "phantom")
    return root, KeyStore(root / "keys.json").add("fuzzer", "admin")


def test_no_request_makes_a_server_error(admin_key: tuple[Path, str]) -> None:
    root, key = admin_key
    app = create_app(ServeSettings(root=root, rate_per_minute=0, queue_limit=16), start_workers=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in operations} >= {("POST", "/v1/models/{name}/predict")}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def no_server_error(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
            )

        no_server_error()
