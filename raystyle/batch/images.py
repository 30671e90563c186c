"""[ray] Batch stylization of a folder (local or any pyarrow filesystem URI) with Ray Data.

    input folder ─▶ list images, drop those whose output exists ─▶ Dataset of {path, output}
      ─▶ map_batches(read bytes)  (s3:// etc.: IO tasks with no CPU reserved; a local
         folder is read inside the actor instead)
      ─▶ map_batches(StylizeActor, ActorPoolStrategy)  (one Stylizer per actor: decode,
         stylize_batch, encode and an atomic write of each output)
      ─▶ rows {path, output, status, error, ms} ─▶ OUTPUT/_errors.jsonl + a summary line

Outputs keep the input's relative path and name with the extension of the output format.
They are written under a temporary name and renamed (object stores publish an object only
once it is complete), so an interrupted job never leaves a half-written image that a rerun
would take as done. A rerun does only the inputs without an output, failed ones included,
and rewrites the manifest. Corrupt inputs become manifest rows; they never fail the job.
The input folder, the output folder and the styles registry must be reachable from every
node that runs an actor (one machine, a shared filesystem, or s3:// / gs:// URIs).

An arbitrary (AdaIN) registry style takes ``--style-image PAINTING`` (repeat it and give
``--weights`` to blend several, ``--alpha`` for how far to go): the paintings are read once on the
driver (a missing or undecodable one fails before Ray starts), put in the object store once and
shared by every actor; each actor blends their statistics once, in its constructor, and runs
one encoder and one decoder call per batch of equal-sized images. Only the driver needs to
reach the paintings. Their sha256, the normalised weights and alpha are in the log and in
``BatchResult.style``. Skip-done looks at output names only: outputs of a run with other
paintings count as done (write to another OUTPUT).

``--nst STYLE_IMAGE`` runs Gatys style transfer (raystyle.methods.nst) instead of a registry style:
the same plan, skip-done, atomic writes and manifest, but one image per Ray task (a plain
function, ``map_batches(nst_task, batch_size=1)`` over one-row blocks; each task loads the
features and optimises its image, on a GPU with ``--gpu``). The style image is read once on the
driver and VGG weights are resolved there (a missing file fails before Ray starts); tasks get
the style pixels and the resolved weights path, which must be readable on every node.

Importing this module is cheap (the CLI imports it); Ray, ONNX Runtime and PIL load on use.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raystyle.methods.nst import NSTOptions

MANIFEST = "_errors.jsonl"
TMP_SUFFIX = ".raystyle-tmp"
FORMATS = ("png", "jpeg", "webp")
ATOMIC_STORES = frozenset({"s3", "gcs"})  # a PUT is all-or-nothing: write in place


class BatchError(ValueError):
    """Bad batch input: missing folder, no images, bad options, clashing output names."""


@dataclass(frozen=True)
class BatchResult:
    inputs: int  # images found in the input folder
    skipped: int  # already had an output when the job started
    stylized: int
    errors: list[dict[str, str]] = field(default_factory=list)  # {path, error}
    seconds: float = 0.0  # the Ray Data jobs, actor start-up included
    manifest: str = ""
    # arbitrary styles: {"alpha": A, "style_images": [{"image", "sha256", "weight"}, ...]}
    style: dict[str, Any] = field(default_factory=dict)
    frames: int = 0  # video frames written

    @property
    def todo(self) -> int:
        return self.inputs - self.skipped

    @property
    def images_per_s(self) -> float:
        return self.stylized / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        errors = f"{len(self.errors)} errors" + (f" (see {self.manifest})" if self.errors else "")
        frames = f", {self.frames} video frames" if self.frames else ""
        unit = "files/s" if self.frames else "images/s"  # a video is one file of many frames
        return (f"{self.stylized} stylized{frames}, {errors}, {self.skipped} skipped, "
                f"{self.images_per_s:.2f} {unit} ({self.seconds:.1f} s)")


# -- filesystems ------------------------------------------------------------------------
def resolve(location: str | Path):
    """A local path or a URI (s3://, gs://, file://, hdfs://...) -> (pyarrow filesystem, path)."""
    from pyarrow import fs as pafs

    text = str(location)
    if "://" in text:
        try:
            filesystem, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as exc:
            raise BatchError(f"cannot open {text}: {exc}") from None
        return filesystem, path.rstrip("/") or path
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def io_stage(uri: str) -> bool:
    """Whether inputs are read by separate IO tasks: yes for remote storage (latency to
    hide), no for local paths (reading is cheap; extra worker processes cost cores)."""
    return "://" in uri and not uri.startswith("file://")


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root else rel


def _is_atomic_store(filesystem) -> bool:
    return filesystem.type_name in ATOMIC_STORES


def write_atomic(filesystem, path: str, data: bytes, made_dirs: set[str] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or nothing."""
    if _is_atomic_store(filesystem):
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


def _files_under(filesystem, root: str) -> list[str]:
    """Relative paths of every file under ``root`` (empty when it does not exist)."""
    from pyarrow import fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"
    return [i.path[len(prefix):] for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(prefix)]


# -- planning (driver side, no Ray) ------------------------------------------------------
def output_name(rel: str, fmt: str | None = None) -> tuple[str, str]:
    """(output relative path, encode format): same path and name, the format's extension.

    ``fmt`` None keeps the input's format when it is png, jpeg or webp, else png. A name
    that already has the format's extension (.jpg for jpeg, .PNG) is kept as it is. A video
    keeps its name in .mp4, .mov and .mkv, else becomes .mp4 (format "video"; ``fmt`` is for
    images only).
    """
    from raystyle.data.images import ENCODE_FORMATS
    from raystyle.infer.video import is_video
    from raystyle.infer.video import output_name as video_output_name

    if is_video(rel):
        return video_output_name(rel), "video"
    stem, _, suffix = rel.rpartition(".")
    suffix = suffix.lower()
    fmt = (fmt or (suffix if suffix in ENCODE_FORMATS else "png")).lower()
    if fmt not in ENCODE_FORMATS:
        raise BatchError(f"output format {fmt!r} is not one of {', '.join(FORMATS)}")
    if ENCODE_FORMATS.get(suffix) == ENCODE_FORMATS[fmt]:
        return rel, fmt
    return f"{stem}.{fmt}", fmt


@dataclass(frozen=True)
class Plan:
    inputs: list[str]  # relative paths of every input image, sorted
    outputs: dict[str, tuple[str, str]]  # input -> (output relative path, format)
    todo: list[str]  # inputs without an output yet


def plan(input_uri: str, output_uri: str, fmt: str | None = None, videos: bool = True) -> Plan:
    """List the input images (and videos) and the outputs that exist; removes stale temporary files."""
    from pyarrow import fs as pafs

    from raystyle.data.images import IMAGE_SUFFIXES
    from raystyle.infer.video import VIDEO_SUFFIXES

    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES if videos else IMAGE_SUFFIXES

    in_fs, in_root = resolve(input_uri)
    out_fs, out_root = resolve(output_uri)
    kind = in_fs.get_file_info(in_root).type
    if kind == pafs.FileType.NotFound:
        raise BatchError(f"input folder {input_uri} does not exist")
    if kind != pafs.FileType.Directory:
        raise BatchError(f"input {input_uri} is not a folder (batch takes a folder of images)")
    if out_fs.get_file_info(out_root).type == pafs.FileType.File:
        raise BatchError(f"output {output_uri} is a file; give a folder")
    if in_fs.type_name == out_fs.type_name and in_root.rstrip("/") == out_root.rstrip("/"):
        raise BatchError("OUTPUT must be another folder than INPUT (outputs keep the input names)")
    # An output folder inside the input folder must not feed its own results back in.
    nested = ""
    if in_fs.type_name == out_fs.type_name and out_root.startswith(in_root.rstrip("/") + "/"):
        nested = out_root[len(in_root.rstrip("/")) + 1:].rstrip("/") + "/"
    inputs = sorted(rel for rel in _files_under(in_fs, in_root)
                    if os.path.splitext(rel)[1].lower() in suffixes
                    and not (nested and rel.startswith(nested)))
    if not inputs:
        what = "images or videos" if videos else "images"
        raise BatchError(f"no {what} in {input_uri} (looked for {', '.join(sorted(suffixes))}, "
                         "in subfolders too)")
    outputs: dict[str, tuple[str, str]] = {}
    claimed: dict[str, str] = {}
    for rel in inputs:
        out, f = output_name(rel, fmt)
        if out in claimed:
            raise BatchError(f"inputs {claimed[out]} and {rel} would both be written as {out}; "
                             "rename one of them")
        claimed[out] = rel
        outputs[rel] = (out, f)
    existing = set()
    for rel in _files_under(out_fs, out_root):
        if rel.endswith(TMP_SUFFIX):  # left by an interrupted run: never a finished image
            with contextlib.suppress(OSError):
                out_fs.delete_file(_join(out_root, rel))
        else:
            existing.add(rel)
    todo = [rel for rel in inputs if outputs[rel][0] not in existing]
    return Plan(inputs, outputs, todo)


# -- the Ray Data stages -----------------------------------------------------------------
def read_bytes(batch: dict[str, Any], root: str) -> dict[str, Any]:
    """Add each input's bytes, or a read error, to the rows (the IO stage, or in the actor)."""
    import numpy as np

    filesystem, base = resolve(root)
    data, errors = [], []
    for rel in batch["path"]:
        try:
            with filesystem.open_input_file(_join(base, str(rel))) as f:
                data.append(f.read())
            errors.append("")
        except OSError as exc:
            data.append(b"")
            errors.append(f"{rel}: cannot read ({exc})")
    return {**batch, "bytes": np.array(data, dtype=object), "read_error": np.array(errors, dtype=object)}


class StylizeActor:
    """One stylizer per actor (``open_stylizer``: a generator's Stylizer or an arbitrary style's
    ArbitraryStylizer); each batch is read (when no IO stage did), decoded, stylized, encoded
    and written. ``style_images``: an arbitrary style's paintings (a list of bytes, or an object
    ref to one), blended by ``weights`` once, here; ``alpha`` goes with them."""

    def __init__(self, style: str, models_dir: str, output: str, input: str | None = None,
                 precision: str = "fp32", provider: str = "cpu", threads: int = 1,
                 tile: int = 1024, strength: float = 1.0, preserve_color: bool = False,
                 max_side: int | None = None, style_images: Any = None,
                 weights: list[float] | None = None, alpha: float = 1.0):
        from raystyle.infer.generator import StylizeError, open_stylizer

        self.stylizer = open_stylizer(style, models_dir=models_dir, precision=precision,
                                      provider=provider, threads=threads, tile=tile)
        self.options: dict[str, Any] = dict(strength=strength, preserve_color=preserve_color,
                                            max_side=max_side)
        self.stats = None  # an arbitrary style's blended statistics, computed once
        arbitrary = getattr(self.stylizer, "kind", "generator") == "arbitrary"
        if arbitrary != (style_images is not None):  # the style was re-exported as another kind
            raise StylizeError(f"style {style!r} is {'an arbitrary' if arbitrary else 'a generator'} "
                               "style now; run the job again")
        if arbitrary:
            if not isinstance(style_images, list):  # an object ref, shared by every actor
                import ray

                style_images = ray.get(style_images)
            self.stats = self.stylizer.blend([bytes(b) for b in style_images], weights)
            self.options["alpha"] = alpha
        self.fs, self.root = resolve(output)
        self.input = input  # read the files here when no IO stage came before
        self.made_dirs: set[str] = set()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from raystyle.data.images import ImageError, decode, encode

        if "bytes" not in batch:
            batch = read_bytes(batch, self.input)
        paths = [str(p) for p in batch["path"]]
        n = len(paths)
        error = [""] * n
        ms = [0.0] * n
        arrays: dict[int, Any] = {}
        for i, (rel, data, read_error) in enumerate(
                zip(paths, batch["bytes"], batch["read_error"], strict=True)):
            start = time.perf_counter()
            if read_error:
                error[i] = str(read_error)
                continue
            try:
                arrays[i] = decode(bytes(data), name=rel)
            except ImageError as exc:
                error[i] = str(exc)
            ms[i] += (time.perf_counter() - start) * 1000
        results = self._stylize(arrays, error, ms, paths)
        for i, image in results.items():
            start = time.perf_counter()
            out, fmt = str(batch["output"][i]), str(batch["format"][i])
            try:
                write_atomic(self.fs, _join(self.root, out), encode(image, fmt), self.made_dirs)
            except (OSError, ValueError) as exc:
                error[i] = f"{paths[i]}: cannot write {out} ({exc})"
            ms[i] += (time.perf_counter() - start) * 1000
        return {"path": paths, "output": [str(o) for o in batch["output"]],
                "status": ["error" if e else "ok" for e in error], "error": error,
                "ms": [round(t, 2) for t in ms]}

    def _stylize(self, arrays: dict[int, Any], error: list[str], ms: list[float],
                 paths: list[str]) -> dict[int, Any]:
        """Equal shapes share one ONNX Runtime call; when the batch fails, try one by one."""
        if not arrays:
            return {}
        idx = list(arrays)
        start = time.perf_counter()
        try:
            out = self._run([arrays[i] for i in idx])
            share = (time.perf_counter() - start) * 1000 / len(idx)
            for i in idx:
                ms[i] += share
            return dict(zip(idx, out, strict=True))
        except Exception:  # one bad image must not take the batch down with it
            pass
        results = {}
        for i in idx:
            start = time.perf_counter()
            try:
                results[i] = self._run([arrays[i]])[0]
            except Exception as exc:  # recorded in the manifest; the job goes on
                error[i] = f"{paths[i]}: stylize failed ({type(exc).__name__}: {exc})"
            ms[i] += (time.perf_counter() - start) * 1000
        return results

    def _run(self, images: list[Any]) -> list[Any]:
        if self.stats is None:
            return self.stylizer.stylize_batch(images, **self.options)
        return self.stylizer.stylize_batch(images, styles=[self.stats] * len(images), **self.options)


# -- the job -----------------------------------------------------------------------------
def _check_options(workers: int | None, cpus_per_worker: int, batch_size: int, strength: float,
                   max_side: int | None, tile: int, fmt: str | None) -> None:
    from raystyle.core.nets import MULTIPLE

    if workers is not None and workers < 1:
        raise BatchError(f"--workers must be at least 1, got {workers}")
    if cpus_per_worker < 1:
        raise BatchError(f"--cpus-per-worker must be at least 1, got {cpus_per_worker}")
    if batch_size < 1:
        raise BatchError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 <= strength <= 1.0:
        raise BatchError(f"--strength must be between 0 and 1, got {strength}")
    if max_side is not None and max_side < MULTIPLE:
        raise BatchError(f"--max-side must be at least {MULTIPLE}, got {max_side}")
    if tile < 64 or tile % MULTIPLE:
        raise BatchError(f"--tile must be a multiple of {MULTIPLE} and at least 64, got {tile}")
    if fmt is not None and fmt.lower() not in FORMATS:
        raise BatchError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _actor_pool(workers: int | None, cpus_per_worker: int, gpu: bool) -> int:
    """Workers to start; refuses up front what the cluster cannot place (Ray would wait)."""
    import ray

    from raystyle.train.loop import ClusterError

    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if workers is None:
        workers = int(gpus) if gpu else int(cpus // cpus_per_worker)
        workers = max(1, workers)
    if gpu and gpus < workers:
        raise ClusterError(f"--gpu with {workers} worker(s) needs {workers} GPU(s); the cluster "
                           f"has {gpus:g}" + ("" if gpus else " (run without --gpu)"))
    if cpus < workers * cpus_per_worker:
        raise ClusterError(f"{workers} workers x {cpus_per_worker} CPU need "
                           f"{workers * cpus_per_worker} CPUs; the cluster has {cpus:g}. "
                           "Lower --workers or --cpus-per-worker")
    return workers


def write_manifest(output_uri: str, errors: list[dict[str, str]]) -> str:
    filesystem, root = resolve(output_uri)
    lines = "".join(json.dumps({"path": e["path"], "error": e["error"]}) + "\n"
                    for e in sorted(errors, key=lambda e: e["path"]))
    write_atomic(filesystem, _join(root, MANIFEST), lines.encode())
    return _join(root, MANIFEST) if "://" not in output_uri else f"{output_uri.rstrip('/')}/{MANIFEST}"


def read_style_images(style_images: Sequence[str | Path]) -> list[tuple[str, bytes]]:
    """(name, bytes) of each painting (a path or a pyarrow URI), read once on the driver and
    decoded once to check it; a missing or undecodable one is a one-line BatchError."""
    from pyarrow import fs as pafs

    from raystyle.data.images import ImageError, decode

    out = []
    for image in style_images:
        name = str(image)
        try:
            filesystem, path = resolve(name)
            kind = filesystem.get_file_info(path).type
            if kind == pafs.FileType.NotFound:
                raise BatchError(f"style image {name}: no such file")
            if kind != pafs.FileType.File:
                raise BatchError(f"style image {name}: not a file")
            with filesystem.open_input_file(path) as f:
                data = f.read()
            decode(data, name=f"style image {name}")
        except OSError as exc:
            raise BatchError(f"style image {name}: cannot read ({exc})") from None
        except ImageError as exc:
            raise BatchError(str(exc)) from None
        out.append((name, bytes(data)))
    return out


def _arbitrary_options(style: Any, style_images: Sequence[str | Path] | None,
                       weights: Sequence[float] | None, alpha: float, tile: int, max_side: int | None = None
                       ) -> tuple[list[tuple[str, bytes]] | None, list[float] | None, dict[str, Any]]:
    """Check the style-image options against the style's kind; for an arbitrary style read the
    paintings -> (their (name, bytes), normalised weights, the record for BatchResult.style)."""
    if style.kind != "arbitrary":
        if style_images or weights is not None or alpha != 1.0:
            raise BatchError(f"--style-image, --weights and --alpha are for arbitrary styles; "
                             f"{style.name!r} is a {style.kind} style")
        return None, None, {}
    from raystyle.infer.arbitrary import MULTIPLE, normalise_weights

    if not style_images:
        raise BatchError(f"style {style.name!r} is an arbitrary style: give --style-image PAINTING "
                         "(--nst STYLE_IMAGE is Gatys style transfer, without a registry style)")
    if not 0.0 <= alpha <= 1.0:
        raise BatchError(f"--alpha must be between 0 and 1, got {alpha}")
    if tile % MULTIPLE:
        raise BatchError(f"--tile must be a multiple of {MULTIPLE} for an arbitrary style, got {tile}")
    if max_side is not None and max_side < MULTIPLE:
        raise BatchError(f"--max-side must be at least {MULTIPLE} for an arbitrary style, got {max_side}")
    from raystyle.infer.generator import StylizeError

    try:
        norm = normalise_weights(weights, len(style_images))
    except StylizeError as exc:
        raise BatchError(f"--weights: {exc}") from None
    images = read_style_images(style_images)
    record = {"alpha": alpha, "style_images": [
        {"image": name, "sha256": hashlib.sha256(data).hexdigest(), "weight": w}
        for (name, data), w in zip(images, norm, strict=True)]}
    return images, norm, record


def run_batch(input: str | Path, output: str | Path, style: str, *, workers: int | None = None,
              cpus_per_worker: int = 1, gpu: bool = False, models_dir: str | Path | None = None,
              precision: str = "fp32", strength: float = 1.0, preserve_color: bool = False,
              max_side: int | None = None, fmt: str | None = None, batch_size: int = 8,
              tile: int | None = None, address: str | None = None,
              style_images: Sequence[str | Path] | None = None,
              weights: Sequence[float] | None = None, alpha: float = 1.0,
              smooth: float | None = None, fps: float | None = None, chunk_frames: int | None = None,
              crf: int = 18, echo: Callable[[str], None] | None = print) -> BatchResult:
    """Stylize every image and video under ``input`` into ``output`` with Ray Data actor pools.

    ``workers`` actors (default: as many as the cluster's CPUs / GPUs allow) each hold one
    stylizer with ``cpus_per_worker`` ONNX Runtime threads (and one GPU with ``gpu``).
    Inputs whose output exists are skipped; with nothing to do, Ray is not even started.
    An arbitrary style needs ``style_images`` (paths or URIs, read here once and shared with
    the actors), blended by ``weights`` (default equal), at ``alpha``; a generator takes none.
    Videos (raystyle.batch.videos) are cut into chunks of ``chunk_frames`` frames, smoothed
    with ``smooth`` (default 0.6) and resampled to ``fps`` when given; one H.264 file each at
    quality ``crf`` (0: lossless).
    """
    from raystyle import registry
    from raystyle.infer.video import (
        DEFAULT_SMOOTH,
        VIDEO_TILE,
        VideoError,
        check_crf,
        check_fps,
        check_smooth,
    )

    say = echo or (lambda _msg: None)
    input, output = str(input), str(output)
    image_tile = 1024 if tile is None else tile  # videos: VIDEO_TILE (frames up to 2048 px whole)
    _check_options(workers, cpus_per_worker, batch_size, strength, max_side, image_tile, fmt)
    smooth = DEFAULT_SMOOTH if smooth is None else smooth
    try:
        check_smooth(smooth)  # a bad --smooth, --fps or --crf fails here, before anything starts
        check_fps(fps)
        check_crf(crf)
    except VideoError as exc:
        raise BatchError(str(exc)) from None
    if chunk_frames is not None and chunk_frames < 1:
        raise BatchError(f"--chunk-frames must be at least 1, got {chunk_frames}")
    models = registry.models_dir(models_dir)
    st = registry.get_style(style, models)
    st.file(precision, "encoder" if st.kind == "arbitrary" else "model")  # no such precision: now
    paintings, norm, record = _arbitrary_options(st, style_images, weights, alpha, image_tile, max_side)
    work = plan(input, output, fmt)
    skipped = len(work.inputs) - len(work.todo)
    if record:
        say(f"[raystyle] arbitrary style {style}: " + ", ".join(
            f"{i['image']} (sha256 {i['sha256'][:12]}, weight {i['weight']:.3g})"
            for i in record["style_images"]) + f"; alpha {alpha:g}")
    n_videos = sum(1 for rel in work.inputs if work.outputs[rel][1] == "video")
    n_images = len(work.inputs) - n_videos
    what = " and ".join(f"{n} {kind}{'s' if n != 1 else ''}" for n, kind in
                        ((n_images, "image"), (n_videos, "video")) if n or kind == "image" and not n_videos)
    say(f"[raystyle] {what} in {input}: {skipped} already done, {len(work.todo)} to do")
    errors: list[dict[str, str]] = []
    seconds, stylized, frames = 0.0, 0, 0
    if work.todo:
        extra: dict[str, Any] = {}
        if paintings is not None:
            extra = dict(style_images=[data for _, data in paintings], weights=norm, alpha=alpha)
        actor_kwargs = dict(precision=precision, tile=image_tile, strength=strength,
                            preserve_color=preserve_color, max_side=max_side, **extra)
        videos = [rel for rel in work.todo if work.outputs[rel][1] == "video"]
        images = [rel for rel in work.todo if work.outputs[rel][1] != "video"]
        rows: list[dict[str, Any]] = []
        if images:
            rows, seconds = _run_dataset(replace(work, todo=images), input, output, style,
                                         str(models.resolve()), workers=workers,
                                         cpus_per_worker=cpus_per_worker, gpu=gpu,
                                         batch_size=batch_size, address=address, say=say,
                                         actor_kwargs=actor_kwargs)
        if videos:
            from raystyle.batch.videos import DEFAULT_CHUNK, run_videos

            video_rows, video_seconds, frames = run_videos(
                videos, {rel: work.outputs[rel][0] for rel in videos}, input, output, style,
                str(models.resolve()), workers=workers, cpus_per_worker=cpus_per_worker, gpu=gpu,
                address=address, say=say, actor_kwargs={**actor_kwargs, "tile": VIDEO_TILE if tile is None else tile},
                smooth=smooth, fps=fps,
                max_side=max_side, chunk_frames=chunk_frames or DEFAULT_CHUNK, crf=crf)
            rows, seconds = rows + video_rows, seconds + video_seconds
        stylized, errors = _reconcile(work, output, rows)
    manifest = write_manifest(output, errors)
    result = BatchResult(len(work.inputs), skipped, stylized, errors, seconds, manifest, record, frames)
    say(f"[raystyle] {result.summary()}")
    return result


def _run_dataset(work: Plan, input: str, output: str, style: str, models: str, *,
                 workers: int | None, cpus_per_worker: int, gpu: bool, batch_size: int,
                 address: str | None, say: Callable[[str], None],
                 actor_kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    import ray
    import ray.data

    from raystyle.train.loop import ClusterError, connect

    connect(address)
    blocks = max(1, min(math.ceil(len(work.todo) / batch_size), 1000))
    workers = min(_actor_pool(workers, cpus_per_worker, gpu), blocks)  # no idle actors
    say(f"[raystyle] {workers} worker(s) x {cpus_per_worker} CPU"
        + (" + 1 GPU" if gpu else "") + f", batches of {batch_size}")
    items = [{"path": rel, "output": work.outputs[rel][0], "format": work.outputs[rel][1]}
             for rel in work.todo]
    if actor_kwargs.get("style_images") is not None:  # in the object store once, for every actor
        actor_kwargs = {**actor_kwargs, "style_images": ray.put(actor_kwargs["style_images"])}
    start = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    if io_stage(input):
        # Remote storage: IO tasks (no CPU reserved, as the actors may hold every core)
        # fetch the next batches while the actors compute. A local disk is read in the actor.
        ds = ds.map_batches(read_bytes, fn_kwargs={"root": input}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=0)
    ds = ds.map_batches(
        StylizeActor,
        fn_constructor_kwargs=dict(style=style, models_dir=models, output=output, input=input,
                                   provider="cuda" if gpu else "cpu", threads=cpus_per_worker,
                                   **actor_kwargs),
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_worker,
        num_gpus=1 if gpu else 0,
    )
    try:
        rows = ds.take_all()
    except ray.exceptions.RayActorError as exc:  # e.g. --gpu without onnxruntime-gpu
        raise ClusterError(f"batch workers could not start: {_root_cause(exc)}") from None
    return rows, time.perf_counter() - start


def _root_cause(exc: BaseException) -> str:
    """The last ``SomeError: message`` line of a Ray error (its remote traceback), shortened."""
    for line in reversed(str(exc).splitlines()):
        m = re.match(r"^(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$", line.strip())
        if m:
            return f"{m.group(1)}: {m.group(2)}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _reconcile(work: Plan, output: str, rows: list[dict[str, Any]]
               ) -> tuple[int, list[dict[str, str]]]:
    """Outputs + error rows = inputs: an input the job lost becomes an error row too."""
    out_fs, out_root = resolve(output)
    existing = set(_files_under(out_fs, out_root))
    by_path = {str(r["path"]): r for r in rows}
    errors, stylized = [], 0
    for rel in work.todo:
        row = by_path.get(rel)
        out = work.outputs[rel][0]
        if row is not None and row["status"] == "ok" and out in existing:
            stylized += 1
        elif row is not None and row["status"] != "ok":
            errors.append({"path": rel, "error": str(row["error"])})
        else:
            errors.append({"path": rel, "error": f"{rel}: no output was written (the job lost it)"})
    return stylized, errors


# -- Gatys style transfer over a folder (--nst) ---------------------------------------------
def nst_task(batch: dict[str, Any], *, input: str, output: str, style: Any,
             options: dict[str, Any], threads: int, features: Any = None) -> dict[str, Any]:
    """One Ray task (one image: ``batch_size=1`` over one-row blocks): read, decode, optimise
    with raystyle.methods.nst.run_nst, encode and write atomically. Any failure of an image is its
    manifest row, never the job's. ``features``: an object ref to the VGG features' state
    dict, read once on the driver (None: random features, built from the seed)."""
    import ray
    import torch

    from raystyle.core.perceptual import FeatureNet
    from raystyle.data.images import ImageError, decode, encode
    from raystyle.methods.nst import NSTOptions, run_nst

    torch.set_num_threads(max(1, threads))
    opts = NSTOptions(**options)
    batch = read_bytes(batch, input)
    filesystem, root = resolve(output)
    paths = [str(p) for p in batch["path"]]
    error, ms = [""] * len(paths), [0.0] * len(paths)
    net = None
    for i, rel in enumerate(paths):
        start = time.perf_counter()
        out, fmt = str(batch["output"][i]), str(batch["format"][i])
        try:
            if batch["read_error"][i]:
                raise BatchError(str(batch["read_error"][i]))
            image = decode(bytes(batch["bytes"][i]), name=rel)
            if net is None:
                layers = opts.layers
                net = FeatureNet(opts.features, layers["content"] + layers["style"],
                                 ray.get(features) if features is not None else None, seed=opts.seed)
            result, _ = run_nst(image, style, opts, features=net)
            write_atomic(filesystem, _join(root, out), encode(result, fmt))
        except (BatchError, ImageError) as exc:  # their messages name the file already
            error[i] = str(exc)
        except OSError as exc:
            error[i] = f"{rel}: cannot write {out} ({exc})"
        except Exception as exc:  # recorded in the manifest; the job goes on
            error[i] = f"{rel}: style transfer failed ({type(exc).__name__}: {exc})"
        ms[i] = (time.perf_counter() - start) * 1000
    return {"path": paths, "output": [str(o) for o in batch["output"]],
            "status": ["error" if e else "ok" for e in error], "error": error,
            "ms": [round(t, 2) for t in ms]}


def run_nst_batch(input: str | Path, output: str | Path, style_image: str | Path,
                  options: NSTOptions, *, workers: int | None = None, cpus_per_worker: int = 1,
                  gpu: bool = False, fmt: str | None = None, address: str | None = None,
                  echo: Callable[[str], None] | None = print) -> BatchResult:
    """Gatys style transfer of every image under ``input`` towards ``style_image``, one image
    per Ray task (at most ``workers`` at a time, each with ``cpus_per_worker`` torch threads and
    one GPU with ``gpu``). Skips done outputs and writes the manifest as ``run_batch`` does."""
    from raystyle.core.perceptual import vgg_state
    from raystyle.data.images import load_rgb
    from raystyle.methods.nst import check_style

    say = echo or (lambda _msg: None)
    input, output = str(input), str(output)
    _check_options(workers, cpus_per_worker, 1, 1.0, None, 1024, fmt)
    style = load_rgb(style_image)  # unreadable: one ImageError line, before anything starts
    check_style(style, options)
    work = plan(input, output, fmt, videos=False)
    skipped = len(work.inputs) - len(work.todo)
    say(f"[raystyle] {len(work.inputs)} images in {input}: {skipped} already done, "
        f"{len(work.todo)} to do")
    errors: list[dict[str, str]] = []
    seconds, stylized = 0.0, 0
    if work.todo:
        state = None
        if options.features != "random":  # missing or wrong weights fail here, before Ray;
            state, info = vgg_state(options.features, options.vgg_weights)  # read once, shared
            options = replace(options, vgg_weights=info["path"])
        options = replace(options, device="cuda" if gpu else "cpu")
        rows, seconds = _run_nst_dataset(work, input, output, style, options, state, workers=workers,
                                         cpus_per_worker=cpus_per_worker, gpu=gpu,
                                         address=address, say=say)
        stylized, errors = _reconcile(work, output, rows)
    manifest = write_manifest(output, errors)
    result = BatchResult(len(work.inputs), skipped, stylized, errors, seconds, manifest)
    say(f"[raystyle] {result.summary()}")
    return result


def _run_nst_dataset(work: Plan, input: str, output: str, style: Any, options: NSTOptions,
                     state: dict[str, Any] | None, *,
                     workers: int | None, cpus_per_worker: int, gpu: bool, address: str | None,
                     say: Callable[[str], None]) -> tuple[list[dict[str, Any]], float]:
    import numpy as np
    import ray
    import ray.data

    from raystyle.train.loop import ClusterError, connect

    connect(address)
    workers = min(_actor_pool(workers, cpus_per_worker, gpu), len(work.todo))
    say(f"[raystyle] Gatys style transfer, one image per task, up to {workers} at a time x "
        f"{cpus_per_worker} CPU" + (" + 1 GPU" if gpu else "")
        + f" ({options.steps} {options.optimizer} steps at {options.size} px, {options.features})")
    items = [{"path": rel, "output": work.outputs[rel][0], "format": work.outputs[rel][1]}
             for rel in work.todo]
    start = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one image per block: per task
    ds = ds.map_batches(
        nst_task,
        fn_kwargs=dict(input=input, output=output, style=np.asarray(style),
                       options=options.to_dict(), threads=cpus_per_worker,
                       features=ray.put(state) if state is not None else None),
        compute=ray.data.TaskPoolStrategy(size=workers),
        batch_size=1, batch_format="numpy", num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0,
    )
    try:
        rows = ds.take_all()
    except ray.exceptions.RayError as exc:  # a task's worker died (memory, GPU driver, ...)
        raise ClusterError(f"style transfer tasks failed: {_root_cause(exc)}") from None
    return rows, time.perf_counter() - start


# -- command line ------------------------------------------------------------------------
def add_parser(sub) -> argparse.ArgumentParser:
    """Register `raystyle batch` on an argparse subparsers object."""
    p = sub.add_parser(
        "batch", help="stylize a whole folder (or s3:// prefix) with a Ray Data actor pool",
        description="Stylize every image under INPUT (subfolders too) into OUTPUT, keeping "
        "relative paths, with Ray Data actors that each hold one Stylizer. Inputs whose "
        f"output exists are skipped; failures are listed in OUTPUT/{MANIFEST} and retried "
        "by the next run. INPUT and OUTPUT are folders or pyarrow URIs (s3://, gs://, ...). "
        "An arbitrary (AdaIN) style takes --style-image PAINTING (repeat it to blend several "
        "with --weights): one trained network, the painting's statistics computed once per "
        "actor. --nst STYLE_IMAGE runs Gatys style transfer instead (raystyle nst): no registry "
        "style, an optimisation per image, one image per Ray task.")
    p.add_argument("input", metavar="INPUT", help="folder or URI of input images")
    p.add_argument("output", metavar="OUTPUT", help="folder or URI for the stylized images")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--style", metavar="NAME", help="style name in the registry")
    which.add_argument("--nst", metavar="STYLE_IMAGE",
                       help="Gatys style transfer towards this image instead of a registry style: "
                       "one image per Ray task, minutes each on a CPU (the style-transfer "
                       "options below apply only here); for a trained arbitrary style use "
                       "--style NAME --style-image PAINTING")
    p.add_argument("--style-image", dest="style_images", action="append", metavar="PAINTING",
                   help="with --style NAME of an arbitrary (AdaIN) style: the painting whose "
                   "style to apply (path or URI, read once on the driver and shared with every "
                   "actor); repeat to blend several (see --weights). Not for --nst")
    p.add_argument("--weights", metavar="W1,W2,...",
                   help="blend weights of the --style-image paintings, in order (default: equal)")
    p.add_argument("--alpha", type=float, default=1.0, metavar="A",
                   help="arbitrary styles: 0 = the content's own features, 1 = fully stylised (default)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="actors (--nst: tasks at a time) (default: cluster CPUs / "
                   "--cpus-per-worker, or GPUs with --gpu)")
    p.add_argument("--cpus-per-worker", type=int, default=1, metavar="N",
                   help="CPUs (= ONNX Runtime or torch threads) per actor or task (default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor (CUDA provider)")
    p.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--strength", type=float, default=1.0, metavar="S", help="0 = input unchanged, 1 = full style")
    p.add_argument("--preserve-color", action="store_true", help="keep the input's colours")
    p.add_argument("--max-side", type=int, metavar="N", help="downscale inputs so the longer side is at most N")
    p.add_argument("--tile", type=int, metavar="N",
                   help="tile size for large images (default 1024; video frames 2048)")
    p.add_argument("--format", choices=list(FORMATS),
                   help="output format (default: the input's if png/jpeg/webp, else png)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per actor call (default 8)")
    p.add_argument("--smooth", type=float, metavar="S",
                   help="videos: temporal smoothing along the motion, 0 (per-frame) to below 1 (default 0.6)")
    p.add_argument("--fps", type=float, metavar="F",
                   help="videos: output frame rate (default: the input's own timestamps)")
    p.add_argument("--chunk-frames", type=int, metavar="N",
                   help="videos: frames per Ray Data chunk (default 48; each adds a few warm-up frames)")
    p.add_argument("--crf", type=int, default=18, metavar="Q",
                   help="videos: H.264 quality, 0 (lossless) to 51 (default 18)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")
    from raystyle.methods.nst import (
        add_options as add_nst_options,  # torch: the CLI has it loaded already
    )

    add_nst_options(p.add_argument_group("style transfer (--nst)"), suppress=True)
    return p


def _nst_args(args: argparse.Namespace) -> NSTOptions:
    """The --nst options; registry-style options that mean nothing there are errors."""
    from raystyle.methods.nst import options_from_args

    ignored = [flag for flag, value, default in (
        ("--models-dir", args.models_dir, None), ("--precision", args.precision, "fp32"),
        ("--strength", args.strength, 1.0), ("--max-side", args.max_side, None),
        ("--tile", args.tile, None), ("--batch-size", args.batch_size, 8),
        ("--style-image", args.style_images, None), ("--weights", args.weights, None),
        ("--alpha", args.alpha, 1.0), ("--smooth", args.smooth, None), ("--fps", args.fps, None),
        ("--chunk-frames", args.chunk_frames, None), ("--crf", args.crf, 18)) if value != default]
    if ignored:
        raise BatchError(f"{', '.join(ignored)} only apply with --style; --nst takes --size, "
                         "--steps and the other style-transfer options")
    return options_from_args(args, preserve_color=args.preserve_color)


def cmd_batch(args: argparse.Namespace) -> int:
    if args.nst is not None:
        run_nst_batch(args.input, args.output, args.nst, _nst_args(args), workers=args.workers,
                      cpus_per_worker=args.cpus_per_worker, gpu=args.gpu, fmt=args.format,
                      address=args.address)
        return 0  # failed inputs are listed in the manifest; they do not fail the job
    from raystyle.infer.arbitrary import parse_weights
    from raystyle.methods.nst import OPTION_FIELDS

    given = [f"--{name.replace('_', '-')}" for name in OPTION_FIELDS if hasattr(args, name)]
    if given:
        raise BatchError(f"{', '.join(given)} only apply with --nst STYLE_IMAGE, not with --style")
    result = run_batch(args.input, args.output, args.style, workers=args.workers,
                       cpus_per_worker=args.cpus_per_worker, gpu=args.gpu,
                       models_dir=args.models_dir, precision=args.precision,
                       strength=args.strength, preserve_color=args.preserve_color,
                       max_side=args.max_side, fmt=args.format, batch_size=args.batch_size,
                       tile=args.tile, address=args.address, style_images=args.style_images,
                       weights=parse_weights(args.weights), alpha=args.alpha, smooth=args.smooth,
                       fps=args.fps, chunk_frames=args.chunk_frames, crf=args.crf)
    del result  # failed inputs are listed in the manifest; they do not fail the job
    return 0
