"""The station under faults: kill -9 mid-load, the MQTT broker going away, a full queue, two watchers.

Real processes (`rd2t serve`, `rd2t watch`, `mosquitto`) on loopback, bounded in count and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the station needs the [station] extra")
httpx = pytest.importorskip("httpx")

from tests.conftest import texture  # noqa: E402
from tests.test_service import (  # noqa: E402
    MQTT_HOST,
    MQTT_PORT,
    Subscriber,
    free_port,
    images,
    need,
    png_bytes,
    port_open,
    retrained_copy,
    running_server,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def rd2t(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rd2t", *args], env=ENV, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


@contextmanager
def serve_process(model: Path, images_dir: Path, log: Path, *extra: str):
    """`rd2t serve` in a subprocess, ready when /readyz answers 200; yields (process, client)."""
    port = free_port()
    proc = rd2t(
        "serve",
        str(model),
        "--port",
        str(port),
        "--images",
        str(images_dir),
        "--threads",
        "1",
        *extra,
        log=log,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.time() + 90
    try:
        while True:
            assert proc.poll() is None, f"rd2t serve exited: {log.read_text()[-2000:]}"
            assert time.time() < deadline, "rd2t serve did not become ready"
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def test_kill_9_under_load_loses_nothing_acknowledged(trained_cli_model, tmp_path):
    from rd2t.service.settings import StationSettings

    images_dir, log = tmp_path / "station", tmp_path / "serve.log"
    bodies = [png_bytes(texture(np.random.default_rng(i), 200)) for i in range(8)]
    acknowledged: dict[int, str] = {}  # id -> sha256 of what was sent
    stop = threading.Event()

    with serve_process(trained_cli_model, images_dir, log, "--workers", "2") as (proc, client):

        def load(k: int):
            with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
                for i in range(40):  # bounded: at most 4 x 40 requests
                    if stop.is_set():
                        return
                    data = bodies[(k + i) % len(bodies)]
                    try:
                        r = c.post("/v1/inspect", content=data, headers={"Content-Type": "image/png"})
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 200:
                        acknowledged[r.json()["id"]] = hashlib.sha256(data).hexdigest()

        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(acknowledged) < 12 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
    assert len(acknowledged) >= 12

    db_file = images_dir / "rd2t.sqlite"
    with sqlite3.connect(db_file) as conn:  # the database opens and is whole
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The restart: the same code `rd2t serve` starts with, in this process (a subprocess costs seconds).
    settings = StationSettings(trained_cli_model, images=images_dir, threads=1)
    with running_server(settings) as client:
        for i, sha in acknowledged.items():
            rec = client.get(f"/v1/inspections/{i}")
            assert rec.status_code == 200, f"acknowledged inspection {i} lost"
            assert rec.json()["image_sha256"] == sha
        rows = client.get("/v1/inspections", params={"limit": 500}).json()
        assert rows["total"] >= len(acknowledged)
        for rec in rows["items"]:  # no row points at a missing file
            for link in ("image", "overlay", "thumb"):
                assert client.get(rec["links"][link]).status_code == 200, (rec["id"], link)
        r = client.post("/v1/inspect", content=bodies[0], headers={"Content-Type": "image/png"})
        assert r.status_code == 200


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_makes_a_running_serve_load_the_model_put_in_place(trained_cli_model, tmp_path):
    """`systemctl reload` (kill -HUP): the process keeps running and serving, and scores the next part with
    the file now at --model."""
    from rd2t.files import file_sha256

    live = tmp_path / "current.pt"
    shutil.copy(trained_cli_model, live)
    new_id = file_sha256(retrained_copy(trained_cli_model, tmp_path / "next.pt"))[:12]
    body = png_bytes(texture(np.random.default_rng(5), 96))
    log = tmp_path / "serve.log"
    with serve_process(live, tmp_path / "station", log) as (proc, client):
        old_id = client.get("/v1/model").json()["id"]
        os.replace(tmp_path / "next.pt", live)  # the retrained model, moved into place atomically
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while client.get("/v1/model").json()["id"] != new_id:
            assert proc.poll() is None, f"rd2t serve exited on SIGHUP: {log.read_text()[-2000:]}"
            assert time.time() < deadline, f"not reloaded: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        r = client.post("/v1/inspect", content=body, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["model"]["id"] == new_id != old_id
        assert f"model {new_id}" in log.read_text() and proc.poll() is None


def test_full_queue_gives_503_with_retry_after(trained_cli_model, tmp_path):
    from rd2t.service.settings import StationSettings

    s = StationSettings(trained_cli_model, images=tmp_path / "st", threads=1, workers=1, queue=1)
    body = png_bytes(texture(np.random.default_rng(3), 900))
    with running_server(s) as client:
        start = threading.Barrier(12)
        answers: list[httpx.Response] = []

        def one():
            with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
                start.wait()
                answers.append(c.post("/v1/inspect", content=body, headers={"Content-Type": "image/png"}))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503} and len(codes) == 12, codes
        refused = [r for r in answers if r.status_code == 503]
        assert all(r.headers["Retry-After"] == "1" and "queue" in r.json()["detail"] for r in refused)
        ok_ids = {r.json()["id"] for r in answers if r.status_code == 200}
        assert client.get("/v1/inspections").json()["total"] == len(ok_ids)  # refused ones left no row
        assert (
            client.post("/v1/inspect", content=body, headers={"Content-Type": "image/png"}).status_code == 200
        )
        assert "rd2t_queue_depth 0.0" in client.get("/metrics").text


def test_broker_down_and_back(trained_cli_model, tmp_path):
    from rd2t.service.settings import StationSettings

    need(shutil.which("mosquitto") is not None, "the mosquitto program")
    port = free_port()

    def broker():
        p = subprocess.Popen(
            ["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 10
        while not port_open("127.0.0.1", port):
            assert time.time() < deadline and p.poll() is None, "mosquitto did not start"
            time.sleep(0.05)
        return p

    mosquitto = broker()
    s = StationSettings(
        trained_cli_model, images=tmp_path / "st", threads=1, mqtt=f"mqtt://127.0.0.1:{port}/line/verdicts"
    )
    try:
        with running_server(s) as client:
            publisher = client.app.state.station.publisher
            sub = Subscriber(port, "line/verdicts")
            try:
                data = images(3, seed=7)
                deadline = time.time() + 10
                while not publisher.connected and time.time() < deadline:
                    time.sleep(0.05)
                first = client.post("/v1/inspect", files={"file": ("a.png", data[0])}).json()
                sub.wait_for(first["id"])

                # Cleared before the broker goes: the subscriber may re-subscribe the moment it is back,
                # before this thread could clear the event (the test then waited for a second subscribe).
                sub.subscribed.clear()
                mosquitto.terminate()
                mosquitto.wait(10)
                t0 = time.perf_counter()
                while_down = client.post("/v1/inspect", files={"file": ("b.png", data[1])})
                assert while_down.status_code == 200  # inspection does not wait for the broker
                assert time.perf_counter() - t0 < 5
                deadline = time.time() + 10
                while client.get("/readyz").json()["mqtt"] is not False:  # reported, still ready
                    assert time.time() < deadline, "the broker's absence is not reported"
                    time.sleep(0.1)
                assert client.get("/readyz").status_code == 200
                assert "rd2t_mqtt_connected 0.0" in client.get("/metrics").text.splitlines()
                assert "not connected: verdicts wait in a queue" in client.get("/model").text

                mosquitto = broker()
                assert sub.subscribed.wait(15), "subscriber did not come back"
                deadline = time.time() + 40  # paho's back-off: 1, 2, 4 ... s
                while not publisher.connected and time.time() < deadline:
                    time.sleep(0.1)
                assert publisher.connected, "the station did not reconnect to the broker"
                assert client.get("/readyz").json()["mqtt"] is True
                model_page = client.get("/model").text
                assert f"127.0.0.1:{port}" in model_page and "not connected" not in model_page
                assert "rd2t_mqtt_connected 1.0" in client.get("/metrics").text.splitlines()
                after = client.post("/v1/inspect", files={"file": ("c.png", data[2])}).json()
                assert sub.wait_for(after["id"])["decision"] == after["decision"]
            finally:
                sub.close()
    finally:
        mosquitto.terminate()
        mosquitto.wait(10)


def count_rows(db_file: Path) -> tuple[int, int]:
    if not db_file.exists():
        return 0, 0
    try:
        with sqlite3.connect(db_file, timeout=10) as conn:
            return conn.execute("SELECT count(*), count(DISTINCT source) FROM inspections").fetchone()
    except sqlite3.OperationalError:  # the schema is not made yet
        return 0, 0


def wait_rows(db_file: Path, n: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while count_rows(db_file)[0] < n:
        assert time.time() < deadline, f"{count_rows(db_file)[0]} of {n} files inspected"
        time.sleep(0.2)


def test_two_watchers_do_not_double_count_and_a_restart_skips_done_files(trained_cli_model, tmp_path):
    folder, images_dir, done = tmp_path / "camera", tmp_path / "station", tmp_path / "done"
    folder.mkdir()
    for i, data in enumerate(images(6, seed=100)):
        (folder / f"{i:03d}.png").write_bytes(data)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    db_file = images_dir / "rd2t.sqlite"
    args = ["watch", str(folder), str(trained_cli_model), "--images", str(images_dir), "--interval", "0.2"]
    watchers = [rd2t(*args, "--threads", "1", log=tmp_path / f"watch{k}.log") for k in range(2)]
    try:
        wait_rows(db_file, 6)
        time.sleep(1.5)  # both keep scanning: nothing is counted twice
        assert count_rows(db_file) == (6, 6)
    finally:
        for w in watchers:
            w.terminate()
            w.wait(30)
    assert (
        "broken.png: cannot read image"
        in (tmp_path / "watch0.log").read_text() + (tmp_path / "watch1.log").read_text()
    )

    # A restart (the watcher's code in this process): done files are moved, not inspected again.
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station
    from rd2t.service.watch import Watcher

    (folder / "006.png").write_bytes(images(1, seed=200)[0])  # arrives while no watcher runs
    station = Station(StationSettings(trained_cli_model, images=images_dir, threads=1))
    try:
        watcher = Watcher(station, folder, done)
        assert watcher.scan() == 0  # first sight: a file is taken once its size and time hold still
        assert watcher.scan() == 1
        assert sorted(p.name for p in done.glob("*.png")) == [f"{i:03d}.png" for i in range(7)]
        assert (done / "unreadable" / "broken.png").exists() and not list(folder.iterdir())
        assert count_rows(db_file) == (7, 7)
    finally:
        station.close()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_makes_a_running_watch_score_the_next_file_with_the_model_put_in_place(
    trained_cli_model, tmp_path
):
    from rd2t.files import file_sha256

    folder, images_dir, log = tmp_path / "camera", tmp_path / "station", tmp_path / "watch.log"
    folder.mkdir()
    live = tmp_path / "current.pt"
    shutil.copy(trained_cli_model, live)
    old_id = file_sha256(live)[:12]
    new_id = file_sha256(retrained_copy(trained_cli_model, tmp_path / "next.pt"))[:12]
    first, second = images(2, seed=300)
    (folder / "first.png").write_bytes(first)
    db_file = images_dir / "rd2t.sqlite"
    watcher = rd2t("watch", str(folder), str(live), "--images", str(images_dir), "--interval", "0.2",
                   "--threads", "1", log=log)  # fmt: skip
    try:
        wait_rows(db_file, 1)
        os.replace(tmp_path / "next.pt", live)
        watcher.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while f"model {new_id}" not in log.read_text():
            assert watcher.poll() is None, f"rd2t watch exited on SIGHUP: {log.read_text()[-2000:]}"
            assert time.time() < deadline, f"not reloaded: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        (folder / "second.png").write_bytes(second)
        wait_rows(db_file, 2)
        with sqlite3.connect(db_file) as conn:
            models = [m for (m,) in conn.execute("SELECT model_id FROM inspections ORDER BY id")]
        assert models == [old_id, new_id] and watcher.poll() is None
    finally:
        watcher.terminate()
        watcher.wait(30)


def test_the_line_controller_sees_the_station_online_its_model_and_offline_even_after_kill_9(
    trained_cli_model, tmp_path
):
    """`<topic>/status`, retained: "online" with the model at start and after a reload; "offline" from the
    broker itself (the Last Will) when the process is killed; "offline" from the station on a clean stop."""
    import paho.mqtt.client as mqtt

    from rd2t.files import file_sha256

    need(port_open(MQTT_HOST, MQTT_PORT), f"an MQTT broker on {MQTT_HOST}:{MQTT_PORT}")
    topic = f"rd2t-test/{uuid.uuid4().hex}"
    states: list[dict] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{topic}/status", qos=1)
    watcher.on_message = lambda c, u, m: m.payload and states.append(json.loads(m.payload))
    watcher.connect(MQTT_HOST, MQTT_PORT)
    watcher.loop_start()

    def next_state(state: str, after: int) -> dict:
        deadline = time.time() + 20
        while time.time() < deadline:
            found = [s for s in states[after:] if s["state"] == state]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {state!r} status after message {after}: {states}")

    live = tmp_path / "current.pt"
    shutil.copy(trained_cli_model, live)
    old_id = file_sha256(live)[:12]
    new_id = file_sha256(retrained_copy(trained_cli_model, tmp_path / "next.pt"))[:12]
    mqtt_url = f"mqtt://{MQTT_HOST}:{MQTT_PORT}/{topic}"
    try:
        with serve_process(live, tmp_path / "st", tmp_path / "a.log", "--mqtt", mqtt_url) as (proc, client):
            assert next_state("online", 0)["model_id"] == old_id
            seen = len(states)
            os.replace(tmp_path / "next.pt", live)
            assert client.post("/v1/model/reload").status_code == 200
            assert next_state("online", seen)["model_id"] == new_id  # the controller learns the new model
            seen = len(states)
            assert client.post("/v1/threshold", json={"value": 1.25, "by": "ana"}).status_code == 200
            assert next_state("online", seen)["threshold"] == 1.25  # and each threshold change
            seen = len(states)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert next_state("offline", seen)["reason"] == "connection lost"  # said by the broker
        seen = len(states)
        with serve_process(live, tmp_path / "st", tmp_path / "b.log", "--mqtt", mqtt_url) as (proc, client):
            assert next_state("online", seen)["model_id"] == new_id  # the retained "offline" replaced
            seen = len(states)
            proc.terminate()
            proc.wait(30)
            assert next_state("offline", seen)["reason"] == "stopped"
    finally:
        watcher.publish(f"{topic}/status", b"", qos=1, retain=True).wait_for_publish(
            5
        )  # no retained leftover
        watcher.disconnect()
        watcher.loop_stop()


def test_a_watcher_tells_the_controller_of_a_threshold_changed_on_the_page(trained_cli_model, tmp_path):
    """A `rd2t watch` (here its Station) picks up a threshold applied through a `rd2t serve` on the same
    database before its next scan, and its retained status says the new value."""
    import paho.mqtt.client as mqtt

    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    need(port_open(MQTT_HOST, MQTT_PORT), f"an MQTT broker on {MQTT_HOST}:{MQTT_PORT}")
    topic = f"rd2t-test/{uuid.uuid4().hex}"
    thresholds: list[float] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    listener.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{topic}/status", qos=1)
    listener.on_message = lambda c, u, m: (
        m.payload and thresholds.append(json.loads(m.payload).get("threshold"))
    )
    listener.connect(MQTT_HOST, MQTT_PORT)
    listener.loop_start()
    mqtt_url = f"mqtt://{MQTT_HOST}:{MQTT_PORT}/{topic}"
    watcher = Station(StationSettings(trained_cli_model, images=tmp_path / "st", threads=1, mqtt=mqtt_url))
    page = Station(StationSettings(trained_cli_model, images=tmp_path / "st", threads=1))  # the serve's
    try:
        page.set_threshold(3.5, by="ana")
        assert watcher.refresh_threshold() == 3.5  # what Watcher.scan does first
        deadline = time.time() + 15
        while 3.5 not in thresholds:
            assert time.time() < deadline, f"the watcher's status did not say 3.5: {thresholds}"
            time.sleep(0.05)
    finally:
        watcher.close()
        page.close()
        listener.publish(f"{topic}/status", b"", qos=1, retain=True).wait_for_publish(5)
        listener.disconnect()
        listener.loop_stop()
