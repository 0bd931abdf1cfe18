"""Dataset download: served from a local HTTP server on 127.0.0.1 or a stub opener, never the internet."""

from __future__ import annotations

import hashlib
import importlib
import io
import random
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rd2t.data.download import SOURCES, Source, download
from rd2t.errors import InputError


def make_tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Enough bytes that a resume from the middle is meaningful; random so xz cannot shrink them away.
PAYLOAD_FILES = {
    "bottle/train/good/000.png": random.Random(0).randbytes(20_000),
    "bottle/readme.txt": b"hello",
    "license.txt": b"CC BY-NC-SA 4.0",
}


class Server:
    """Serves one archive at /<name>, honouring 'Range: bytes=N-' unless told not to."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many bytes, then drop the connection
        self.requests: list[dict[str, str]] = []
        self.bytes_sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(dict(self.headers))
                start = 0
                range_header = self.headers.get("Range")
                if range_header and server.honour_range:
                    start = int(range_header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(server.payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
                    )
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body = body[: server.cut_after]
                # Counted before the write: the client can finish reading (and the test check the count)
                # before this thread runs again on a loaded machine.
                server.bytes_sent += len(body)
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# A proxy-free opener: an http_proxy variable in the environment must not divert 127.0.0.1.
LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    payload = make_tar(PAYLOAD_FILES)
    server = Server(payload)
    source = Source(
        url=server.url,
        filename="mvtec_anomaly_detection.tar.xz",
        sha256=hashlib.sha256(payload).hexdigest(),
        marker="bottle",
        licence="test",
    )
    monkeypatch.setitem(SOURCES, "mvtec", source)
    yield server
    server.close()


def test_download_verify_extract(tmp_path: Path, served: Server) -> None:
    root = download("mvtec", tmp_path, opener=LOCAL_OPENER, progress=False)
    assert root == tmp_path / "mvtec"
    assert (root / "bottle" / "train" / "good" / "000.png").read_bytes() == PAYLOAD_FILES[
        "bottle/train/good/000.png"
    ]
    assert (root / "license.txt").is_file()
    # The archive fetched by this call is removed once unpacked; nothing partial is left behind.
    assert not (tmp_path / "mvtec_anomaly_detection.tar.xz").exists()
    assert not (tmp_path / "mvtec_anomaly_detection.tar.xz.part").exists()

    def no_network(request: Any, timeout: float = 0) -> Any:
        raise AssertionError("a completed download must not go to the network again")

    assert download("mvtec", tmp_path, opener=no_network, progress=False) == root


def test_download_resumes_partial_file(tmp_path: Path, served: Server) -> None:
    half = len(served.payload) // 2
    (tmp_path / "mvtec_anomaly_detection.tar.xz.part").write_bytes(served.payload[:half])
    root = download("mvtec", tmp_path, opener=LOCAL_OPENER, progress=False)
    assert served.requests[0]["Range"] == f"bytes={half}-"
    assert served.bytes_sent == len(served.payload) - half
    assert (root / "bottle" / "readme.txt").read_bytes() == b"hello"


def test_download_restarts_when_server_ignores_range(tmp_path: Path, served: Server) -> None:
    served.honour_range = False
    (tmp_path / "mvtec_anomaly_detection.tar.xz.part").write_bytes(b"stale bytes from another file")
    root = download("mvtec", tmp_path, opener=LOCAL_OPENER, progress=False)
    assert served.bytes_sent == len(served.payload)
    assert (root / "license.txt").is_file()


def test_interrupted_download_keeps_part_then_resumes(tmp_path: Path, served: Server) -> None:
    served.cut_after = 1000
    with pytest.raises(InputError) as error:
        download("mvtec", tmp_path, opener=LOCAL_OPENER, progress=False)
    part = tmp_path / "mvtec_anomaly_detection.tar.xz.part"
    assert "\n" not in str(error.value) and str(part) in str(error.value) and "again" in str(error.value)
    assert part.stat().st_size == 1000
    served.cut_after = None
    root = download("mvtec", tmp_path, opener=LOCAL_OPENER, progress=False)
    assert served.requests[-1]["Range"] == "bytes=1000-"
    assert (root / "license.txt").is_file()


def test_checksum_mismatch_names_file_and_keeps_it(
    tmp_path: Path, served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "0" * 64
    monkeypatch.setitem(
        SOURCES, "mvtec", Source(served.url, "mvtec_anomaly_detection.tar.xz", wrong, "bottle", "")
    )
    with pytest.raises(InputError) as error:
        download("mvtec", tmp_path, opener=LOCAL_OPENER, progress=False)
    archive = tmp_path / "mvtec_anomaly_detection.tar.xz"
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{archive}: sha256 mismatch")
    assert wrong in text and hashlib.sha256(served.payload).hexdigest() in text
    assert archive.read_bytes() == served.payload  # kept for inspection, not silently deleted
    assert not (tmp_path / "mvtec").exists()


def test_unreachable_host_fails_fast_in_one_line(tmp_path: Path) -> None:
    timeouts: list[float] = []

    def offline(request: urllib.request.Request, timeout: float = 0) -> Any:
        timeouts.append(timeout)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    start = time.monotonic()
    with pytest.raises(InputError) as error:
        download("mvtec", tmp_path, opener=offline, progress=False)
    assert time.monotonic() - start < 2
    assert 0 < timeouts[0] <= 10
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith("cannot reach www.mydrive.ch to download mvtec: ")
    assert "Network is unreachable" in text and SOURCES["mvtec"].url in text and "--root" in text
    assert not list(tmp_path.glob("*.part"))


def test_refused_connection_with_real_urlopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A port nobody listens on: the default opener path, still without leaving this machine.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    monkeypatch.setitem(
        SOURCES, "visa", Source(f"http://127.0.0.1:{port}/VisA.tar", "VisA.tar", None, "candle", "")
    )
    start = time.monotonic()
    with pytest.raises(InputError) as error:
        download("visa", tmp_path, opener=LOCAL_OPENER, progress=False)
    assert time.monotonic() - start < 10
    assert str(error.value).startswith("cannot reach 127.0.0.1 to download visa: ")


def test_http_error_is_one_line(tmp_path: Path) -> None:
    def not_found(request: urllib.request.Request, timeout: float = 0) -> Any:
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    with pytest.raises(InputError) as error:
        download("btad", tmp_path, opener=not_found, progress=False)
    assert "\n" not in str(error.value) and "HTTP 404" in str(error.value) and "--root" in str(error.value)


class FakeResponse(io.BytesIO):
    """What a stub opener hands back: enough of http.client.HTTPResponse for download()."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.status = 200
        self.headers = {"Content-Length": str(len(data))}


def test_zip_archive_with_wrapping_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("BTech_Dataset_transformed/01/train/ok/0000.bmp", b"bmp")
        zipped.writestr("BTech_Dataset_transformed/03/test/ko/0000.bmp", b"bmp")
    data = buffer.getvalue()
    monkeypatch.setitem(
        SOURCES, "btad", Source("https://example.invalid/btad.zip", "btad.zip", None, "01", "")
    )
    seen: list[str] = []

    def stub(request: urllib.request.Request, timeout: float = 0) -> FakeResponse:
        seen.append(request.full_url)
        return FakeResponse(data)

    root = download("btad", tmp_path, opener=stub, progress=False)
    assert seen == ["https://example.invalid/btad.zip"]
    assert root == tmp_path / "btad" / "BTech_Dataset_transformed"
    assert (root / "01" / "train" / "ok" / "0000.bmp").read_bytes() == b"bmp"


def test_unsafe_tar_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_tar({"candle/ok.txt": b"ok", "../escaped.txt": b"evil"}, mode="w")
    monkeypatch.setitem(
        SOURCES, "visa", Source("https://example.invalid/VisA.tar", "VisA.tar", None, "candle", "")
    )
    root = tmp_path / "root"
    with pytest.raises(InputError) as error:
        download("visa", root, opener=lambda request, timeout=0: FakeResponse(data), progress=False)
    assert str(error.value).startswith(f"{root / 'VisA.tar'}: cannot unpack")
    assert not (tmp_path / "escaped.txt").exists() and not (root / "escaped.txt").exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mpdd: no download available"):
        download("mpdd", tmp_path, progress=False)


def test_official_sources_and_short_timeout() -> None:
    assert SOURCES["mvtec"].url.startswith("https://www.mydrive.ch/")
    assert SOURCES["mvtec"].url.endswith("/mvtec_anomaly_detection.tar.xz")
    assert SOURCES["btad"].url == "https://avires.dimi.uniud.it/papers/btad/btad.zip"
    assert SOURCES["visa"].url == "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
    assert all(s.sha256 is None or len(s.sha256) == 64 for s in SOURCES.values())
    # rd2t.data re-exports the download() function under the module's name, hence import_module.
    assert importlib.import_module("rd2t.data.download").TIMEOUT_S <= 10
    assert "1cls" in (download.__doc__ or "")
