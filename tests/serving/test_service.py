"""``vesalius serve`` as a client meets it: a real uvicorn process on a free port, spoken to over HTTP.

Covers authentication, limits, bad uploads, the job life cycle and results in the input's geometry and format,
restarts with queued and running jobs, promotion and rollback while requests run, drift on shifted inputs, the
metrics, feedback and the monitor report, and the audit log.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import Running, start
from vesalius.cli import main
from vesalius.io import Image, read_image, write_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom(planned: Path) -> Path:
    """A phantom case of the training data set (NIfTI), as a client would send it."""
    return planned / "datasets" / "ph" / "imagesTr" / "phantom_000_0000.nii.gz"


@pytest.fixture(scope="module")
def phantom_labels(planned: Path) -> Path:
    return planned / "datasets" / "ph" / "labelsTr" / "phantom_000.nii.gz"


def wait_for(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout} s")


def post(client: httpx.Client, name: str, data: bytes, **params: object) -> httpx.Response:
    return client.post(
        f"/v1/models/{name}/predict", content=data, params=params, headers={"Content-Type": "application/octet-stream"}
    )


def metric_samples(text: str) -> dict[str, list]:  # type: ignore[type-arg]
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_keys_and_roles(serve) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve()
    with running.client() as anonymous:
        response = post(anonymous, "phantom", b"x")
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    with running.client("vsk_wrong") as wrong:
        assert wrong.get("/v1/models").status_code == 401
    with running.client(running.user) as user:
        assert user.get("/v1/models").status_code == 200
        forbidden = user.put("/v1/models/phantom/aliases/production", json={"version": "v1"})
        assert forbidden.status_code == 403 and "admin" in forbidden.json()["error"]
    with running.client(running.admin) as admin:
        assert admin.put("/v1/models/phantom/aliases/staging", json={"version": "v1"}).status_code == 200
    audit = [json.loads(line) for line in (running.workspace / "serving" / "audit.jsonl").read_text().splitlines()]
    assert {"key": "reader", "action": "promote", "status": 403, "outcome": "refused"}.items() <= audit[0].items()
    assert audit[-1]["key"] == "ops" and audit[-1]["version"] == "v1" and audit[-1]["alias"] == "staging"
    assert running.user not in (running.workspace / "serving" / "audit.jsonl").read_text()


def test_a_job_from_upload_to_result_in_the_input_geometry(serve, phantom: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve()
    with running.client(running.user) as client:
        response = post(client, "phantom", phantom.read_bytes())
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
        assert job["model"] == "phantom" and job["version"] == "v1" and len(job["package_sha256"]) == 64
        status = wait_for(client, job["id"])
        assert status["state"] == "succeeded", status
        assert status["progress"] == 1.0 and status["timings"]["predict_s"] > 0
        result = client.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 200
        assert result.headers["X-Vesalius-Version"] == "v1"
        assert result.headers["X-Vesalius-Package-SHA256"] == job["package_sha256"]
        (tmp_path / "labels.nii.gz").write_bytes(result.content)
        labels, image = read_image(tmp_path / "labels.nii.gz"), read_image(phantom)
        assert labels.spatial_shape == image.spatial_shape
        np.testing.assert_allclose(labels.geometry.spacing, image.geometry.spacing)
        np.testing.assert_allclose(labels.geometry.origin, image.geometry.origin)
        np.testing.assert_allclose(labels.geometry.direction, image.geometry.direction)
        measurements = client.get(f"/v1/jobs/{job['id']}/result/measurements").json()
        measured = {entry["label"]: entry["voxels"] for entry in measurements["labels"]}
        assert measured and measured == {k: int((labels.array[0] == k).sum()) for k in measured}
        assert client.get(f"/v1/jobs/{job['id']}/result/nope").status_code == 404
        # synchronous answer when the job ends in time
        done = post(client, "phantom", phantom.read_bytes(), wait=60)
        assert done.status_code == 200 and done.json()["state"] == "succeeded"
        # another key does not see this key's jobs; deleting removes the files
    with running.client(running.admin) as admin:
        assert admin.get(f"/v1/jobs/{job['id']}").status_code == 200
    with running.client(running.user) as client:
        assert client.delete(f"/v1/jobs/{job['id']}").json()["state"] == "deleted"
        assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 410
        assert not (running.workspace / "serving" / "jobs" / job["id"]).exists()


def test_bad_uploads_and_limits(serve, phantom: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve("--max-upload", "200k", "--max-voxels", "1000000", "--rate-limit", "12/min")
    with running.client(running.user) as client:
        response = post(client, "phantom", b"just some text, no image" * 10)
        assert response.status_code == 415 and "NIfTI" in response.json()["error"]
        assert post(client, "phantom", b"\0" * 300_000).status_code == 413
        huge = Image(np.zeros((1, 120, 120, 80), np.uint8), read_image(phantom).geometry)  # 1.15 M voxels
        write_image(huge, tmp_path / "huge.nii.gz")
        refused = post(client, "phantom", (tmp_path / "huge.nii.gz").read_bytes())
        assert refused.status_code == 413 and "voxels" in refused.json()["error"]
        assert post(client, "nobody", phantom.read_bytes()).status_code == 404
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32, 3), np.uint8), isVector=True), tmp_path / "colour.png")
        job = post(client, "phantom", (tmp_path / "colour.png").read_bytes()).json()
        failed = wait_for(client, job["id"])
        assert failed["state"] == "failed" and "channel" in failed["error"] and str(tmp_path) not in failed["error"]
        codes = [client.get("/v1/models").status_code for _ in range(12)]
        assert 429 in codes
        limited = client.get("/v1/models")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_a_full_queue_answers_429_with_retry_after(serve, phantom: Path) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve("--workers", "1", "--queue-limit", "2")
    data = phantom.read_bytes()

    def send(_: int) -> httpx.Response:
        with running.client(running.user) as client:
            return post(client, "phantom", data)

    with ThreadPoolExecutor(8) as pool:  # a burst: every request is received before any job is stored
        answers = list(pool.map(send, range(8)))
    codes = [a.status_code for a in answers]
    assert 429 in codes and codes.count(202) <= 4, codes  # the queue's 2, and the few the worker took meanwhile
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)


def test_a_killed_service_loses_no_job(serve, phantom: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = read_image(phantom)
    big = Image(np.tile(image.array, (1, 2, 2, 1)), image.geometry)  # a second or two per job
    write_image(big, tmp_path / "big.nii.gz")
    data = (tmp_path / "big.nii.gz").read_bytes()
    running: Running = serve("--workers", "1")
    with running.client(running.user) as client:
        ids = [post(client, "phantom", data).json()["id"] for _ in range(3)]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{ids[0]}").json()["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
    running.stop(signal.SIGKILL)
    restarted = serve("--workers", "1")
    with restarted.client(restarted.user) as client:
        states = [wait_for(client, i, timeout=300) for i in ids]
    assert [s["state"] for s in states] == ["succeeded"] * 3
    assert states[0]["attempts"] == 2 and states[2]["attempts"] == 1
    assert "interrupted job(s) queued again" in restarted.log_text()


def test_promotion_and_rollback_while_requests_run(serve, phantom: Path, segmentation_packages) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve("--workers", "2")
    data = phantom.read_bytes()
    answers: list[tuple[float, float, httpx.Response]] = []  # when the request was sent, when answered, the answer
    stop = threading.Event()

    def client_loop() -> None:
        with running.client(running.user) as client:
            while not stop.is_set():
                sent = time.monotonic()
                answer = post(client, "phantom", data, wait=60)
                answers.append((sent, time.monotonic(), answer))

    def wait_for_answer(sent_after: float, version: str) -> None:
        """Until a request sent after ``sent_after`` has been answered by ``version`` (or 120 s)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(t > sent_after and a.json().get("version") == version for t, _, a in list(answers)):
                return
            time.sleep(0.1)
        raise AssertionError(f"no answer from {version} for a request sent after the change")

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for t in threads:
        t.start()
    with running.client(running.admin) as admin:
        added = admin.post(
            "/v1/models/phantom/versions",
            content=segmentation_packages[1].read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert added.status_code == 201 and added.json()["version"] == "v2"
        promoting = time.monotonic()
        assert admin.put("/v1/models/phantom/aliases/production", json={"version": "v2"}).status_code == 200
        promoted = time.monotonic()
        wait_for_answer(promoted, "v2")
        rolling_back = time.monotonic()
        assert admin.post("/v1/models/phantom/rollback").json()["version"] == "v1"
        rolled_back = time.monotonic()
        wait_for_answer(rolled_back, "v1")
    stop.set()
    for t in threads:
        t.join()
    assert all(a.status_code == 200 and a.json()["state"] == "succeeded" for _, _, a in answers), answers
    # a job keeps the version it was resolved to when it was sent: after a change, new requests get the new version
    assert all(a.json()["version"] == "v2" for t, done, a in answers if t > promoted and done < rolling_back)
    assert all(a.json()["version"] == "v1" for t, _, a in answers if t > rolled_back)
    assert all(a.json()["version"] == "v1" for _, done, a in answers if done < promoting)
    assert all(len(a.json()["package_sha256"]) == 64 for _, _, a in answers)


def test_drift_scores_rise_on_shifted_inputs(serve, phantom: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve("--drift-window", "3", "--drift-min-jobs", "3")
    image = read_image(phantom)
    write_image(Image(image.array * 3.0 + 500.0, image.geometry), tmp_path / "bright.nii.gz")
    shifted = read_image(tmp_path / "bright.nii.gz")
    spacing = tuple(s / 2 for s in image.geometry.spacing)  # finer: fewer voxels after resampling, a quick job
    from dataclasses import replace

    write_image(Image(shifted.array, replace(image.geometry, spacing=spacing)), tmp_path / "shifted.nii.gz")

    def scores() -> dict[str, float]:
        samples = metric_samples(httpx.get(f"{running.url}/metrics").text)["vesalius_drift_score"]
        return {s.labels["feature"]: s.value for s in samples}

    with running.client(running.user) as client:
        for _ in range(3):
            assert wait_for(client, post(client, "phantom", phantom.read_bytes()).json()["id"])["state"] == "succeeded"
        before = scores()
        assert before and max(before.values()) < 3.0, before
        for _ in range(3):
            data = (tmp_path / "shifted.nii.gz").read_bytes()
            assert wait_for(client, post(client, "phantom", data).json()["id"])["state"] == "succeeded"
    after = scores()
    spacing_scores = [v for k, v in after.items() if k.startswith("spacing")]
    intensity_scores = [v for k, v in after.items() if k.startswith("intensity")]
    assert max(spacing_scores) > 3.0 and max(intensity_scores) > 3.0, after
    warning = metric_samples(httpx.get(f"{running.url}/metrics").text)["vesalius_drift_warning"]
    assert [s.value for s in warning] == [1.0]
    assert "drift: phantom v1 over threshold" in running.log_text()
    page = httpx.get(f"{running.url}/monitor")
    assert page.status_code == 200 and "<svg" in page.text and "spacing" in page.text


def test_metrics_parse_and_count(serve, phantom: Path) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve()
    with running.client(running.user) as client:
        wait_for(client, post(client, "phantom", phantom.read_bytes()).json()["id"])
        client.get("/v1/jobs/0123456789abcdef")
    samples = metric_samples(httpx.get(f"{running.url}/metrics").text)
    requests = {
        (s.labels["route"], s.labels["status"], s.labels["version"]): s.value for s in samples["vesalius_requests"]
    }
    assert requests[("/v1/models/{name}/predict", "202", "v1")] == 1
    assert requests[("/v1/jobs/{job_id}", "404", "")] == 1
    assert any(s.name == "vesalius_job_seconds_count" and s.value == 1 for s in samples["vesalius_job_seconds"])
    assert [s.value for s in samples["vesalius_workers"]] == [2]
    assert httpx.get(f"{running.url}/readyz").json() == {"status": "ready"}


def test_feedback_shadow_and_monitor_report(
    serve, phantom: Path, phantom_labels: Path, segmentation_packages, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve("--shadow-fraction", "1.0")
    with running.client(running.admin) as admin:
        admin.post(
            "/v1/models/phantom/versions",
            content=segmentation_packages[1].read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert admin.put("/v1/models/phantom/aliases/staging", json={"version": "v2"}).status_code == 200
    with running.client(running.user) as client:
        job = post(client, "phantom", phantom.read_bytes(), wait=60).json()
        assert job["state"] == "succeeded" and job["version"] == "v1"
        served = client.get(f"/v1/jobs/{job['id']}/result").content
        bad = client.post(f"/v1/jobs/{job['id']}/feedback", content=b"not a label map")
        assert bad.status_code == 415
        answer = client.post(f"/v1/jobs/{job['id']}/feedback", content=phantom_labels.read_bytes())
        assert answer.status_code == 200, answer.text
        record = answer.json()
    (tmp_path / "served.nii.gz").write_bytes(served)
    prediction, reference = read_image(tmp_path / "served.nii.gz").array[0], read_image(phantom_labels).array[0]
    organ = 2 * np.sum((prediction == 1) & (reference == 1)) / (np.sum(prediction == 1) + np.sum(reference == 1))
    assert record["dice"]["organ"] == pytest.approx(organ)
    assert record["shadow"]["version"] == "v2"  # the same network: the same label map
    assert record["shadow"]["mean_dice"] == pytest.approx(record["mean_dice"])
    running.stop()
    out = tmp_path / "report.json"
    assert main(["monitor", "report", "phantom", "-w", str(running.workspace), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["versions"]["v1"]["feedback"] == 1
    assert report["versions"]["v1"]["score"] == pytest.approx(record["mean_dice"])
    (shadow,) = report["shadow"]
    assert shadow["staging"] == "v2" and shadow["agreement"] == pytest.approx(1.0) and shadow["feedback"] == 1
    assert "staging v2 beside production v1" in capsys.readouterr().out


def test_a_dicom_series_gets_a_dicom_seg(serve, phantom: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import zipfile

    import pydicom

    image = read_image(phantom)
    series = write_image(image.with_array(np.round(image.array).astype(np.int16)), tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as z:
        for f in sorted(series.iterdir()):
            z.write(f, f"study/{f.name}")
    running: Running = serve()
    with running.client(running.user) as client:
        job = post(client, "phantom", (tmp_path / "series.zip").read_bytes(), wait=60).json()
        assert job["state"] == "succeeded", job
        assert job["input"]["kind"] == "dicom"
        seg = client.get(f"/v1/jobs/{job['id']}/result")
        assert seg.headers["content-type"] == "application/dicom"
        (tmp_path / "seg.dcm").write_bytes(seg.content)
        dataset = pydicom.dcmread(tmp_path / "seg.dcm")
        assert dataset.Modality == "SEG"
        assert (
            dataset.ReferencedSeriesSequence[0].SeriesInstanceUID
            == pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
        )
        labels = client.get(f"/v1/jobs/{job['id']}/result/labels")
        (tmp_path / "labels.nii.gz").write_bytes(labels.content)
        assert read_image(tmp_path / "labels.nii.gz").spatial_shape == image.spatial_shape


def test_a_classifier_answers_probabilities(service_workspace, classification_package: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from vesalius.data.synthetic import make_classification_case
    from vesalius.serving.registry import Registry

    workspace, admin, user = service_workspace
    Registry(workspace / "serving" / "registry").add(classification_package, "spots")
    write_image(make_classification_case(3, True, shape=(48, 48)), tmp_path / "case.nii.gz")
    running = start(workspace, admin=admin, user=user)
    try:
        with running.client(user) as client:
            job = post(client, "spots", (tmp_path / "case.nii.gz").read_bytes(), wait=60).json()
            assert job["state"] == "succeeded", job
            result = client.get(f"/v1/jobs/{job['id']}/result").json()
            assert set(result["probabilities"]) == {"absent", "present"}
            assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert result["version"] == "v1" and result["package_sha256"] == job["package_sha256"]
            feedback = client.post(f"/v1/jobs/{job['id']}/feedback", json={"label": "present"}).json()
            assert feedback["correct"] == (result["predicted"] == "present")
            assert client.get(f"/v1/jobs/{job['id']}/result/gradcam").status_code == 404  # not asked for
            explained = post(client, "spots", (tmp_path / "case.nii.gz").read_bytes(), wait=120, explain="gradcam")
            assert explained.json()["state"] == "succeeded", explained.json()
            overlay = client.get(f"/v1/jobs/{explained.json()['id']}/result/gradcam")
            assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
            (tmp_path / "gradcam.png").write_bytes(overlay.content)
            assert read_image(tmp_path / "gradcam.png").spatial_shape[0] >= 48
    finally:
        running.stop(signal.SIGKILL)


def test_retention_deletes_a_job_s_files_and_keeps_its_record(serve, phantom: Path) -> None:  # type: ignore[no-untyped-def]
    running: Running = serve("--retention", "1s")
    with running.client(running.user) as client:
        job = post(client, "phantom", phantom.read_bytes(), wait=60).json()
        assert job["state"] == "succeeded"
        folder = running.workspace / "serving" / "jobs" / job["id"]
        deadline = time.monotonic() + 30
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not folder.exists()
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "expired"
        assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 410


def test_tls_through_uvicorn(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    key, certificate = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", certificate),
        ],
        check=True,
        capture_output=True,
    )
    running: Running = serve("--ssl-keyfile", str(key), "--ssl-certfile", str(certificate))
    assert running.url.startswith("https://")
    with running.client(running.user) as client:
        assert client.get("/v1/models").status_code == 200
    with pytest.raises(httpx.TransportError):  # plain HTTP is not answered
        httpx.get(running.url.replace("https://", "http://") + "/healthz", timeout=5)
