"""Download and unpack the reference CycleGAN datasets (horse2zebra, monet2photo, ...).

``download_dataset(name, out_dir)`` fetches ``{base_url}/{name}.zip`` (the base URL is the
reference repository's server unless ``base_url=`` or the ``RAYSTYLE_DATASETS_URL`` environment
variable says otherwise) into ``out_dir/.downloads/NAME.zip.part``, resuming a previous partial
transfer with an HTTP ``Range`` request when the server supports it. The file is renamed to
``NAME.zip`` only once its size matches what the server announced; it is then checked (zip CRCs
and, when given, its sha256), extracted into a hidden temporary directory inside ``out_dir`` with
every member path checked against zip-slip, and renamed atomically to ``out_dir/NAME`` so that a
half-extracted dataset never appears. The zip is deleted after a successful extraction; an archive
that fails a check is deleted too, so the next call downloads it again, whereas an interrupted
transfer keeps its ``.part`` so the next call resumes it. A dataset whose ``trainA`` and
``trainB`` folders already exist is returned without touching the network. Every expected failure
is a ``DownloadError`` with a one-line message naming what went wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

import requests
import urllib3
from tqdm import tqdm

from raystyle.errors import RaystyleError

__all__ = [
    "DATASETS",
    "DEFAULT_BASE_URL",
    "ENV_BASE_URL",
    "DownloadError",
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

DEFAULT_BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
ENV_BASE_URL = "RAYSTYLE_DATASETS_URL"

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\"\)]+")
_SHA256 = re.compile(r"\A[0-9a-fA-F]{64}\Z")


class DownloadError(RaystyleError):
    """A dataset could not be downloaded, verified or extracted; the message says why."""


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
    progress: bool = True,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
) -> Path:
    """Make ``out_dir/name`` hold the dataset (``trainA``, ``trainB``, ``testA``, ``testB``).

    Returns ``out_dir/name``. If its ``trainA`` and ``trainB`` already exist, returns at once
    without any network access. Otherwise downloads (resuming ``out_dir/.downloads/name.zip.part``
    if present), verifies size, zip CRCs and the optional ``sha256`` (hex), extracts atomically and
    deletes the zip. ``progress`` shows a tqdm bar on stderr; ``timeout`` is per socket operation
    in seconds. Raises ``DownloadError`` for every expected failure.
    """
    _check_name(name)
    if sha256 is not None and not _SHA256.match(sha256):
        raise DownloadError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")
    if chunk_size <= 0 or timeout <= 0:
        raise DownloadError("chunk_size and timeout must be > 0")

    out = Path(out_dir)
    target = out / name
    if _is_complete(target):
        return target
    # Refuse early (before any transfer) rather than overwrite something we did not create.
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DownloadError(f"{target} exists but has no trainA/ and trainB/; remove it and retry")

    url = dataset_url(name, base_url)
    downloads = out / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    zip_path = downloads / f"{name}.zip"
    # A zip left by an interrupted extraction already passed the size check: reuse it.
    if not zip_path.exists():
        part = downloads / f"{name}.zip.part"
        _fetch(url, part, desc=name, progress=progress, timeout=timeout, chunk_size=chunk_size)
        os.replace(part, zip_path)

    try:
        if sha256 is not None:
            _check_sha256(zip_path, sha256.lower())
        result = _extract(zip_path, name, target)
    except DownloadError:
        # The archive itself is bad: drop it so that the next call downloads it afresh.
        zip_path.unlink(missing_ok=True)
        raise
    zip_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only succeeds when empty (other datasets in flight)
        downloads.rmdir()
    return result


# --------------------------------------------------------------------------------------------
# download


def _fetch(
    url: str, part: Path, *, desc: str, progress: bool, timeout: float, chunk_size: int
) -> None:
    """Complete ``part`` from ``url``; raise DownloadError unless its size matches the server's.

    A transfer cut off mid-way keeps what was written to ``part`` (all but the chunk in flight,
    at most ``chunk_size`` bytes), so the next call resumes from there.
    """
    # Two attempts: the second, from byte zero, only when the server contradicts our .part.
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        # identity: a gzip-encoded body would make the byte counts disagree with Content-Length.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        total: int | None = None
        streaming = False
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416 and offset:
                    # Nothing left to send: the .part should already be whole.
                    total = _unsatisfied_total(resp)
                    if total is None or total == offset:
                        return  # unknown total: the zip CRC check verifies it
                    part.unlink()
                    continue
                if resp.status_code >= 400:
                    reason = f" {resp.reason}" if resp.reason else ""
                    raise DownloadError(f"HTTP {resp.status_code}{reason} for {url}")
                if resp.status_code == 206:
                    start, total = _content_range(resp, url)
                    if start != offset:  # not the range we asked for: start over
                        part.unlink(missing_ok=True)
                        continue
                    mode = "ab"
                elif resp.status_code == 200:
                    # No range support (or no .part): the body is the whole file.
                    offset, total, mode = 0, _content_length(resp), "wb"
                else:
                    raise DownloadError(f"unexpected HTTP {resp.status_code} for {url}")
                streaming = True
                _stream(resp, part, mode, offset, total, desc, progress, chunk_size)
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
        check_size(part, total, url)
        return
    raise DownloadError(f"server keeps contradicting the partial download of {url}")


def _stream(
    resp: requests.Response,
    part: Path,
    mode: str,
    offset: int,
    total: int | None,
    desc: str,
    progress: bool,
    chunk_size: int,
) -> None:
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
            fh.write(chunk)
            bar.update(len(chunk))


def check_size(part: Path, total: int | None, url: str) -> None:
    if total is None:  # no length announced: the zip CRC check is the only guard
        return
    size = part.stat().st_size
    if size < total:  # keep it: the next call resumes from here
        raise DownloadError(
            f"incomplete download of {url}: got {size} of {total} bytes; run again to resume"
        )
    if size > total:
        part.unlink()
        raise DownloadError(f"download of {url} is {size} bytes, server announced {total}")


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _content_range(resp: requests.Response, url: str) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if not match:
        raise DownloadError(f"HTTP 206 without a valid Content-Range from {url}")
    start, _end, total = match.groups()
    return int(start), None if total == "*" else int(total)


def _unsatisfied_total(resp: requests.Response) -> int | None:
    match = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _describe(exc: BaseException) -> str:
    """A one-line reason, e.g. ``[Errno 111] Connection refused`` instead of a nested repr."""
    match = _ERRNO.search(str(exc))
    if match:
        return match.group(0).strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    # requests wraps urllib3's exception, whose first argument is the readable message.
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    first = text.splitlines()[0][:200] if text else ""
    return first or type(exc).__name__


# --------------------------------------------------------------------------------------------
# verification and extraction


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _is_complete(target: Path) -> bool:
    return (target / "trainA").is_dir() and (target / "trainB").is_dir()


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DownloadError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {digest.hexdigest()}"
        )


def _unsafe(member: str) -> bool:
    """Absolute, drive-qualified or ``..`` member names could write outside the target."""
    posix = member.replace("\\", "/")
    return (
        posix.startswith("/")
        or bool(PureWindowsPath(member).drive)
        or ".." in PurePosixPath(posix).parts
    )


def _dataset_prefix(names: list[str], name: str) -> str:
    """Where trainA/ and trainB/ live in the archive: ``NAME/`` (reference layout) or top level."""
    tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n}
    for prefix in ("", f"{name}/", *sorted(tops)):
        if all(any(n.startswith(f"{prefix}{d}/") for n in names) for d in ("trainA", "trainB")):
            return prefix
    raise DownloadError(f"{name}.zip has no trainA/ and trainB/ folders (top level or in {name}/)")


def _extract(zip_path: Path, name: str, target: Path) -> Path:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:
                if _unsafe(info.filename):
                    raise DownloadError(f"unsafe member path {info.filename!r} in {zip_path.name}")
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"corrupt archive {zip_path.name}: CRC error in {bad!r}")
            prefix = _dataset_prefix([i.filename.replace("\\", "/") for i in infos], name)
            return _extract_atomically(zf, infos, prefix, target)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DownloadError(f"corrupt archive {zip_path.name}: {exc}") from None


def _extract_atomically(
    zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], prefix: str, target: Path
) -> Path:
    # Same filesystem as the target so that the final rename is atomic; mkdir honours the umask.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        root = tmp.resolve()
        for info in infos:
            member = info.filename.replace("\\", "/")
            if not member.startswith(prefix) or member == prefix:
                continue  # e.g. __MACOSX/ resource forks next to the dataset folder
            dest = tmp / member[len(prefix) :]
            if not dest.resolve().is_relative_to(root):  # belt and braces after _unsafe
                raise DownloadError(f"unsafe member path {info.filename!r}")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        try:
            os.replace(tmp, target)  # replaces only a missing or empty directory
        except OSError:
            if not _is_complete(target):  # a concurrent call may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
