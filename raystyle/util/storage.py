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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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
        loc.local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=loc.local.parent, prefix=f".{loc.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, loc.local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with loc.fs.open_output_stream(loc.path) as f:
        f.write(data)


def upload_file(src: str | Path, loc: Location) -> None:
    """Copy a local file to ``loc`` (atomically for a local destination)."""
    if loc.local is not None:
        loc.local.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.local.with_name(f".{loc.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, loc.local)
        return
    pafs.copy_files(str(Path(src).absolute()), loc.path,
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=loc.fs)


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
            if entry.type != pafs.FileType.File or (wanted is not None and entry.base_name not in wanted):
                continue
            with loc.fs.open_input_stream(entry.path) as src, open(Path(tmp) / entry.base_name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        yield Path(tmp)


# -- (filesystem, path) helpers of the batch jobs ----------------------------------------------
TMP_SUFFIX = ".raystyle-tmp"
ATOMIC_STORES = frozenset({"s3", "gcs"})  # a PUT is all-or-nothing: write in place


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root else rel


def is_atomic_store(filesystem) -> bool:
    return filesystem.type_name in ATOMIC_STORES


def write_atomic(filesystem, path: str, data: bytes, made_dirs: set[str] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or nothing."""
    if is_atomic_store(filesystem):
        with filesystem.open_output_stream(path) as f:
            f.write(data)
        return
    parent, _, name = path.rpartition("/")
    if parent and (made_dirs is None or parent not in made_dirs):
        filesystem.create_dir(parent, recursive=True)
        if made_dirs is not None:
            made_dirs.add(parent)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        with filesystem.open_output_stream(tmp) as f:
            f.write(data)
        filesystem.move(tmp, path)  # rename(2) on local disks: atomic within a folder
    except BaseException:
        with contextlib.suppress(OSError):
            filesystem.delete_file(tmp)
        raise


def files_under(filesystem, root: str) -> list[str]:
    """Relative paths of every file under ``root`` (empty when it does not exist)."""
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"
    return [i.path[len(prefix):] for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(prefix)]
