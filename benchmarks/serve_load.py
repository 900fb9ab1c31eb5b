"""``vesalius serve`` under load: concurrent clients over loopback, latency, throughput, back-pressure, peak RSS,
and a promotion in the middle of the run.

Run it from the project's root::

    python benchmarks/serve_load.py                         # 16 and 64 clients, 60 s each, 2 workers
    python benchmarks/serve_load.py --clients 8 --seconds 20

For each client count a fresh workspace ``benchmarks/.work/serve_load/cN`` (wiped first) gets the Hippocampus
package as ``hippocampus`` v1 (production) and an admin and a predict key; ``vesalius serve`` starts on a free port
as a process of its own (``--rate-limit 0``, so that the only 429 answers are the queue's back-pressure) and one
warm-up request loads the model. Then N clients (asyncio tasks sharing one ``httpx.AsyncClient``) loop for
``--seconds``: each sends a Hippocampus image of ``../shared/data/Task04_Hippocampus/imagesTr`` (``--cases`` of
them, round-robin) to ``POST /v1/models/hippocampus/predict?wait=60`` and waits for the finished job. A ``200``
with state ``succeeded`` is a success (its latency: from sending to the answer); a ``429`` is deliberate
back-pressure (the queue is full): the client sleeps ``Retry-After`` and sends again; anything else (a failed job,
a ``202`` after 60 s, another status, a transport error) is an error. When the time is up, no new request starts and
the ones in flight are waited for; throughput is succeeded jobs per second of the whole run.

At half time an admin client uploads the second package (``POST /v1/models/hippocampus/versions``) and promotes it
(``PUT /v1/models/hippocampus/aliases/production``); answers are counted by the version that made them (jobs queued
before the promotion finish on v1, by design). Peak RSS: the summed ``VmRSS`` of the service's process group, sampled
every 0.2 s, and the service's ``VmHWM`` at the end. ``/metrics`` is read every second (largest queue depth seen) and
at the end (mean job time per version, jobs by state).

Models: ``benchmarks/.work/deploy/hippocampus.vpkg`` (v1) and ``hippocampus_int8.vpkg`` (v2), made by
``benchmarks/deploy.py``; without them, or without the shared data, it says so and exits 0. The clients run on the
same machine as the service, so they take some of its CPU (reported as client CPU seconds).

Prints a table and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO_ROOT, emit_json, machine_and_date, shared_data

WORK_DIR = REPO_ROOT / "benchmarks" / ".work"
LOAD_DIR = WORK_DIR / "serve_load"
DEPLOY_DIR = WORK_DIR / "deploy"
MODEL = "hippocampus"
OCTET = {"Content-Type": "application/octet-stream"}


# -- the service ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A ``vesalius serve`` process (its own process group) and the keys to talk to it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    admin: str
    user: str

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_service(workspace: Path, v1: Path, args: argparse.Namespace) -> Service:
    """A fresh workspace with ``v1`` as the production version and two keys; the service started on it."""
    import httpx

    from vesalius.serving.keys import KeyStore
    from vesalius.serving.registry import Registry

    shutil.rmtree(workspace, ignore_errors=True)
    serving = workspace / "serving"
    registry = Registry(serving / "registry")
    registry.add(v1, MODEL)
    registry.promote(MODEL, "v1", "production")
    keys = KeyStore(serving / "keys.json")
    admin, user = keys.add("ops", "admin"), keys.add("load", "predict")
    port = free_port()
    log = workspace / "serve.log"
    command = [sys.executable, "-m", "vesalius", "serve", "--port", str(port), "-w", str(workspace)]
    command += ["--workers", str(args.workers), "--queue-limit", str(args.queue_limit), "--rate-limit", "0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    service = Service(f"http://127.0.0.1:{port}", process, log, admin, user)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service ended (exit {process.returncode}):\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{service.url}/healthz", timeout=1).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"the service did not answer /healthz within 60 s:\n{log.read_text(errors='replace')}")


# -- memory and CPU of the service ---------------------------------------------------------------------------------
def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core; ``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the summed ``VmRSS`` of a process group every ``interval_s`` in a thread of its own."""

    def __init__(self, pgid: int, interval_s: float = 0.2) -> None:
        self.pgid = pgid
        self.interval_s = interval_s
        self.peak_kb = 0
        self.processes = 1
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        pids = _group_pids(self.pgid)
        n = 0
        while not self._done.is_set():
            if n % 10 == 0:
                pids = _group_pids(self.pgid) or pids
                self.processes = max(self.processes, len(pids))
            self.peak_kb = max(self.peak_kb, sum(_status_kb(pid, "VmRSS") for pid in pids))
            n += 1
            self._done.wait(self.interval_s)


# -- the load ------------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the clients saw."""

    requests: int = 0
    succeeded: int = 0
    rejected_429: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    rejection_latencies: list[float] = field(default_factory=list)
    retry_after: list[int] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    v1_after_promotion: int = 0
    first_v2_answer_s: float | None = None
    error_samples: list[str] = field(default_factory=list)
    queue_depth_max: float = 0.0
    queue_depth: list[tuple[float, float]] = field(default_factory=list)
    busy_max: float = 0.0
    promotion: dict[str, Any] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what[:300])


async def client_loop(
    http: Any, service: Service, cases: list[bytes], counter: list[int], start: float, end: float, tally: Tally
) -> None:
    import httpx

    headers = {**OCTET, "Authorization": f"Bearer {service.user}"}
    while time.monotonic() < end:
        data = cases[counter[0] % len(cases)]
        counter[0] += 1
        tally.requests += 1
        sent = time.monotonic()
        try:
            response = await http.post(
                f"/v1/models/{MODEL}/predict", params={"wait": 60}, content=data, headers=headers
            )
        except httpx.HTTPError as e:
            tally.error(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.5)
            continue
        answered = time.monotonic()
        if response.status_code == 429:
            tally.rejected_429 += 1
            tally.rejection_latencies.append(answered - sent)
            wait = int(response.headers.get("Retry-After", "1"))
            tally.retry_after.append(wait)
            await asyncio.sleep(min(wait, max(0.0, end - time.monotonic())))
            continue
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200 and body.get("state") == "succeeded":
            tally.succeeded += 1
            tally.latencies.append(answered - sent)
            version = str(body.get("version"))
            tally.versions[version] = tally.versions.get(version, 0) + 1
            promoted = tally.promotion.get("promoted_at_s")
            if version == "v2" and tally.first_v2_answer_s is None:
                tally.first_v2_answer_s = answered - start
            elif version == "v1" and promoted is not None and answered - start > promoted:
                tally.v1_after_promotion += 1
        else:
            tally.error(f"HTTP {response.status_code} state={body.get('state')} error={body.get('error')}")


async def promote_midway(http: Any, service: Service, v2: Path, start: float, at: float, tally: Tally) -> None:
    """At ``start + at``: upload ``v2`` and promote it to production (the admin key)."""
    headers = {"Authorization": f"Bearer {service.admin}"}
    await asyncio.sleep(max(0.0, start + at - time.monotonic()))
    try:
        await _promote(http, headers, v2, start, tally)
    except Exception as e:  # reported, never the end of the run
        tally.promotion = {"error": f"{type(e).__name__}: {e}"}


async def _promote(http: Any, headers: dict[str, str], v2: Path, start: float, tally: Tally) -> None:
    begin = time.monotonic()
    added = await http.post(f"/v1/models/{MODEL}/versions", content=v2.read_bytes(), headers={**headers, **OCTET})
    uploaded = time.monotonic()
    if added.status_code != 201:
        tally.promotion = {"error": f"add: HTTP {added.status_code} {added.text[:200]}"}
        return
    version = added.json()["version"]
    promoted = await http.put(f"/v1/models/{MODEL}/aliases/production", json={"version": version}, headers=headers)
    done = time.monotonic()
    tally.promotion = {
        "version": version,
        "add_started_at_s": round(begin - start, 2),
        "add_seconds": round(uploaded - begin, 3),
        "promote_seconds": round(done - uploaded, 3),
        "promoted_at_s": round(done - start, 2),
        "status": promoted.status_code,
    }


def _metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


async def watch_metrics(http: Any, start: float, end: float, tally: Tally) -> None:
    """``/metrics`` every second until ``end``: the queue depth (the largest, and when) and busy workers seen."""
    while time.monotonic() < end:
        try:
            for name, _, value in _metric_samples((await http.get("/metrics")).text):
                if name == "vesalius_queue_depth":
                    tally.queue_depth_max = max(tally.queue_depth_max, value)
                    tally.queue_depth.append((round(time.monotonic() - start, 1), value))
                elif name == "vesalius_workers_busy":
                    tally.busy_max = max(tally.busy_max, value)
        except Exception:  # a missed sample is no result
            pass
        await asyncio.sleep(1.0)


async def load(service: Service, cases: list[bytes], clients: int, v2: Path, seconds: float) -> tuple[Tally, float]:
    import httpx

    tally = Tally()
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=timeout) as http:
        start = time.monotonic()
        end = start + seconds
        counter = [0]
        tasks = [client_loop(http, service, cases, counter, start, end, tally) for _ in range(clients)]
        tasks.append(promote_midway(http, service, v2, start, seconds / 2, tally))
        tasks.append(watch_metrics(http, start, end, tally))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    return tally, elapsed


def final_metrics(service: Service) -> dict[str, Any]:
    import httpx

    samples = _metric_samples(httpx.get(f"{service.url}/metrics", timeout=10).text)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    jobs: dict[str, float] = {}
    statuses: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "vesalius_job_seconds_sum":
            sums[labels["version"]] = value
        elif name == "vesalius_job_seconds_count":
            counts[labels["version"]] = value
        elif name == "vesalius_jobs_total":
            key = f"{labels['version']} {labels['state']}"
            jobs[key] = jobs.get(key, 0) + value
        elif name == "vesalius_requests_total" and labels.get("route", "").endswith("/predict"):
            statuses[labels["status"]] = statuses.get(labels["status"], 0) + value
    return {
        "job_seconds_mean": {v: round(sums[v] / counts[v], 3) for v in sums if counts.get(v)},
        "jobs_total": jobs,
        "predict_answers_by_status": statuses,
    }


def run_one(clients: int, v1: Path, v2: Path, cases: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    workspace = LOAD_DIR / f"c{clients}"
    service = start_service(workspace, v1, args)
    try:
        headers = {**OCTET, "Authorization": f"Bearer {service.user}"}
        tick = time.monotonic()
        warm = httpx.post(
            f"{service.url}/v1/models/{MODEL}/predict",
            params={"wait": 60},
            content=cases[0],
            headers=headers,
            timeout=120,
        )
        warmup_s = time.monotonic() - tick
        if warm.status_code != 200 or warm.json().get("state") != "succeeded":
            raise RuntimeError(f"the warm-up request failed: HTTP {warm.status_code} {warm.text[:500]}")
        cpu_before = _cpu_seconds(service.process.pid)
        busy_before = _machine_busy_seconds()
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        load_before = os.getloadavg()[0]
        print(f"{clients} clients for {args.seconds:.0f} s (load average before: {load_before:.2f}) ...", flush=True)
        with RssSampler(service.process.pid) as sampler:
            tally, elapsed = asyncio.run(load(service, cases, clients, v2, args.seconds))
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        service_cpu = _cpu_seconds(service.process.pid) - cpu_before
        machine_busy = _machine_busy_seconds() - busy_before
        hwm_kb = _status_kb(service.process.pid, "VmHWM")
        metrics = final_metrics(service)
    finally:
        service.stop()
    log_text = service.log.read_text(errors="replace")
    problems = [line for line in log_text.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    lat = np.asarray(tally.latencies) if tally.latencies else np.asarray([np.nan])
    client_cpu = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": tally.requests,
        "succeeded": tally.succeeded,
        "rejected_429": tally.rejected_429,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "throughput_per_s": round(tally.succeeded / elapsed, 3),
        "latency_s": {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "mean": round(float(np.mean(lat)), 3),
            "max": round(float(np.max(lat)), 3),
        },
        "rejection_latency_p50_s": round(float(np.median(tally.rejection_latencies)), 4)
        if tally.rejection_latencies
        else None,
        "retry_after_s": {"min": min(tally.retry_after), "max": max(tally.retry_after)} if tally.retry_after else None,
        "peak_rss_mb": round(sampler.peak_kb / 1024, 1),
        "vmhwm_mb": round(hwm_kb / 1024, 1),
        "service_processes": sampler.processes,
        "versions": dict(sorted(tally.versions.items())),
        "promotion": {
            **tally.promotion,
            "first_v2_answer_at_s": None if tally.first_v2_answer_s is None else round(tally.first_v2_answer_s, 2),
            "v1_answers_after_promotion": tally.v1_after_promotion,
        },
        "queue_depth_max": tally.queue_depth_max,
        "queue_depth_max_after_10s": max((d for t, d in tally.queue_depth if t >= 10), default=None),
        "queue_depth_every_s": [d for _, d in tally.queue_depth],
        "workers_busy_max": tally.busy_max,
        **metrics,
        "warmup_request_s": round(warmup_s, 3),
        "service_cpu_s": round(service_cpu, 1),
        "machine_busy_cpu_s": round(machine_busy, 1),
        "other_processes_cpu_s": round(machine_busy - service_cpu - client_cpu, 1),
        "client_cpu_s": round(client_cpu, 1),
        "load_average_before": round(load_before, 2),
        "service_log_errors": len(problems),
        "service_log_error_samples": problems[:5],
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["clients", "requests", "succeeded", "429", "errors", "jobs/s", "p50 s", "p95 s", "p99 s", "peak RSS MB"]
    head += ["v1/v2 answers", "promoted at s", "queue max", "job s (v1/v2)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        lat = r["latency_s"]
        means = r.get("job_seconds_mean", {})
        cells = [r["clients"], r["requests"], r["succeeded"], r["rejected_429"], r["errors"], r["throughput_per_s"]]
        cells += [lat["p50"], lat["p95"], lat["p99"], r["peak_rss_mb"]]
        cells += [f"{r['versions'].get('v1', 0)}/{r['versions'].get('v2', 0)}", r["promotion"].get("promoted_at_s")]
        cells += [r["queue_depth_max"], f"{means.get('v1', 'n/a')}/{means.get('v2', 'n/a')}"]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrent clients (one run each)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each run")
    parser.add_argument("--workers", type=int, default=2, help="the service's prediction threads")
    parser.add_argument(
        "--queue-limit", type=int, default=32, help="the service's queue limit (429 beyond it); below --clients"
    )
    parser.add_argument("--cases", type=int, default=8, help="Hippocampus images sent round-robin")
    parser.add_argument("--v1", type=Path, default=DEPLOY_DIR / f"{MODEL}.vpkg", help="package served first")
    parser.add_argument("--v2", type=Path, default=DEPLOY_DIR / f"{MODEL}_int8.vpkg", help="package promoted midway")
    args = parser.parse_args()
    data = shared_data("Task04_Hippocampus")
    if data is None:
        print("../shared/data/Task04_Hippocampus is absent: serve_load skipped", flush=True)
        return
    missing = [p for p in (args.v1, args.v2) if not p.is_file()]
    if missing:
        print(
            f"no package at {', '.join(str(p) for p in missing)}: make them with 'python benchmarks/deploy.py "
            "--sets hippocampus' (or give --v1/--v2); serve_load skipped",
            flush=True,
        )
        return
    cases = [p.read_bytes() for p in sorted((data / "imagesTr").glob("*.nii.gz"))[: args.cases]]
    shutil.rmtree(LOAD_DIR, ignore_errors=True)
    LOAD_DIR.mkdir(parents=True)
    machine = {**machine_and_date(), "cpu_model": cpu_model(), "cores": len(os.sched_getaffinity(0))}
    print(f"{machine['cpu_model']}, {machine['cores']} cores; {len(cases)} cases of {data / 'imagesTr'}", flush=True)
    rows = []
    for clients in args.clients:
        row = run_one(clients, args.v1, args.v2, cases, args)
        rows.append(row)
        print(
            f"  {clients} clients: {row['succeeded']} succeeded, {row['rejected_429']} x 429, {row['errors']} errors, "
            f"{row['throughput_per_s']} jobs/s, p50 {row['latency_s']['p50']} s, peak RSS {row['peak_rss_mb']} MB, "
            f"versions {row['versions']}, promotion {row['promotion']}",
            flush=True,
        )
        print(
            f"    queue depth every second: {row['queue_depth_every_s']}; CPU seconds: service {row['service_cpu_s']}, "
            f"clients {row['client_cpu_s']}, other processes {row['other_processes_cpu_s']}",
            flush=True,
        )
        for sample in row["error_samples"][:3]:
            print(f"    error: {sample}", flush=True)
    print_table(rows)
    settings = {"workers": args.workers, "queue_limit": args.queue_limit, "seconds": args.seconds}
    settings |= {"cases": len(cases), "v1": args.v1.name, "v2": args.v2.name, "wait": 60, "rate_limit": 0}
    emit_json(
        {"benchmark": "serve_load", **machine, "settings": settings, "runs": {str(r["clients"]): r for r in rows}}
    )


if __name__ == "__main__":
    main()
