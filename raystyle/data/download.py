"""Download and unpack the reference CycleGAN datasets (horse2zebra, monet2photo, ...).

``download_dataset(name, out_dir)`` fetches ``{base_url}/{name}.zip`` over https (the base URL is
the reference server, ``DEFAULT_BASE_URL``, unless ``base_url=`` or the ``RAYSTYLE_DATASETS_URL``
environment variable says otherwise; plain http is refused unless ``allow_http=True`` or the host
is a loopback address, and so is a redirect to it) into ``out_dir/.downloads/NAME.zip.part``,
resuming a previous partial transfer with an HTTP ``Range`` request guarded by ``If-Range`` (the
ETag or Last-Modified of the response that started the file), so that a file changed on the
server restarts from byte zero instead of being spliced. The file is renamed to ``NAME.zip`` only
once its size matches what the server announced (and the size pinned in ``PINNED``, checked before
any byte is written). Its sha256 is then checked against ``sha256=`` or the pinned hash; a dataset
with neither gets its hash reported (``report=``) so that it can be pinned.

Before anything is extracted, the central directory is checked in one linear pass: the member count,
the total uncompressed size and the compression ratio against ``Limits``; encrypted, symlink,
absolute, drive-qualified and ``..`` members; members that overlap each other (a zip bomb);
duplicate names and a name that is both a file and a folder. Extraction then goes to a hidden
temporary directory inside ``out_dir`` (zip CRCs checked as each member is read, and no member may
yield more than its declared size), renamed atomically to ``out_dir/NAME`` so that a half-extracted
dataset never appears. Any failure removes the temporary directory. The zip is deleted after a
successful extraction and after any failure that is the archive's fault, so the next call
downloads it again; a failure of the machine (disk full, permissions) keeps the verified zip for
the next call, and an interrupted transfer keeps its ``.part`` so the next call resumes it. A
dataset whose ``trainA`` and ``trainB`` folders already exist is returned without touching the
network. Every expected failure is a ``DownloadError`` with a one-line message naming what went
wrong.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import stat
import struct
import sys
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from tqdm import tqdm

from raystyle.errors import RaystyleError
from raystyle.util.storage import sha256_file

__all__ = [
    "DATASETS",
    "DEFAULT_BASE_URL",
    "ENV_BASE_URL",
    "PINNED",
    "DownloadError",
    "Limits",
    "check_size",
    "dataset_url",
    "download_dataset",
]

# The datasets served by the reference CycleGAN repository (datasets/download_cyclegan_dataset.sh).
DATASETS: tuple[str, ...] = (
    "apple2orange",
    "summer2winter_yosemite",
    "horse2zebra",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "cityscapes",
    "facades",
    "iphone2dslr_flower",
    "ae_photos",
    "grumpifycat",
)

# Size in bytes and SHA-256 of each reference zip, as TensorFlow Datasets publishes them
# (tensorflow_datasets/url_checksums/cycle_gan.txt) for the same files at the server's former
# address, people.eecs.berkeley.edu/~taesung_park/CycleGAN/datasets/. They could not be re-checked
# against the server from where they were recorded; a mismatch is refused and names the hash
# received. ae_photos and grumpifycat have no published hash: give --sha256, or pin the hash that
# their first download reports. An explicit sha256= replaces the pinned size and hash.
PINNED: dict[str, tuple[int, str]] = {
    "apple2orange": (78456409, "845a191e9af8926408ea597001cd03a452e3300a1f44a79fe329b3d59f6e3eb8"),
    "cezanne2photo": (
        279885071,
        "3a6c10ca21f9485862f1cbd707744b9dc258954a04631271d23a3605eeb63cff",
    ),
    "cityscapes": (279601602, "d2f6910fd056c1ee9873777ae838e7ac4a2c833598ae62a04188e5ab2f4ea036"),
    "facades": (35135868, "9a31ebf3a31b9b5cd195dd5bf62e9308e00cb94604d1019e3889ac84248695c0"),
    "horse2zebra": (116867962, "a74d9d392eecca9966b51287a76ca126af473d9de4f3e8fc0e9cda08fa1730a1"),
    "iphone2dslr_flower": (
        339964458,
        "8fcb5e374d631b107e1d961b8c4cd0a186aa2a4ff3e279923f4c426128de7113",
    ),
    "maps": (1476754427, "639534f69dbf9f36bef8d6292a7698006361221f83f0285d7c9ca78afe6e8a9e"),
    "monet2photo": (305231073, "88f91b00fc228f97c9411fbf1880ec1d119c98f1722e4cfcfaa2fb35fac05b04"),
    "summer2winter_yosemite": (
        132640856,
        "167fe1726807a9d22bd106b4a6c0bd7953b688af924ac1bf967439c4961e49f9",
    ),
    "ukiyoe2photo": (292946532, "02a2a2fb5ecf425ca1bf86aca7304377da64a2a1d3b86df54eb65e4068bf3b08"),
    "vangogh2photo": (
        306590349,
        "362c3473e70be0944bda08d49d660eafdc2854df55d697835b8186d1d79caaff",
    ),
}

DEFAULT_BASE_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
ENV_BASE_URL = "RAYSTYLE_DATASETS_URL"

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)  # fullmatch
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.IGNORECASE)  # fullmatch
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\"\)]+")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")  # fullmatch
_DRIVE = re.compile(r"[A-Za-z]:")  # at the start of a member name: a Windows drive
_MAX_REDIRECTS = 5
_TRAIN = ("trainA", "trainB")
# Members are read with these methods only: stored, deflate, bzip2, lzma (what zipfile reads).
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_RATIO_FLOOR = 1 << 20  # members up to 1 MiB skip the per-member ratio (the archive's still counts)
_MAX_DEPTH = 16  # folders in a member name (the reference zips have 3)
_MAX_NAME = 1024  # characters in a member name; 255 bytes in each of its parts


class DownloadError(RaystyleError):
    """A dataset could not be downloaded, verified or extracted; the message says why."""


@dataclass(frozen=True)
class Limits:
    """Caps on an archive, checked from its central directory before anything is extracted.

    The defaults leave room for the largest reference datasets (maps.zip 1.48 GB, the others
    under 350 MB; at most about 10k members, with JPEG data that deflate leaves at a ratio of
    about 1). ``max_ratio`` bounds uncompressed / compressed bytes of the whole archive and of
    each member over 1 MiB.
    """

    max_members: int = 50_000
    max_bytes: int = 4 << 30  # total uncompressed bytes (4 GiB)
    max_ratio: float = 100.0

    def __post_init__(self) -> None:
        if self.max_members < 1 or self.max_bytes < 1 or not self.max_ratio >= 1:
            raise DownloadError(
                f"archive limits need max_members >= 1, max_bytes >= 1 and max_ratio >= 1, got "
                f"{self.max_members}, {self.max_bytes} and {self.max_ratio}"
            )


def dataset_url(name: str, base_url: str | None = None) -> str:
    """The URL of ``name``'s zip: ``base_url``, else ``$RAYSTYLE_DATASETS_URL``, else the default."""
    _check_name(name)
    base = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{name}.zip"


def download_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    sha256: str | None = None,
    allow_http: bool = False,
    limits: Limits | None = None,
    report: Callable[[str], None] | None = None,
    progress: bool = True,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
) -> Path:
    """Make ``out_dir/name`` hold the dataset (``trainA``, ``trainB``, ``testA``, ``testB``).

    Returns ``out_dir/name``. If its ``trainA`` and ``trainB`` already exist, returns at once
    without any network access. Otherwise downloads (resuming ``out_dir/.downloads/name.zip.part``
    if present), verifies the size and the sha256 (``sha256`` in hex, else ``PINNED[name]``),
    checks the archive against ``limits`` (default ``Limits()``), extracts atomically and deletes
    the zip. ``allow_http`` accepts a plain-http base URL (loopback hosts need no permission).
    ``report`` receives one line with the zip's sha256 (and whether it matched a pin), so that an
    unpinned dataset's hash can be pinned with ``sha256=`` next time. ``progress`` shows a tqdm bar
    on stderr; ``timeout`` is per socket operation in seconds. Raises ``DownloadError`` for every
    expected failure.
    """
    _check_name(name)
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise DownloadError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")
    if chunk_size <= 0 or timeout <= 0:
        raise DownloadError("chunk_size and timeout must be > 0")
    limits = Limits() if limits is None else limits

    out = Path(out_dir)
    target = out / name
    if _is_complete(target):
        return target
    # Refuse early (before any transfer) rather than overwrite something we did not create.
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DownloadError(f"{target} exists but has no trainA/ and trainB/; remove it and retry")

    url = dataset_url(name, base_url)
    _check_scheme(url, allow_http, "dataset URL")
    if sha256 is not None:
        expected, size, source = sha256.lower(), None, "--sha256"
    elif name in PINNED:
        size, expected = PINNED[name]
        source = "pinned"
    else:
        expected, size, source = None, None, ""

    downloads = out / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        zip_path = downloads / f"{name}.zip"
        # A zip left by an interrupted extraction already passed the size check: reuse it.
        if not zip_path.exists():
            part = downloads / f"{name}.zip.part"
            try:
                _fetch(
                    url,
                    part,
                    size=size,
                    max_size=limits.max_bytes,
                    allow_http=allow_http,
                    desc=name,
                    progress=progress,
                    timeout=timeout,
                    chunk_size=chunk_size,
                )
            except OSError as exc:  # requests' errors are DownloadErrors by now: disk full, ...
                if isinstance(exc, DownloadError):
                    raise
                raise DownloadError(
                    f"cannot write {part}: {_describe(exc)}; run again to resume"
                ) from None
            os.replace(part, zip_path)
            _validator_file(part).unlink(missing_ok=True)

        try:
            digest = sha256_file(zip_path)
            if expected is not None and digest != expected:
                raise DownloadError(
                    f"sha256 mismatch for {zip_path.name}: expected {expected} ({source}), got "
                    f"{digest}; the archive was removed"
                )
            if report is not None:
                if expected is None:
                    report(
                        f"sha256 {digest} {zip_path.name} (not pinned: give --sha256 {digest} "
                        "to check it next time)"
                    )
                else:
                    report(f"sha256 {digest} {zip_path.name} (matches the {source} hash)")
            result = _extract(zip_path, name, target, limits)
        except DownloadError:
            # The archive itself is bad: drop it so that the next call downloads it afresh.
            zip_path.unlink(missing_ok=True)
            raise
        except OSError as exc:  # the machine's fault (disk full, permissions): the archive is fine
            raise DownloadError(
                f"cannot extract {zip_path.name} into {out}: {_describe(exc)}; the archive is kept "
                f"in {downloads} for the next run"
            ) from None
        zip_path.unlink(missing_ok=True)
        return result
    finally:
        # Only when empty: not while it keeps a .part, a zip, or another dataset's download.
        with contextlib.suppress(OSError):
            downloads.rmdir()


# --------------------------------------------------------------------------------------------
# download


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_scheme(url: str, allow_http: bool, what: str) -> None:
    """https, or plain http when allowed (or to this machine): anything else is refused."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and (allow_http or _loopback(parts.hostname))):
        return
    if scheme == "http":
        raise DownloadError(
            f"{what} {url} is plain http, which anyone on the way can read and change; use "
            "https, or pass --allow-http to accept it"
        )
    raise DownloadError(f"{what} {url!r} must be an https:// URL")


def _validator_file(part: Path) -> Path:
    """Beside NAME.zip.part: the ETag or Last-Modified of the response that started it."""
    return part.with_name(part.name + ".ifrange")


def _validator(resp: requests.Response) -> str | None:
    """A validator usable in If-Range: a strong ETag, else Last-Modified, else None."""
    etag = (resp.headers.get("ETag") or "").strip()
    value = (
        etag
        if etag and not etag.startswith("W/")
        else (resp.headers.get("Last-Modified") or "").strip()
    )
    if not value or len(value) > 256 or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        return None
    return value


def _same_file(validator: str, resp: requests.Response) -> bool:
    """False when a 206 names another version than the one our .part started from (a server
    that ignored If-Range); True when it names the same one or says nothing."""
    header = "ETag" if validator.startswith('"') else "Last-Modified"
    value = resp.headers.get(header)
    return value is None or value.strip() == validator


def _get(url: str, headers: dict[str, str], timeout: float, allow_http: bool) -> requests.Response:
    """GET ``url``, following redirects by hand so that none downgrades to plain http."""
    for _hop in range(_MAX_REDIRECTS + 1):
        resp = requests.get(
            url, headers=headers, stream=True, timeout=timeout, allow_redirects=False
        )
        if not resp.is_redirect:
            return resp
        location = urljoin(url, resp.headers["Location"])
        resp.close()
        _check_scheme(location, allow_http, f"{url} redirects to")
        url = location
    raise DownloadError(f"more than {_MAX_REDIRECTS} redirects from {url}")


def _fetch(
    url: str,
    part: Path,
    *,
    size: int | None,
    max_size: int,
    allow_http: bool,
    desc: str,
    progress: bool,
    timeout: float,
    chunk_size: int,
) -> None:
    """Complete ``part`` from ``url``; raise DownloadError unless its size matches the server's
    (and ``size``, the pinned size, when given). Never writes more than the announced or pinned
    size, or ``max_size`` when neither is known.

    A transfer cut off mid-way keeps what was written to ``part`` (all but the chunk in flight,
    at most ``chunk_size`` bytes) and the validator of the response that started it, so that the
    next call resumes from there with ``If-Range``.
    """
    vfile = _validator_file(part)
    # Two attempts: the second, from byte zero, only when the server contradicts our .part.
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        # identity: a gzip-encoded body would make the byte counts disagree with Content-Length.
        headers = {"Accept-Encoding": "identity"}
        validator = vfile.read_text().strip() if offset and vfile.exists() else None
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:  # a changed file answers 200 (the whole new file), not a spliced tail
                headers["If-Range"] = validator
        total: int | None = None
        streaming = False
        try:
            with _get(url, headers, timeout, allow_http) as resp:
                if resp.status_code == 416 and offset:
                    # Nothing left to send: the .part should already be whole.
                    total = _unsatisfied_total(resp)
                    if (total is None or total == offset) and size in (None, offset):
                        return  # unknown total: the sha256 or the zip CRCs verify it
                    _discard(part)
                    continue
                if resp.status_code >= 400:
                    reason = f" {resp.reason}" if resp.reason else ""
                    raise DownloadError(f"HTTP {resp.status_code}{reason} for {url}")
                if resp.status_code == 206:
                    start, total = _content_range(resp, url)
                    if start != offset or (validator and not _same_file(validator, resp)):
                        _discard(part)  # not the range, or not the file, we asked for: start over
                        continue
                    mode = "ab"
                elif resp.status_code == 200:
                    # No range support, a changed file, or no .part: the body is the whole file.
                    offset, total, mode = 0, _content_length(resp), "wb"
                    _discard(part)
                    now = _validator(resp)
                    if now:
                        vfile.write_text(now)
                else:
                    raise DownloadError(f"unexpected HTTP {resp.status_code} for {url}")
                if size is not None and total is not None and total != size:
                    _discard(part)
                    raise DownloadError(
                        f"{url} is {total} bytes, its pinned size is {size}: refused (not the "
                        "pinned file; --sha256 replaces the pin)"
                    )
                if total is not None and total > max_size:
                    _discard(part)
                    raise DownloadError(
                        f"{url} is {total} bytes, over the {max_size}-byte limit (--max-gib)"
                    )
                limit = total if total is not None else size if size is not None else max_size
                streaming = True
                _stream(resp, part, mode, offset, total, limit, url, desc, progress, chunk_size)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            # from None: the user needs the reason, not requests' and urllib3's nested traceback.
            if not streaming:
                raise DownloadError(f"cannot download {url}: {_describe(exc)}") from None
            got = part.stat().st_size if part.exists() else 0
            of = f" of {total}" if total is not None else ""
            raise DownloadError(
                f"download of {url} interrupted after {got}{of} bytes ({_describe(exc)}); "
                "run again to resume"
            ) from None
        check_size(part, total if total is not None else size, url)
        return
    raise DownloadError(f"server keeps contradicting the partial download of {url}")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _stream(
    resp: requests.Response,
    part: Path,
    mode: str,
    offset: int,
    total: int | None,
    limit: int,
    url: str,
    desc: str,
    progress: bool,
    chunk_size: int,
) -> None:
    position = offset
    with (
        open(part, mode) as fh,
        tqdm(
            total=total,
            initial=offset,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            file=sys.stderr,  # looked up per call so that redirected stderr is honoured
            leave=False,
        ) as bar,
    ):
        for chunk in resp.iter_content(chunk_size=chunk_size):
            position += len(chunk)
            if position > limit:
                fh.close()
                _discard(part)
                raise DownloadError(f"{url} sends more than the {limit} bytes expected: refused")
            fh.write(chunk)
            bar.update(len(chunk))


def check_size(part: Path, total: int | None, url: str) -> None:
    if total is None:  # no length announced nor pinned: the zip CRC check is the only guard
        return
    size = part.stat().st_size
    if size < total:  # keep it: the next call resumes from here
        raise DownloadError(
            f"incomplete download of {url}: got {size} of {total} bytes; run again to resume"
        )
    if size > total:
        _discard(part)
        raise DownloadError(f"download of {url} is {size} bytes, server announced {total}")


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _content_range(resp: requests.Response, url: str) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
    if not match:
        raise DownloadError(f"HTTP 206 without a valid Content-Range from {url}")
    start, _end, total = match.groups()
    return int(start), None if total == "*" else int(total)


def _unsatisfied_total(resp: requests.Response) -> int | None:
    match = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _describe(exc: BaseException) -> str:
    """A one-line reason, e.g. ``[Errno 111] Connection refused`` instead of a nested repr."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    match = _ERRNO.search(str(exc))
    if match:
        return match.group(0).strip().rstrip(":")
    if isinstance(exc, requests.Timeout):
        return "timed out"
    # requests wraps urllib3's exception, whose first argument is the readable message.
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    first = text.splitlines()[0][:200] if text else ""
    return first or type(exc).__name__


# --------------------------------------------------------------------------------------------
# verification


def _check_name(name: str) -> None:
    if name not in DATASETS:  # membership, not a pattern: "monet2photo\n" is not a name
        raise DownloadError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _is_complete(target: Path) -> bool:
    return (target / "trainA").is_dir() and (target / "trainB").is_dir()


def _declared_members(path: Path) -> int | None:
    """The member count of the end-of-central-directory record (zip64 too), read before
    zipfile parses every entry; None when the record is not found (zipfile then decides)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        tail_len = min(size, 22 + 0xFFFF)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        count = struct.unpack_from("<H", tail, at + 10)[0]
        if count != 0xFFFF or at < 20 or tail[at - 20 : at - 16] != b"PK\x06\x07":
            return count
        record = struct.unpack_from("<Q", tail, at - 20 + 8)[0]
        fh.seek(record)
        head = fh.read(56)
    if len(head) < 40 or head[:4] != b"PK\x06\x06":
        return None
    return struct.unpack_from("<Q", head, 32)[0]


def _unsafe(member: str, parts: list[str]) -> bool:
    """Absolute, drive-qualified (``C:``, ``//server/share``) or ``..`` member names could write
    outside the target (``member`` has its backslashes turned into slashes)."""
    return member.startswith("/") or bool(_DRIVE.match(member)) or ".." in parts


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _header_name_len(info: zipfile.ZipInfo) -> int:
    try:
        return len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
    except UnicodeEncodeError:
        return 0  # a lower bound is enough for the overlap check


def _refuse(zname: str, what: str) -> DownloadError:
    return DownloadError(f"{zname}: {what}: refused")


def _plan(
    zf: zipfile.ZipFile, name: str, zname: str, archive_size: int, limits: Limits
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...], bool]]:
    """Check the central directory and say what to extract where, in two linear passes:
    (member, path parts under the dataset folder, is a folder)."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise _refuse(
            zname, f"{len(infos)} members, over the limit of {limits.max_members} (--max-members)"
        )
    total = 0
    spans: list[tuple[int, int, str]] = []
    found: dict[str, set[str]] = {}  # prefix -> which of trainA/, trainB/ it holds
    for info in infos:
        raw = info.filename
        if info.flag_bits & 0x1:
            raise _refuse(zname, f"encrypted member {raw!r}")
        if _is_link(info):
            raise _refuse(zname, f"symlink member {raw!r}")
        member = raw.replace("\\", "/")
        parts = member.split("/")
        if _unsafe(member, parts):
            raise _refuse(zname, f"unsafe member path {raw!r}")
        if (
            len(member) > _MAX_NAME
            or len(parts) > _MAX_DEPTH + 1
            or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts)
        ):
            raise _refuse(zname, f"member name {raw[:80]!r}... is too long or too deep")
        if info.compress_type not in _METHODS:
            raise _refuse(zname, f"member {raw!r} uses compression method {info.compress_type}")
        if info.file_size > _RATIO_FLOOR and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise _refuse(
                zname,
                f"member {raw!r} expands {info.compress_size} bytes to {info.file_size} (ratio "
                f"over {limits.max_ratio:g}, --max-ratio)",
            )
        total += info.file_size
        spans.append(
            (
                info.header_offset,
                info.header_offset + 30 + _header_name_len(info) + info.compress_size,
                raw,
            )
        )
        if len(parts) > 1 and parts[0] in _TRAIN:
            found.setdefault("", set()).add(parts[0])
        if len(parts) > 2 and parts[1] in _TRAIN:
            found.setdefault(parts[0] + "/", set()).add(parts[1])
    if total > limits.max_bytes:
        raise _refuse(
            zname, f"{total} bytes uncompressed, over the limit of {limits.max_bytes} (--max-gib)"
        )
    if total > limits.max_ratio * max(archive_size, 1):
        raise _refuse(
            zname,
            f"{archive_size} bytes expand to {total} (ratio over {limits.max_ratio:g}, --max-ratio)",
        )
    spans.sort()
    end, previous = 0, None
    for start, stop, raw in spans:
        if start < end:
            raise _refuse(zname, f"members {previous!r} and {raw!r} overlap (a zip bomb)")
        end, previous = stop, raw
    if end > zf.start_dir:
        raise _refuse(zname, f"member {previous!r} overlaps the central directory")

    complete = {p for p, dirs in found.items() if len(dirs) == len(_TRAIN)}
    prefix = next((p for p in ("", f"{name}/") if p in complete), None)
    if prefix is None:
        if not complete:
            raise DownloadError(
                f"{zname} has no trainA/ and trainB/ folders (top level or in {name}/)"
            )
        prefix = min(complete)

    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...], bool]] = []
    files: set[str] = set()
    folders: set[str] = set()
    for info in infos:
        member = info.filename.replace("\\", "/")
        if not member.startswith(prefix) or member == prefix:
            continue  # e.g. __MACOSX/ resource forks next to the dataset folder
        parts = tuple(p for p in member[len(prefix) :].split("/") if p not in ("", "."))
        if not parts:
            continue
        key = "/".join(parts)
        is_dir = info.is_dir()
        if is_dir:
            folders.add(key)
        elif key in files:
            raise _refuse(zname, f"member {info.filename!r} appears twice")
        else:
            files.add(key)
        for depth in range(1, len(parts)):
            folders.add("/".join(parts[:depth]))
        plan.append((info, parts, is_dir))
    clash = files & folders
    if clash:
        raise _refuse(zname, f"{prefix}{min(clash)!s} is both a file and a folder")
    return plan


# --------------------------------------------------------------------------------------------
# extraction


def _extract(zip_path: Path, name: str, target: Path, limits: Limits) -> Path:
    zname = zip_path.name
    declared = _declared_members(zip_path)
    if declared is not None and declared > limits.max_members:
        raise _refuse(
            zname, f"{declared} members, over the limit of {limits.max_members} (--max-members)"
        )
    try:
        with zipfile.ZipFile(zip_path) as zf:
            plan = _plan(zf, name, zname, zip_path.stat().st_size, limits)
            return _extract_atomically(zf, plan, target, zname)
    except DownloadError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        NotImplementedError,
        RuntimeError,
        UnicodeError,
        struct.error,
    ) as exc:
        raise DownloadError(f"corrupt archive {zname}: {_describe(exc)}") from None


def _extract_atomically(
    zf: zipfile.ZipFile,
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...], bool]],
    target: Path,
    zname: str,
) -> Path:
    # Same filesystem as the target so that the final rename is atomic; mkdir honours the umask.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:  # any failure, ours or not (or Ctrl-C), removes the partial extraction
        made: set[tuple[str, ...]] = set()
        for info, parts, is_dir in plan:
            # parts are checked: no "..", not absolute, no drive; no symlink is ever created.
            folder = parts if is_dir else parts[:-1]
            try:
                if folder and folder not in made:
                    tmp.joinpath(*folder).mkdir(parents=True, exist_ok=True)
                    made.add(folder)
                if not is_dir:
                    _copy(zf, info, tmp.joinpath(*parts), zname)
            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                raise _refuse(zname, f"member {info.filename!r} clashes with another") from None
        try:
            os.replace(tmp, target)  # replaces only a missing or empty directory
        except OSError:
            if not _is_complete(target):  # a concurrent call may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, zname: str) -> None:
    """Copy one member, never more than the size its header declares (zipfile checks the CRC)."""
    left = info.file_size
    with zf.open(info) as src, open(dest, "xb") as dst:
        while chunk := src.read(1 << 20):
            left -= len(chunk)
            if left < 0:
                raise _refuse(
                    zname,
                    f"member {info.filename!r} holds more than the {info.file_size} bytes it declares",
                )
            dst.write(chunk)
