"""raystyle.data.download against hostile archives and servers (a real HTTP server on 127.0.0.1).

The archives are written by hand (``_build``: local headers, central directory, zip64 end record)
so that they can say what zipfile would never write: encrypted or symlink members, members that
overlap, sizes that lie, 100k members in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from raystyle.data import download as dl
from raystyle.data.download import DownloadError, download_dataset

NAME = "horse2zebra"
REAL_PINS = dict(getattr(dl, "PINNED", {}))  # before any test swaps the table


# --------------------------------------------------------------------------------------------
# archives written by hand


@dataclass
class Entry:
    name: str
    data: bytes = b""  # the bytes as stored (already deflated when method == 8)
    size: int | None = None  # declared uncompressed size (default: len(data))
    crc: int | None = None  # default: crc32(data), right for stored members
    method: int = 0
    flags: int = 0
    external: int = 0  # high 16 bits: the unix mode (made by unix)
    at: int | None = None  # index of an earlier entry whose local header this one points at


def _deflated(raw: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, -15)  # level 1: fast, and zeros still shrink 1000:1
    return c.compress(raw) + c.flush()


def _build(entries: list[Entry]) -> bytes:
    body, central, offsets = bytearray(), bytearray(), []
    for e in entries:
        name = e.name.encode()
        size = len(e.data) if e.size is None else e.size
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        if e.at is None:
            offset = len(body)
            body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, e.flags, e.method, 0, 0x21,
                                crc, len(e.data), size, len(name), 0) + name + e.data
        else:
            offset = offsets[e.at]
        offsets.append(offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, e.flags,
                               e.method, 0, 0x21, crc, len(e.data), size, len(name), 0, 0, 0, 0,
                               e.external, offset) + name
    n, cd_offset, cd_size = len(entries), len(body), len(central)
    out = body + central
    if n >= 0xFFFF:  # zip64 end record and locator: the classic record counts to 65535
        record = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, record, 1)
        n = 0xFFFF
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0)
    return bytes(out)


def _dataset(prefix: str = f"{NAME}/") -> list[Entry]:
    return [Entry(f"{prefix}{split}/{i}.png", f"{split}{i}".encode() * 10)
            for split in ("trainA", "trainB", "testA", "testB") for i in range(2)]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _expected(entries: list[Entry], prefix: str = f"{NAME}/") -> dict[str, bytes]:
    return {e.name.removeprefix(prefix): e.data for e in entries}


# --------------------------------------------------------------------------------------------
# a file server with validators, If-Range, redirects and cut-off bodies


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    status: int
    sent: int


@dataclass
class Site:
    files: dict[str, bytes] = field(default_factory=dict)
    etag: dict[str, str] = field(default_factory=dict)
    modified: dict[str, str] = field(default_factory=dict)
    redirect: dict[str, str] = field(default_factory=dict)
    truncate_to: int | None = None  # announce the full length, send only this many bytes
    log: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def serve(self, data: bytes, name: str = NAME) -> bytes:
        self.files[f"/{name}.zip"] = data
        return data


class _Handler(BaseHTTPRequestHandler):
    site: Site  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self, status: int, sent: int) -> None:
        with self.site.lock:
            self.site.log.append(Hit(self.path, dict(self.headers.items()), status, sent))

    def do_GET(self) -> None:
        site = self.site
        if self.path in site.redirect:
            self._record(302, 0)
            self.send_response(302)
            self.send_header("Location", site.redirect[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = site.files.get(self.path)
        if data is None:
            self._record(404, 0)
            self.send_error(404, "Not Found")
            return
        etag, modified = site.etag.get(self.path), site.modified.get(self.path)
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        # RFC 9110 13.1.5: a Range with a stale If-Range is ignored: the whole file, 200.
        if match and (if_range is None or if_range in (etag, modified)):
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self._record(416, 0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        announced = len(body)
        if site.truncate_to is not None:
            body = body[: site.truncate_to]
        self._record(status, len(body))
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if etag:
            self.send_header("ETag", etag)
        if modified:
            self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused from headers
            self.wfile.write(body)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.ENV_BASE_URL, raising=False)
    # The archives here stand in for the real zips, whose pinned sizes and hashes would refuse
    # them; the tests of the pins set their own.
    monkeypatch.setattr(dl, "PINNED", {}, raising=False)


@pytest.fixture
def site() -> Iterator[Site]:
    state = Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"site": state}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The members whose data zipfile was asked to read (none: refused before extraction)."""
    calls: list[str] = []
    real = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        calls.append(getattr(name, "filename", name))
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return calls


def _refused(site: Site, out: Path, match: str, **kwargs) -> str:
    """Download, expect a one-line DownloadError matching ``match``, and nothing left behind:
    no dataset, no temporary extraction, no archive (the next run starts clean)."""
    with pytest.raises(DownloadError, match=match) as err:
        download_dataset(NAME, out, base_url=site.url, progress=False, **kwargs)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert sorted(p.name for p in out.iterdir()) == [], sorted(out.rglob("*"))
    return message


# --------------------------------------------------------------------------------------------
# transport


def test_https_by_default_and_plain_http_only_when_asked(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dl.DEFAULT_BASE_URL == "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
    assert dl.dataset_url("monet2photo") == f"{dl.DEFAULT_BASE_URL}/monet2photo.zip"
    # A plain-http mirror is refused before any connection, from the argument or the environment.
    with pytest.raises(DownloadError, match=r"plain http.*--allow-http") as err:
        download_dataset(NAME, tmp_path, base_url="http://mirror.example/ds", progress=False)
    assert "\n" not in str(err.value)
    monkeypatch.setenv(dl.ENV_BASE_URL, "http://mirror.example/ds")
    with pytest.raises(DownloadError, match="plain http"):
        download_dataset(NAME, tmp_path, progress=False)
    # allow_http=True accepts it (192.0.2.1 is TEST-NET-1: the connection itself fails).
    with pytest.raises(DownloadError, match="cannot download") as err:
        download_dataset(NAME, tmp_path, base_url="http://192.0.2.1:9", allow_http=True,
                         progress=False, timeout=0.5)
    assert "plain http" not in str(err.value)
    # A redirect may not downgrade either: refused before following it.
    site.serve(_build(_dataset()))
    site.redirect[f"/{NAME}.zip"] = "http://192.0.2.1:9/elsewhere.zip"
    with pytest.raises(DownloadError, match=r"redirects to http://192\.0\.2\.1:9/elsewhere\.zip is plain http"):
        download_dataset(NAME, tmp_path / "r", base_url=site.url, progress=False, timeout=0.5)


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_resume_sends_if_range_and_a_changed_file_restarts(
    site: Site, tmp_path: Path, validator: str
) -> None:
    old, new = _dataset(), [Entry(e.name, e.data.upper() * 3) for e in _dataset()]
    first = site.serve(_build(old))
    path = f"/{NAME}.zip"
    if validator == "etag":
        site.etag[path] = '"v1"'
    else:
        site.modified[path] = "Mon, 01 Jan 2024 00:00:00 GMT"
    site.truncate_to = len(first) // 2
    with pytest.raises(DownloadError, match="interrupted"):
        download_dataset(NAME, tmp_path, base_url=site.url, progress=False, chunk_size=64)
    kept = (tmp_path / ".downloads" / f"{NAME}.zip.part").stat().st_size
    assert 0 < kept <= len(first) // 2
    assert "If-Range" not in site.log[0].headers

    # The file changes on the server: the stale If-Range makes it send the whole new file.
    site.truncate_to = None
    second = site.serve(_build(new))
    site.etag[path], site.modified[path] = '"v2"', "Tue, 02 Jan 2024 00:00:00 GMT"
    out = download_dataset(NAME, tmp_path, base_url=site.url, progress=False)
    hit = site.log[-1]
    assert hit.headers["Range"] == f"bytes={kept}-"
    assert hit.headers["If-Range"] == ('"v1"' if validator == "etag" else "Mon, 01 Jan 2024 00:00:00 GMT")
    assert (hit.status, hit.sent) == (200, len(second))
    assert _tree(out) == _expected(new)


def test_resume_with_a_matching_validator_gets_the_rest(site: Site, tmp_path: Path) -> None:
    data = site.serve(_build(_dataset()))
    site.etag[f"/{NAME}.zip"] = '"same"'
    site.truncate_to = len(data) // 2
    with pytest.raises(DownloadError, match="interrupted"):
        download_dataset(NAME, tmp_path, base_url=site.url, progress=False, chunk_size=64)
    site.truncate_to = None
    out = download_dataset(NAME, tmp_path, base_url=site.url, progress=False)
    hit = site.log[-1]
    assert (hit.headers.get("If-Range"), hit.status) == ('"same"', 206)
    assert hit.sent < len(data)
    assert _tree(out) == _expected(_dataset())
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no .part, no validator left


# --------------------------------------------------------------------------------------------
# hashes


def test_pinned_hash_and_size(site: Site, tmp_path: Path) -> None:
    data = site.serve(_build(_dataset()))
    digest = hashlib.sha256(data).hexdigest()
    # Every reference dataset but two has its published size and sha256 recorded.
    assert set(REAL_PINS) == set(dl.DATASETS) - {"ae_photos", "grumpifycat"}
    assert all(n > 10**7 and re.fullmatch(r"[0-9a-f]{64}", h) for n, h in REAL_PINS.values())
    pins = dl.PINNED

    # The right size, a wrong hash: one line naming the hash received; the archive is removed.
    pins[NAME] = (len(data), "0" * 64)
    message = _refused(site, tmp_path / "a", "sha256 mismatch")
    assert f"got {digest}" in message and "pinned" in message
    # A size other than the pinned one is refused from the headers: nothing is written.
    pins[NAME] = (len(data) + 1, digest)
    message = _refused(site, tmp_path / "b", "pinned size")
    assert f"is {len(data)} bytes, its pinned size is {len(data) + 1}" in message
    # Both right: extracted, and the match is reported.
    pins[NAME] = (len(data), digest)
    lines: list[str] = []
    out = download_dataset(NAME, tmp_path / "c", base_url=site.url, progress=False,
                           report=lines.append)
    assert _tree(out) == _expected(_dataset())
    assert lines == [f"sha256 {digest} {NAME}.zip (matches the pinned hash)"]


def test_unpinned_hash_is_printed_so_it_can_be_pinned(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raystyle.cli.main import main

    data = site.serve(_build(_dataset()))
    digest = hashlib.sha256(data).hexdigest()
    assert main(["data", "download", NAME, str(tmp_path), "--base-url", site.url,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {digest} {NAME}.zip (not pinned: give --sha256 {digest}" in out


# --------------------------------------------------------------------------------------------
# hostile members


def test_traversal_and_symlink_members_are_refused(
    site: Site, tmp_path: Path, opened: list[str]
) -> None:
    evil = ["../evil.png", "/abs/evil.png", "C:/evil.png", "C:evil.png", "..\\evil.png",
            "\\\\server\\share\\evil.png", f"{NAME}/trainA/../../evil.png"]
    for i, name in enumerate(evil):
        site.serve(_build([*_dataset(), Entry(name, b"pwned")]))
        message = _refused(site, tmp_path / f"t{i}", "unsafe member path")
        assert repr(name) in message
    link = Entry(f"{NAME}/trainA/link.png", b"/etc/passwd", external=0o120777 << 16)
    site.serve(_build([*_dataset(), link]))
    _refused(site, tmp_path / "link", "symlink member")
    assert opened == []
    assert not list(tmp_path.rglob("evil.png"))


def test_encrypted_member_is_one_line_and_leaves_nothing(
    site: Site, tmp_path: Path, opened: list[str]
) -> None:
    site.serve(_build([*_dataset(), Entry(f"{NAME}/trainA/secret.png", b"\x00" * 40, flags=0x1)]))
    _refused(site, tmp_path, r"encrypted member '.*secret\.png'")
    assert opened == []


def test_a_file_and_a_folder_with_one_name(site: Site, tmp_path: Path, opened: list[str]) -> None:
    clash = [Entry(f"{NAME}/trainA/x", b"a file"), Entry(f"{NAME}/trainA/x/y.png", b"in a folder")]
    site.serve(_build([*_dataset(), *clash]))
    _refused(site, tmp_path / "a", r"trainA/x is both a file and a folder")
    twice = [Entry(f"{NAME}/trainA/0.png", b"again")]
    site.serve(_build([*_dataset(), *twice]))
    _refused(site, tmp_path / "b", "appears twice")
    assert opened == []


@pytest.mark.parametrize("bomb", ["ratio", "overlap", "shared-blob"])
def test_zip_bombs_are_refused_before_extraction(
    site: Site, tmp_path: Path, opened: list[str], bomb: str
) -> None:
    member = f"{NAME}/trainA/bomb.png"
    if bomb == "ratio":  # 64 MiB of zeros in 64 KiB
        raw = bytes(64 << 20)
        extra = [Entry(member, _deflated(raw), size=len(raw), crc=zlib.crc32(raw), method=8)]
        match = r"expands \d+ bytes to 67108864 \(ratio over 100"
    elif bomb == "overlap":  # three entries, one stored blob: ratio 1 each, 3x on disk
        blob = os.urandom(256 << 10)
        extra = [Entry(member, blob), Entry(member, blob, at=8), Entry(member, blob, at=8)]
        match = "overlap"
    else:  # 400 entries share one 1 MiB stored blob: 400 MiB from a 1 MiB archive
        blob = os.urandom(1 << 20)
        extra = [Entry(f"{NAME}/trainA/{i}.png", blob, at=8 if i else None) for i in range(400)]
        match = r"expand to \d+ \(ratio over 100"
    started = time.perf_counter()
    site.serve(_build([*_dataset(), *extra]))
    _refused(site, tmp_path, match)
    assert opened == []
    assert time.perf_counter() - started < 5


def test_sizes_are_capped_and_a_lying_header_yields_no_more_than_it_declares(
    site: Site, tmp_path: Path, opened: list[str]
) -> None:
    # 3 MiB of four letters: deflate packs it about 3:1, under the ratio cap, over 2 MiB.
    raw = os.urandom(3 << 20).translate(bytes(b"ACGT"[i & 3] for i in range(256)))
    big = Entry(f"{NAME}/trainA/big.png", _deflated(raw), size=len(raw), crc=zlib.crc32(raw), method=8)
    site.serve(_build([*_dataset(), big]))
    limits = dl.Limits(max_bytes=2 << 20)
    _refused(site, tmp_path / "a", r"\d+ bytes uncompressed, over the limit of 2097152", limits=limits)
    assert opened == []
    # The central directory declares 100 bytes for 1 MiB of data: extraction stops at 100 bytes
    # and the CRC of what the header declared fails; nothing is left.
    raw = os.urandom(1 << 20)
    site.serve(_build([*_dataset(), Entry(f"{NAME}/trainA/liar.png", raw, size=100, crc=0)]))
    _refused(site, tmp_path / "b", "corrupt archive")


def test_member_cap_refuses_100k_members_quickly(site: Site, tmp_path: Path, opened: list[str]) -> None:
    entries = [Entry(f"{NAME}/trainA/{i}.png") for i in range(100_000)] + _dataset()
    site.serve(_build(entries))
    started = time.perf_counter()
    message = _refused(site, tmp_path, "members, over the limit of 50000")
    assert "100008 members" in message
    assert time.perf_counter() - started < 3
    assert opened == []


def test_member_scan_is_linear(site: Site, tmp_path: Path) -> None:
    # 12k top-level folders, the dataset in the one that sorts last: the old scan tried every
    # folder against every member (2.45 s at 4k folders, about 25 min at 100k).
    entries = [Entry(f"f{i:05d}/x.png") for i in range(12_000)] + _dataset("zzz/")
    site.serve(_build(entries))
    started = time.perf_counter()
    out = download_dataset(NAME, tmp_path, base_url=site.url, progress=False)
    assert time.perf_counter() - started < 4
    assert _tree(out) == _expected(_dataset("zzz/"), "zzz/")


def test_disk_full_removes_the_partial_extraction_and_keeps_the_archive(tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")
    import signal

    entries = [*_dataset(), Entry(f"{NAME}/trainB/large.png", os.urandom(512 << 10))]
    downloads = tmp_path / ".downloads"
    downloads.mkdir()
    data = _build(entries)
    (downloads / f"{NAME}.zip").write_bytes(data)  # as left by an earlier run
    digest = hashlib.sha256(data).hexdigest()
    script = textwrap.dedent(f"""
        from raystyle.data.download import DownloadError, download_dataset
        try:
            download_dataset({NAME!r}, {str(tmp_path)!r}, base_url="http://127.0.0.1:9",
                             sha256={digest!r}, progress=False)
        except DownloadError as exc:
            print(exc)
            raise SystemExit(2)
    """)

    def limit_file_size() -> None:  # writes past 128 KiB fail with EFBIG, as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (128 << 10, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "kept" in lines[0], proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".downloads"]  # no partial extraction
    assert (downloads / f"{NAME}.zip").exists()
    # Space again: the kept archive is extracted, without the network.
    out = download_dataset(NAME, tmp_path, base_url="http://127.0.0.1:9", progress=False)
    assert _tree(out) == _expected(entries)


# --------------------------------------------------------------------------------------------
# names and the command line


def test_a_name_with_a_trailing_newline_is_not_a_name(tmp_path: Path) -> None:
    for name in ("monet2photo\n", " monet2photo", "monet2photo/"):
        with pytest.raises(DownloadError, match="unknown dataset"):
            dl.dataset_url(name)
        with pytest.raises(DownloadError, match="unknown dataset"):
            download_dataset(name, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_limits(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raystyle.cli import data as cli_data
    from raystyle.cli.main import main

    limits = dl.Limits()
    assert (
        limits.max_members, limits.max_bytes, limits.max_ratio) == (cli_data.MAX_MEMBERS, cli_data.MAX_GIB * 2**30, cli_data.MAX_RATIO)
    site.serve(_build(_dataset()))
    assert main(["data", "download", NAME, str(tmp_path), "--base-url", site.url,
                 "--no-progress", "--max-members", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"raystyle: error: {NAME}.zip: 8 members, over the limit of 5 (--max-members): refused"
    assert list(tmp_path.iterdir()) == []
