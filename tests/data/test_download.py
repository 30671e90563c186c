"""Tests for raystyle.data.download against a real HTTP server on 127.0.0.1 (no network access)."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from raystyle.data import download as dl
from raystyle.data.download import DATASETS, DEFAULT_BASE_URL, DownloadError, download_dataset

NAME = "horse2zebra"
SPLITS = ("trainA", "trainB", "testA", "testB")


# --------------------------------------------------------------------------------------------
# a tiny file server with switchable Range support and broken-transfer modes


@dataclass
class Served:
    """One answered request: what was asked and how many body bytes went out."""

    path: str
    range: str | None
    status: int
    sent: int


@dataclass
class ServerState:
    root: Path
    ranges: bool = True  # False: ignore Range and always answer 200 with the whole file
    truncate_to: int | None = None  # announce the full length but send only this many bytes
    log: list[Served] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def _record(self, status: int, sent: int) -> None:
        # Called before the response goes out: the client may return as soon as it has read it.
        with self.state.lock:
            self.state.log.append(Served(self.path, self.headers.get("Range"), status, sent))

    def do_GET(self) -> None:
        file = self.state.root / self.path.lstrip("/")
        if not file.is_file():
            self._record(404, 0)
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if self.state.ranges and match:
            start = int(match.group(1))
            if start >= len(data):
                self._record(416, 0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        announced = len(body)
        if self.state.truncate_to is not None:
            body = body[: self.state.truncate_to]  # then the connection closes (HTTP/1.0)
        self._record(status, len(body))
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Server:
    url: str
    state: ServerState

    def sent(self) -> int:
        return sum(r.sent for r in self.state.log)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not intercept requests to 127.0.0.1.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.ENV_BASE_URL, raising=False)
    # The archives served here are tiny stand-ins: the real zips' pinned sizes and hashes would
    # refuse them (tests/data/test_download_hostile.py tests the pins).
    monkeypatch.setattr(dl, "PINNED", {})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    root.mkdir()
    state = ServerState(root)
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --------------------------------------------------------------------------------------------
# archives


def _png(seed: int) -> bytes:
    img = Image.new("RGB", (8, 8), (seed * 40 % 256, seed * 90 % 256, seed * 15 % 256))
    img.putpixel((seed % 8, 0), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _members(prefix: str = f"{NAME}/") -> dict[str, bytes]:
    files = {}
    for s, split in enumerate(SPLITS):
        for i in range(3):
            files[f"{prefix}{split}/{i}.png"] = _png(s * 3 + i)
    return files


def _zip(files: dict[str, bytes], *, stored: bool = False, dirs: bool = True) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buf, "w", method) as zf:
        if dirs:  # the reference zips have explicit directory entries
            for d in sorted({n.rsplit("/", 1)[0] + "/" for n in files if "/" in n}):
                zf.writestr(d, b"")
        for n, data in files.items():
            zf.writestr(n, data)
    return buf.getvalue()


def _serve(server: Server, data: bytes, name: str = NAME) -> bytes:
    (server.state.root / f"{name}.zip").write_bytes(data)
    return data


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _expected() -> dict[str, bytes]:
    return {k.removeprefix(f"{NAME}/"): v for k, v in _members().items()}


def _assert_nothing_extracted(out: Path) -> None:
    assert not (out / NAME).exists()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(f".{NAME}.")]
    assert leftovers == []  # no temporary extraction directory either


# --------------------------------------------------------------------------------------------
# tests


def test_constants() -> None:
    assert DEFAULT_BASE_URL == "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
    assert len(DATASETS) == 13 and len(set(DATASETS)) == 13
    assert {"horse2zebra", "monet2photo", "summer2winter_yosemite", "grumpifycat"} <= set(DATASETS)
    assert dl.dataset_url("maps") == f"{DEFAULT_BASE_URL}/maps.zip"
    assert dl.dataset_url("maps", "http://x/y/") == "http://x/y/maps.zip"


def test_fresh_download_extracts_and_removes_zip(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    out = tmp_path / "data"
    path = download_dataset(NAME, out, base_url=server.url, progress=False)
    assert path == out / NAME
    assert _tree(path) == _expected()
    assert [(r.path, r.range, r.status) for r in server.state.log] == [
        (f"/{NAME}.zip", None, 200)
    ]
    assert server.sent() == len(data)
    # zip deleted, empty .downloads removed, no temporary extraction directory left behind
    assert sorted(p.name for p in out.iterdir()) == [NAME]


def test_flat_archive_layout(server: Server, tmp_path: Path) -> None:
    _serve(server, _zip(_members(prefix="")))
    path = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert _tree(path) == _expected()


def test_base_url_from_environment(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(server, _zip(_members()))
    monkeypatch.setenv(dl.ENV_BASE_URL, server.url + "/")
    path = download_dataset(NAME, tmp_path, progress=False)
    assert _tree(path) == _expected()
    assert len(server.state.log) == 1


def test_second_call_does_no_network(server: Server, tmp_path: Path) -> None:
    _serve(server, _zip(_members()))
    first = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    requests_before = len(server.state.log)
    assert requests_before == 1
    # A dead URL proves it too: any network access would now fail.
    second = download_dataset(NAME, tmp_path, base_url="http://127.0.0.1:9", progress=False)
    third = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert first == second == third
    assert len(server.state.log) == requests_before


def test_resume_transfers_only_the_rest(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    half = len(data) // 2
    part = tmp_path / ".downloads" / f"{NAME}.zip.part"
    part.parent.mkdir()
    part.write_bytes(data[:half])
    path = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert [(r.range, r.status, r.sent) for r in server.state.log] == [
        (f"bytes={half}-", 206, len(data) - half)
    ]
    assert _tree(path) == _expected()
    assert not part.exists()


def test_server_without_ranges_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    server.state.ranges = False
    part = tmp_path / ".downloads" / f"{NAME}.zip.part"
    part.parent.mkdir()
    part.write_bytes(b"\xff" * (len(data) // 2))  # junk: appending to it would corrupt the zip
    path = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert [(r.range, r.status, r.sent) for r in server.state.log] == [
        (f"bytes={len(data) // 2}-", 200, len(data))
    ]
    assert _tree(path) == _expected()


def test_complete_part_answered_416_is_verified_and_used(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    part = tmp_path / ".downloads" / f"{NAME}.zip.part"
    part.parent.mkdir()
    part.write_bytes(data)
    path = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert [(r.status, r.sent) for r in server.state.log] == [(416, 0)]
    assert _tree(path) == _expected()


def test_oversized_part_answered_416_restarts(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    part = tmp_path / ".downloads" / f"{NAME}.zip.part"
    part.parent.mkdir()
    part.write_bytes(data + b"junk")  # longer than the file: cannot be a prefix of it
    path = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert [(r.status, r.sent) for r in server.state.log] == [(416, 0), (200, len(data))]
    assert _tree(path) == _expected()


def test_truncated_transfer_fails_then_resumes(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    cut = len(data) // 3
    server.state.truncate_to = cut  # Content-Length says len(data), the body stops at cut
    with pytest.raises(DownloadError, match="interrupted") as err:
        download_dataset(NAME, tmp_path, base_url=server.url, progress=False, chunk_size=128)
    _assert_nothing_extracted(tmp_path)
    assert not (tmp_path / ".downloads" / f"{NAME}.zip").exists()  # never renamed
    # Whole chunks received before the cut are kept for resuming; only the one in flight is lost.
    kept = (tmp_path / ".downloads" / f"{NAME}.zip.part").read_bytes()
    assert cut - 128 < len(kept) <= cut
    assert kept == data[: len(kept)]
    message = str(err.value)
    assert "\n" not in message
    assert f"after {len(kept)} of {len(data)} bytes" in message
    assert "Connection broken" in message and "run again to resume" in message

    server.state.truncate_to = None
    path = download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert server.state.log[-1].range == f"bytes={len(kept)}-"
    assert server.state.log[-1].sent == len(data) - len(kept)
    assert _tree(path) == _expected()


def test_short_transfer_detected_by_size_check(tmp_path: Path) -> None:
    # The size check itself (a server that closes cleanly without urllib3 noticing).
    part = tmp_path / "x.zip.part"
    part.write_bytes(b"12345")
    with pytest.raises(DownloadError, match="got 5 of 9 bytes"):
        dl.check_size(part, 9, "http://h/x.zip")
    assert part.exists()  # kept for resuming
    with pytest.raises(DownloadError, match="is 5 bytes, server announced 4"):
        dl.check_size(part, 4, "http://h/x.zip")
    assert not part.exists()  # cannot be a prefix of the file: discarded
    dl.check_size(tmp_path / "missing", None, "http://h/x.zip")  # unknown length: no check


def test_corrupt_zip_is_rejected_and_deleted(server: Server, tmp_path: Path) -> None:
    files = _members()
    data = bytearray(_zip(files, stored=True))
    # Flip bytes inside one member's stored data: the size is right, the CRC is not.
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(f"{NAME}/trainB/1.png")
    data_at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(data_at + 20, data_at + 24):
        data[i] ^= 0xFF
    _serve(server, bytes(data))
    with pytest.raises(DownloadError, match=r"corrupt archive .*trainB/1\.png"):
        download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    _assert_nothing_extracted(tmp_path)
    assert not (tmp_path / ".downloads" / f"{NAME}.zip").exists()


def test_not_a_zip_is_rejected(server: Server, tmp_path: Path) -> None:
    _serve(server, b"<html>not a zip</html>" * 10)
    with pytest.raises(DownloadError, match="corrupt archive"):
        download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    _assert_nothing_extracted(tmp_path)


def test_sha256(server: Server, tmp_path: Path) -> None:
    data = _serve(server, _zip(_members()))
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_dataset(NAME, tmp_path / "a", base_url=server.url, sha256="0" * 64, progress=False)
    _assert_nothing_extracted(tmp_path / "a")
    good = hashlib.sha256(data).hexdigest().upper()  # case must not matter
    path = download_dataset(NAME, tmp_path / "b", base_url=server.url, sha256=good, progress=False)
    assert _tree(path) == _expected()


def test_unknown_name_lists_choices(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        download_dataset("horse2zebra2", tmp_path, base_url=server.url, progress=False)
    message = str(err.value)
    assert "horse2zebra2" in message
    assert all(name in message for name in DATASETS)
    assert server.state.log == []
    assert isinstance(err.value, ValueError)


def test_http_404(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 404 .*monet2photo\.zip"):
        download_dataset("monet2photo", tmp_path, base_url=server.url, progress=False)
    assert [r.status for r in server.state.log] == [404]
    assert not (tmp_path / "monet2photo").exists()


@pytest.mark.parametrize("evil", ["../evil.png", "/tmp/evil.png", f"{NAME}/../../evil.png"])
def test_zip_slip_is_rejected(server: Server, tmp_path: Path, evil: str) -> None:
    files = _members()
    files[evil] = b"pwned"
    _serve(server, _zip(files, dirs=False))
    out = tmp_path / "out" / "deeper"
    with pytest.raises(DownloadError, match="unsafe member path"):
        download_dataset(NAME, out, base_url=server.url, progress=False)
    _assert_nothing_extracted(out)
    assert not list(tmp_path.rglob("evil.png"))


def test_archive_without_train_folders(server: Server, tmp_path: Path) -> None:
    _serve(server, _zip({f"{NAME}/testA/0.png": _png(0), f"{NAME}/testB/0.png": _png(1)}))
    with pytest.raises(DownloadError, match="no trainA/ and trainB/"):
        download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    _assert_nothing_extracted(tmp_path)


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot download") as err:
        download_dataset(NAME, tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert "refused" in message.lower()
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not (tmp_path / NAME).exists()


def test_existing_unrelated_target_is_not_overwritten(server: Server, tmp_path: Path) -> None:
    _serve(server, _zip(_members()))
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="exists but has no trainA"):
        download_dataset(NAME, tmp_path, base_url=server.url, progress=False)
    assert (tmp_path / NAME / "mine.txt").read_text() == "keep"
    assert server.state.log == []


def test_progress_goes_to_stderr_and_can_be_disabled(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _serve(server, _zip(_members()))
    download_dataset(NAME, tmp_path / "quiet", base_url=server.url, progress=False)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    download_dataset(NAME, tmp_path / "loud", base_url=server.url, progress=True)
    loud = capsys.readouterr()
    assert loud.out == ""
    assert NAME in loud.err


def test_cli_download_with_base_url_and_no_progress(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # README: raystyle data download [--base-url URL] [--sha256 HEX] [--no-progress] NAME OUT
    from raystyle.cli.main import main

    data = _serve(server, _zip(_members()))
    out = tmp_path / "datasets"
    assert main(["data", "download", NAME, str(out), "--base-url", server.url, "--no-progress",
                 "--sha256", hashlib.sha256(data).hexdigest()]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --no-progress: no bar on stderr
    assert f"dataset ready: {out / NAME}" in captured.out
    assert all((out / NAME / split).is_dir() for split in SPLITS)
    assert _tree(out / NAME) == _expected()
    assert [(r.path, r.status) for r in server.state.log] == [(f"/{NAME}.zip", 200)]
