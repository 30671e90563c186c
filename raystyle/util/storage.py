"""Where runs live: a local folder or a URI (``s3://``, ``gs://``, ...), through ``pyarrow.fs``.

``resolve(text)`` turns a storage string into a ``Location``: a pyarrow FileSystem and a path
on it, plus how to show it (a ``Path`` for local folders, the URI otherwise). Locations
pickle, so the filesystem the driver resolved is the one Ray's controller and workers use.

S3: pyarrow reads the endpoint from the URI's query (``?endpoint_override=host:port&scheme=http``)
or from ``AWS_ENDPOINT_URL``; both are kept in the resolved filesystem. When the driver has
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment they are put into the
filesystem too, so workers of a Ray cluster started elsewhere use the same credentials;
without them every node uses its own (instance role, ~/.aws). gs:// uses each node's
default Google credentials.

Object stores have no append and no rename: whole objects are written at once (a reader
sees the old object or the new one), and nothing here appends remotely.

This module is also the one place that decides what may be read and written (folders and
buckets of user files: keys with ``..``, links, temporary names): see "What may be read and
written" below and docs/stylize.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pyarrow.fs as pafs

from raystyle.errors import RaystyleError


class StorageError(RaystyleError):
    """A storage string that cannot be used (unknown scheme, missing bucket, no access)."""


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str  # on ``fs``: absolute for local files, "bucket/key" for object stores
    scheme: str = ""  # "" for the local filesystem, else "s3", "gs", ...
    local: Path | None = None  # the local path as the user gave it (expanded), None if remote

    @property
    def is_remote(self) -> bool:
        return self.local is None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def native(self) -> Path | str:
        """A ``Path`` for a local location, the URI (without query) for a remote one."""
        return self.local if self.local is not None else f"{self.scheme}://{self.path}"

    def __truediv__(self, name: str) -> Location:
        local = self.local / name if self.local is not None else None
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", self.scheme, local)

    @property
    def parent(self) -> Location:
        local = self.local.parent if self.local is not None else None
        return Location(self.fs, str(PurePosixPath(self.path).parent), self.scheme, local)

    def __str__(self) -> str:
        return str(self.native)


def is_uri(target: str | Path) -> bool:
    return isinstance(target, str) and "://" in target and not target.startswith("file://")


def resolve(target: str | Path | Location) -> Location:
    """A Location for a local path or a URI (``s3://bucket/runs``, ``gs://b/p``, ``file:///p``)."""
    if isinstance(target, Location):
        return target
    if isinstance(target, str) and target.startswith("file://"):
        target = target[len("file://"):]
    if not is_uri(target):
        local = Path(target).expanduser()
        return Location(pafs.LocalFileSystem(), str(local.absolute()), "", local)
    text = str(target)
    scheme = text.split("://", 1)[0].lower()
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:
        raise StorageError(f"cannot use storage {text.split('?', 1)[0]!r}: "
                           f"{_first_line(exc)}") from None
    if isinstance(fs, pafs.S3FileSystem):
        fs = _with_env_credentials(fs)
    return Location(fs, path.rstrip("/"), scheme, None)


def _with_env_credentials(fs: pafs.S3FileSystem) -> pafs.S3FileSystem:
    """The same S3 filesystem with the driver's env credentials written into it (see above)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    # __reduce__ gives the filesystem's resolved options (endpoint, scheme, region, ...) as
    # the keyword arguments of S3FileSystem: rebuild it with explicit credentials added.
    _, (options,) = fs.__reduce__()
    if not (key and secret) or options.get("access_key") or options.get("anonymous"):
        return fs
    token = os.environ.get("AWS_SESSION_TOKEN")
    return pafs.S3FileSystem(**{**options, "access_key": key, "secret_key": secret,
                                "session_token": token or None})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_reachable(loc: Location) -> None:
    """Fail early (StorageError) when a remote location's bucket cannot be reached."""
    if not loc.is_remote:
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        info = loc.fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(f"cannot reach {loc.scheme}://{bucket}: {_first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"bucket {loc.scheme}://{bucket} does not exist (create it first)")


# ---------------------------------------------------------------------------------------
# Reading and writing


def info(loc: Location) -> pafs.FileInfo:
    return loc.fs.get_file_info(loc.path)


def is_file(loc: Location) -> bool:
    return info(loc).type == pafs.FileType.File


def is_dir(loc: Location) -> bool:
    return info(loc).type == pafs.FileType.Directory


def exists(loc: Location) -> bool:
    return info(loc).type != pafs.FileType.NotFound


def mtime(loc: Location) -> float | None:
    found = info(loc)
    return found.mtime.timestamp() if found.mtime is not None else None


def listdir(loc: Location, recursive: bool = False) -> list[pafs.FileInfo]:
    """Entries under ``loc`` ([] when it does not exist); ``base_name`` names each."""
    selector = pafs.FileSelector(loc.path, allow_not_found=True, recursive=recursive)
    return loc.fs.get_file_info(selector)


def read_bytes(loc: Location) -> bytes:
    """The whole file; FileNotFoundError when missing."""
    if loc.local is not None:
        return loc.local.read_bytes()
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not exists(loc):
            raise FileNotFoundError(f"{loc} does not exist") from None
        raise StorageError(f"cannot read {loc}: {_first_line(exc)}") from None


def write_bytes(loc: Location, data: bytes) -> None:
    """Replace the whole file: atomic rename locally, one object PUT remotely."""
    if loc.local is not None:
        write_local_atomic(loc.local, lambda f: f.write(data))
        return
    write_atomic(loc.fs, loc.path, data)


def upload_file(src: str | Path, loc: Location) -> None:
    """Copy a local file to ``loc``: whole or not at all (see ``put_file``)."""
    put_file(loc.fs, loc.path if loc.local is None else str(loc.local.absolute()), src)


@contextlib.contextmanager
def local_copy(loc: Location, names: tuple[str, ...] | None = None) -> Iterator[Path]:
    """A local folder with the files of directory ``loc`` (only ``names`` if given).

    Local locations are yielded as they are; remote ones are downloaded to a temporary
    folder that is deleted afterwards. Files missing remotely are missing locally too.
    """
    if loc.local is not None:
        yield loc.local
        return
    with tempfile.TemporaryDirectory(prefix="raystyle_dl_") as tmp:
        wanted = None if names is None else set(names)
        for entry in listdir(loc):
            if entry.type != pafs.FileType.File or not is_plain_name(entry.base_name) or (
                    wanted is not None and entry.base_name not in wanted):
                continue
            with loc.fs.open_input_stream(entry.path) as src, open(Path(tmp) / entry.base_name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        yield Path(tmp)


# ---------------------------------------------------------------------------------------
# What may be read and written: the one place that decides.
#
# Reading: ``list_inside`` lists a folder (local or a bucket prefix); a relative path with an
# empty, "." or ".." part, or an absolute one, is refused (object stores take such keys as they
# are), as is, locally, a link to a folder (never followed: no loops, no escape) and a link to
# a file outside the folder; ``input_path`` / ``open_input`` check again when the file is read.
# Writing: ``output_path`` keeps every output inside its folder after normalisation (locally
# after resolving links too); ``write_atomic`` / ``put_file`` / ``write_local_atomic`` write
# under a unique temporary name created exclusively (O_EXCL: a link planted there is never
# followed) and rename, or, on object stores, upload a temporary key and publish it by a move
# once complete; ``remove_stale_temps`` deletes only temporary files older than STALE_TMP_S
# (another run's live ones are younger).

TMP_SUFFIX = ".raystyle-tmp"
ATOMIC_STORES = frozenset({"s3", "gcs"})  # an object appears whole on close, or not at all
# One PUT of bytes already in memory is all-or-nothing (pyarrow buffers below its 5 MB part
# size and uploads on close); larger payloads and streamed files go to a temporary key first.
SINGLE_PUT_BYTES = 5 << 20
STALE_TMP_S = 6 * 3600.0  # a temporary file untouched this long belongs to no live run
CHUNK = 1 << 20


class ContainmentError(StorageError):
    """A path that would leave its folder: a ``..`` or absolute key, a link out of the folder."""


def unsafe_reason(rel: str) -> str | None:
    """Why ``rel`` is not a plain relative path below its folder (None when it is one)."""
    if not rel:
        return "an empty path"
    if rel.startswith("/"):
        return "an absolute path"
    if "\x00" in rel:
        return "a NUL character in the name"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "a name that is not UTF-8"
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return "an empty part" if not part else f"a {part!r} part"
    return None


def is_plain_name(name: object) -> bool:
    """A file name with no folder in it: no '/', no '\\', not '.' or '..', not empty."""
    return isinstance(name, str) and "\\" not in name and "/" not in name and unsafe_reason(name) is None


def check_relative(rel: str, where: str = "its folder") -> str:
    reason = unsafe_reason(rel)
    if reason is not None:
        raise ContainmentError(f"{rel!r}: {reason}; paths must stay inside {where}")
    return rel


def join(root: str, rel: str) -> str:
    """``root/rel`` as it is (no checks: ``inside`` checks)."""
    return f"{root.rstrip('/')}/{rel}" if root else rel


def inside(root: str, rel: str, where: str = "its folder") -> str:
    """``root/rel`` for a plain relative ``rel``, still below ``root`` after normalisation."""
    path = join(root, check_relative(rel, where))
    base = posixpath.normpath(root) if root else ""
    norm = posixpath.normpath(path)
    if base and not norm.startswith(base.rstrip("/") + "/"):
        raise ContainmentError(f"{rel!r}: leaves {where}")
    return path


def is_local(filesystem) -> bool:
    return filesystem.type_name == "local"


def is_atomic_store(filesystem) -> bool:
    return filesystem.type_name in ATOMIC_STORES


def within(path: str, root: str) -> bool:
    """Whether the local ``path`` is ``root`` or below it, both resolved (links followed)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Listing:
    files: list[str]  # relative paths that may be read, sorted
    refused: dict[str, str]  # relative path -> a one-line reason (a manifest row)
    temps: list[tuple[str, float | None]]  # temporary files (relative path, mtime)


def list_inside(filesystem, root: str, suffixes: frozenset[str] | set[str] | None = None) -> Listing:
    """Every file under ``root`` that may be read (empty when it does not exist).

    ``suffixes`` (lower case, with the dot): only files with one of them are listed or refused;
    folder links are refused whatever their name. Temporary files (TMP_SUFFIX) are ``temps``.
    """
    files: list[str] = []
    refused: dict[str, str] = {}
    temps: list[tuple[str, float | None]] = []

    def wanted(rel: str) -> bool:
        return suffixes is None or os.path.splitext(rel)[1].lower() in suffixes

    def refuse(rel: str, reason: str) -> None:
        refused[rel] = f"{rel}: not read: {reason}"

    if is_local(filesystem):
        _walk_local(root, files, temps, refuse, wanted)
    else:
        prefix = root.rstrip("/") + "/"
        for entry in filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if entry.type != pafs.FileType.File or not entry.path.startswith(prefix):
                continue
            rel = entry.path[len(prefix):]
            if rel.endswith(TMP_SUFFIX):
                temps.append((rel, entry.mtime.timestamp() if entry.mtime is not None else None))
            elif wanted(rel):
                reason = unsafe_reason(rel)
                if reason is None:
                    files.append(rel)
                else:
                    refuse(rel, f"{reason} (keys must stay inside the folder)")
    return Listing(sorted(files), dict(sorted(refused.items())), temps)


def _walk_local(root: str, files: list[str], temps: list[tuple[str, float | None]], refuse, wanted) -> None:
    """os.scandir without following links (pyarrow's recursive listing follows folder links)."""
    real_root = os.path.realpath(root)
    stack = [""]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(os.path.join(root, folder) if folder else root) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            if folder:
                continue
            raise StorageError(f"{root} is not a folder") from None
        except OSError as exc:
            if not folder:
                raise StorageError(f"cannot list {root}: {_first_line(exc)}") from None
            refuse(folder, f"cannot list it ({exc.strerror or type(exc).__name__})")
            continue
        for entry in entries:
            rel = f"{folder}/{entry.name}" if folder else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
                if entry.is_symlink():
                    try:
                        mode = os.stat(entry.path).st_mode
                    except OSError:
                        if wanted(rel):
                            refuse(rel, "a link that leads nowhere")
                        continue
                    if stat.S_ISDIR(mode):
                        refuse(rel, "a link to a folder (folder links are not followed)")
                        continue
                    if not wanted(rel):
                        continue
                    if not stat.S_ISREG(mode):
                        refuse(rel, "a link to something that is not a file")
                    elif not within(entry.path, real_root):
                        refuse(rel, "a link to a file outside the folder")
                    else:
                        files.append(rel)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    if wanted(rel):
                        refuse(rel, "not a regular file")
                    continue
                if entry.name.endswith(TMP_SUFFIX):
                    temps.append((rel, entry.stat(follow_symlinks=False).st_mtime))
                elif wanted(rel):
                    reason = unsafe_reason(rel)
                    if reason is None:
                        files.append(rel)
                    else:
                        refuse(rel, reason)
            except OSError as exc:  # gone or unreadable since the folder was listed
                if wanted(rel):
                    refuse(rel, exc.strerror or type(exc).__name__)


def files_under(filesystem, root: str) -> list[str]:
    """Relative paths of every file under ``root`` that may be read (see ``list_inside``)."""
    return list_inside(filesystem, root).files


def input_path(filesystem, root: str, rel: str) -> str:
    """The path of input ``rel`` under ``root``; locally with links resolved, and refused
    (ContainmentError) when it leads outside ``root``."""
    path = inside(root, rel, "the input folder")
    if is_local(filesystem):
        real = os.path.realpath(path)
        if not within(real, root):
            raise ContainmentError(f"{rel}: a link that leaves the input folder")
        return real
    return path


def open_input(filesystem, root: str, rel: str):
    """A seekable pyarrow file for input ``rel`` (checked as ``input_path`` does)."""
    return filesystem.open_input_file(input_path(filesystem, root, rel))


def output_path(filesystem, root: str, rel: str, checked: set[str] | None = None) -> str:
    """The path of output ``rel`` under ``root``, its folder made; ContainmentError when it would
    land outside ``root`` (after normalisation and, locally, after resolving links).
    ``checked``: folders already made and checked (skipped, and added to)."""
    path = inside(root, rel, "the output folder")
    parent = path.rpartition("/")[0]
    if not parent or (checked is not None and parent in checked):
        return path
    if is_local(filesystem):
        if not within(parent, root):  # checked before making it: no folder is made elsewhere
            raise ContainmentError(f"{rel}: its folder leads outside the output folder")
        os.makedirs(parent, exist_ok=True)
        if not within(parent, root):
            raise ContainmentError(f"{rel}: its folder leads outside the output folder")
    elif not is_atomic_store(filesystem):
        filesystem.create_dir(parent, recursive=True)
    if checked is not None:
        checked.add(parent)
    return path


def temp_name(path: str) -> str:
    """A fresh hidden temporary name beside ``path`` (unique; TMP_SUFFIX marks it)."""
    parent, _, name = path.rpartition("/")
    tmp = f".{name[:100]}.{secrets.token_hex(8)}{TMP_SUFFIX}"
    return f"{parent}/{tmp}" if parent else tmp


def create_temp(path: str | Path) -> tuple[int, Path]:
    """(open fd, path) of a new temporary file beside the local ``path``, created exclusively
    (O_EXCL | O_NOFOLLOW: never an existing file or link), mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = temp_name(str(path))
        try:
            return os.open(tmp, flags, 0o666), Path(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_local_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a local file through ``write(f)`` under an exclusive temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)  # rename(2): readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(filesystem, path: str, data: bytes, made_dirs: set[str] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or nothing (no checks:
    ``write_inside`` checks the path first)."""
    if is_local(filesystem):
        parent = path.rpartition("/")[0]
        if parent and (made_dirs is None or parent not in made_dirs):
            os.makedirs(parent, exist_ok=True)
            if made_dirs is not None:
                made_dirs.add(parent)
        write_local_atomic(path, lambda f: f.write(data))
        return
    if is_atomic_store(filesystem) and len(data) <= SINGLE_PUT_BYTES:
        with filesystem.open_output_stream(path) as f:
            f.write(data)
        return
    put_stream(filesystem, path, io.BytesIO(data))


def write_inside(filesystem, root: str, rel: str, data: bytes, made_dirs: set[str] | None = None) -> str:
    """``write_atomic`` to output ``rel`` under ``root`` (``output_path``'s checks); its path."""
    path = output_path(filesystem, root, rel, made_dirs)
    if made_dirs is None:
        made_dirs = {path.rpartition("/")[0]}
    write_atomic(filesystem, path, data, made_dirs)
    return path


def put_stream(filesystem, path: str, src: BinaryIO) -> None:
    """Copy the readable ``src`` to ``path``: whole or not at all. Locally an exclusive temporary
    file renamed; elsewhere a temporary key, moved to ``path`` once the upload is complete (an
    interrupted upload never leaves an object under the final name)."""
    if is_local(filesystem):
        write_local_atomic(path, lambda dst: shutil.copyfileobj(src, dst, CHUNK))
        return
    tmp = temp_name(path)
    try:
        with filesystem.open_output_stream(tmp) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        filesystem.move(tmp, path)
    except BaseException:
        # pyarrow completes an upload when its stream closes, even on an error: the
        # temporary key may hold a part; it never had the final name
        with contextlib.suppress(OSError):
            filesystem.delete_file(tmp)
        raise


def put_file(filesystem, path: str, src: str | Path) -> None:
    """Copy the local file ``src`` to ``path`` (see ``put_stream``)."""
    with open(src, "rb") as f:
        put_stream(filesystem, path, f)


def remove_stale_temps(filesystem, root: str, temps: list[tuple[str, float | None]],
                       max_age: float = STALE_TMP_S) -> list[str]:
    """Delete the temporary files among ``temps`` (from ``list_inside``) older than
    ``max_age`` seconds: left by runs that ended; a live run's are younger. Returns them."""
    now = time.time()
    removed = []
    for rel, mtime in temps:
        if mtime is None or now - mtime < max_age or unsafe_reason(rel) is not None:
            continue
        with contextlib.suppress(OSError):
            filesystem.delete_file(join(root, rel))
            removed.append(rel)
    return removed


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
