"""API keys (store, roles, reload, the ``serve keys`` commands) and the per-key rate limiter."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vesalius.errors import VesaliusError
from vesalius.serving import ratelimit
from vesalius.serving.commands_keys import keys_app
from vesalius.serving.keys import KEY_PREFIX, ApiKey, KeyStore
from vesalius.serving.ratelimit import RateLimiter, parse_rate, retry_after


def test_a_key_authenticates_once_added_and_not_once_removed(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    token = store.add("pacs", "predict")
    assert token.startswith(KEY_PREFIX) and len(token) == len(KEY_PREFIX) + 43
    key = store.authenticate(token)
    assert key is not None and (key.name, key.role) == ("pacs", "predict")
    for wrong in (None, "", token[:-1], token + "x", token.upper(), "vsk_" + "A" * 43, "x" * 10_000):
        assert store.authenticate(wrong) is None
    store.remove("pacs")
    assert store.authenticate(token) is None and store.list() == []


def test_the_file_holds_hashes_only_with_mode_0600(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "serving" / "keys.json")
    tokens = [store.add("alice", "admin"), store.add("ci-bot", "predict")]
    text = store.path.read_text()
    assert all(token not in text and token[len(KEY_PREFIX) :] not in text for token in tokens)
    entries = json.loads(text)["keys"]
    assert [(e["name"], e["role"], len(e["sha256"])) for e in entries] == [
        ("alice", "admin", 64),
        ("ci-bot", "predict", 64),
    ]
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert [k.name for k in store.list()] == ["alice", "ci-bot"]
    assert all(isinstance(k, ApiKey) and k.created.endswith("+00:00") for k in store.list())


def test_names_and_roles_are_checked(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.add("alice", "admin")
    with pytest.raises(VesaliusError, match="exists already"):
        store.add("alice", "predict")
    with pytest.raises(VesaliusError, match="unknown role 'root'"):
        store.add("bob", "root")
    with pytest.raises(VesaliusError, match="invalid key name"):
        store.add("../bob", "predict")
    with pytest.raises(VesaliusError, match="no key named 'bob'"):
        store.remove("bob")
    assert [k.name for k in store.list()] == ["alice"]


def test_admin_may_do_what_predict_may_not_the_reverse() -> None:
    admin, predict = ApiKey("a", "admin", ""), ApiKey("p", "predict", "")
    assert admin.allows("admin") and admin.allows("predict") and predict.allows("predict")
    assert not predict.allows("admin")
    with pytest.raises(VesaliusError):
        predict.allows("superuser")


def test_a_running_store_sees_keys_added_and_removed_by_another(tmp_path: Path) -> None:
    service, command = KeyStore(tmp_path / "keys.json"), KeyStore(tmp_path / "keys.json")
    assert service.authenticate("vsk_nothing") is None  # no file yet
    first = command.add("first", "predict")
    assert service.authenticate(first) is not None
    second = command.add("second", "admin")  # same second, maybe same size: the inode changes with every write
    assert service.authenticate(second) is not None
    command.remove("first")
    assert service.authenticate(first) is None and service.authenticate(second) is not None


def test_a_damaged_file_lets_nobody_in(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    token = store.add("alice", "admin")
    good = store.path.read_text(encoding="utf-8")
    for damaged in ('{"format": 1, "keys": [{"name": "alice"}]}', good.replace('"sha256": "', '"sha256": "\u00e9')):
        store.path.write_text(damaged, encoding="utf-8")
        with pytest.raises(VesaliusError, match="not in the expected form"):
            store.authenticate(token)
    store.path.write_text("{not json", encoding="utf-8")
    with pytest.raises(VesaliusError, match="cannot read the API keys"):
        store.authenticate(token)
    store.path.write_text(good, encoding="utf-8")
    assert store.authenticate(token) is not None


def test_keys_commands(tmp_path: Path) -> None:
    runner, ws = CliRunner(), str(tmp_path / "ws")
    added = runner.invoke(keys_app, ["add", "pacs", "--role", "admin", "-w", ws])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith(KEY_PREFIX) and "\n" not in token  # the key alone on standard output
    assert "cannot be shown again" in added.stderr
    store = KeyStore(tmp_path / "ws" / "serving" / "keys.json")
    assert store.authenticate(token) == store.list()[0]
    listed = runner.invoke(keys_app, ["list", "--workspace", ws])
    assert listed.exit_code == 0 and listed.stdout.split()[:2] == ["pacs", "admin"] and token not in listed.output
    again = runner.invoke(keys_app, ["add", "pacs", "-w", ws])
    assert isinstance(again.exception, VesaliusError) and "exists already" in str(again.exception)
    assert runner.invoke(keys_app, ["remove", "pacs", "-w", ws]).exit_code == 0
    assert store.authenticate(token) is None
    assert "no API keys" in runner.invoke(keys_app, ["list", "-w", ws]).stdout


def test_the_default_workspace_is_used(tmp_path: Path, _isolated_home: Path) -> None:
    assert CliRunner().invoke(keys_app, ["add", "ci"]).exit_code == 0
    assert [k.role for k in KeyStore(_isolated_home / "serving" / "keys.json").list()] == ["predict"]


# -- rate limits -----------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_sustained_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, burst=3, clock=clock)  # one a second
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") == pytest.approx(1.0)
    assert limiter.check("b") == 0.0  # each key its own bucket
    clock.now += 0.25
    assert limiter.check("a") == pytest.approx(0.75)  # a refusal takes nothing
    clock.now += 0.75
    assert limiter.check("a") == 0.0
    assert limiter.check("a") == pytest.approx(1.0)
    clock.now += 3600
    assert [limiter.check("a") for _ in range(4)][-1] > 0  # a long pause refills to the burst, not beyond


def test_no_limit_and_default_burst() -> None:
    assert all(RateLimiter(0).check("a") == 0.0 for _ in range(1000))
    assert RateLimiter(600).burst == 60 and RateLimiter(30).burst == 10
    with pytest.raises(VesaliusError, match="burst 0"):
        RateLimiter(60, burst=0)


def test_threads_share_the_bucket_exactly() -> None:
    limiter = RateLimiter(1, burst=50, clock=FakeClock())  # the clock stands still: 50 tokens in all
    allowed: list[int] = []

    def hammer() -> None:
        allowed.append(sum(limiter.check("k") == 0.0 for _ in range(100)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50


def test_full_buckets_are_forgotten_when_names_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "_MAX_BUCKETS", 3)
    clock = FakeClock()
    limiter = RateLimiter(60, burst=2, clock=clock)
    limiter.check("busy")
    limiter.check("busy")
    for name in ("x", "y"):
        limiter.check(name)
    clock.now += 1.5  # x and y are full again, busy is not
    limiter.check("new")
    assert sorted(limiter._buckets) == ["busy", "new"]
    assert [limiter.check("busy"), limiter.check("busy")] == [0.0, pytest.approx(0.5)]  # its 1.5 tokens were kept


@pytest.mark.parametrize(
    ("text", "per_minute"),
    [("600/min", 600.0), ("10/s", 600.0), ("1000/h", 1000 / 60), (" 2.5 / Second ", 150.0), ("0", 0.0), ("off", 0.0)],
)
def test_parse_rate(text: str, per_minute: float) -> None:
    assert parse_rate(text) == pytest.approx(per_minute)


@pytest.mark.parametrize("text", ["fast", "600", "10/day", "-5/min", "1e999/s", "/min", "10/min/s", ""])
def test_parse_rate_refuses_garbage_in_one_line(text: str) -> None:
    with pytest.raises(VesaliusError, match="cannot read the rate") as caught:
        parse_rate(text)
    assert "\n" not in str(caught.value)


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert [retry_after(w) for w in (0.001, 0.999, 1.0, 1.0005, 59.2)] == [1, 1, 1, 2, 60]
