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
and rewrites the manifest. Corrupt inputs become manifest rows; they never fail the job. What
is read and where anything is written is raystyle.util.storage's decision: keys with ``..``,
folder links and links leaving INPUT are manifest rows, never read; no output leaves OUTPUT.
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

Importing this module is cheap (`raystyle batch`, raystyle.cli.batch, imports it); Ray, ONNX
Runtime and PIL load on use.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raystyle.batch.stages import BatchError, StylizeActor, read_bytes, resolve
from raystyle.data.colour import ColourError, colour_mode
from raystyle.util import storage
from raystyle.util.storage import ContainmentError, join

if TYPE_CHECKING:
    from raystyle.methods.nst import NSTOptions

MANIFEST = "_errors.jsonl"
FORMATS = ("png", "jpeg", "webp")


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
def io_stage(uri: str) -> bool:
    """Whether inputs are read by separate IO tasks: yes for remote storage (latency to
    hide), no for local paths (reading is cheap; extra worker processes cost cores)."""
    return "://" in uri and not uri.startswith("file://")


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
    # inputs that are not read (a key with a ".." part, a link leaving INPUT or to a folder)
    # -> their manifest error line; storage.list_inside decides
    refused: dict[str, str] = field(default_factory=dict)

    def refused_rows(self) -> list[dict[str, str]]:
        return [{"path": rel, "error": error} for rel, error in self.refused.items()]


def plan(input_uri: str, output_uri: str, fmt: str | None = None, videos: bool = True) -> Plan:
    """List the input images (and videos) and the outputs that exist (raystyle.util.storage's
    list_inside: keys with "..", folder links and links leaving INPUT are ``refused``, never
    read); removes temporary files older than storage.STALE_TMP_S (younger ones may belong to
    another run writing into the same OUTPUT)."""
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
    listing = storage.list_inside(in_fs, in_root, suffixes)
    inputs = [rel for rel in listing.files if not (nested and rel.startswith(nested))]
    refused = {rel: error for rel, error in listing.refused.items()
               if not (nested and (rel + "/").startswith(nested))}
    if not inputs:
        what = "images or videos" if videos else "images"
        also = f"; {len(refused)} not read, e.g. {next(iter(refused.values()))!r}" if refused else ""
        raise BatchError(f"no {what} in {input_uri} (looked for {', '.join(sorted(suffixes))}, "
                         f"in subfolders too{also})")
    outputs: dict[str, tuple[str, str]] = {}
    claimed: dict[str, str] = {}
    for rel in inputs:
        out, f = output_name(rel, fmt)
        if out in claimed:
            raise BatchError(f"inputs {claimed[out]} and {rel} would both be written as {out}; "
                             "rename one of them")
        claimed[out] = rel
        outputs[rel] = (out, f)
    found = storage.list_inside(out_fs, out_root)
    # temporary files left by a run that ended; younger ones may be another live run's
    storage.remove_stale_temps(out_fs, out_root, found.temps)
    existing = set(found.files)
    todo = [rel for rel in inputs if outputs[rel][0] not in existing]
    return Plan(inputs, outputs, todo, refused)


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


def _refused_note(work: Plan) -> str:
    if not work.refused:
        return ""
    return f"; {len(work.refused)} not read (keys or links that leave the folder: see the manifest)"


def write_manifest(output_uri: str, errors: list[dict[str, str]]) -> str:
    filesystem, root = resolve(output_uri)
    lines = "".join(json.dumps({"path": e["path"], "error": e["error"]}) + "\n"
                    for e in sorted(errors, key=lambda e: e["path"]))
    storage.write_inside(filesystem, root, MANIFEST, lines.encode())
    return join(root, MANIFEST) if "://" not in output_uri else f"{output_uri.rstrip('/')}/{MANIFEST}"


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
    from raystyle.infer.kinds import kind_of

    if not kind_of(style).style_images:
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
    from raystyle.infer.base import StylizeError

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
              precision: str = "fp32", strength: float = 1.0, preserve_color: bool | str | None = None,
              max_side: int | None = None, fmt: str | None = None, batch_size: int = 8,
              tile: int | None = None, address: str | None = None,
              style_images: Sequence[str | Path] | None = None,
              weights: Sequence[float] | None = None, alpha: float = 1.0,
              smooth: float | None = None, fps: float | None = None, chunk_frames: int | None = None,
              crf: int = 18, max_frames: int | None = None, max_duration: float | None = None,
              echo: Callable[[str], None] | None = print) -> BatchResult:
    """Stylize every image and video under ``input`` into ``output`` with Ray Data actor pools.

    ``workers`` actors (default: as many as the cluster's CPUs / GPUs allow) each hold one
    stylizer with ``cpus_per_worker`` ONNX Runtime threads (and one GPU with ``gpu``).
    Inputs whose output exists are skipped; with nothing to do, Ray is not even started.
    An arbitrary style needs ``style_images`` (paths or URIs, read here once and shared with
    the actors), blended by ``weights`` (default equal), at ``alpha``; a generator takes none.
    ``preserve_color``: True, False or a mode of raystyle.data.colour (True: luminance).
    Videos (raystyle.batch.videos) are cut into chunks of ``chunk_frames`` frames, smoothed
    with ``smooth`` (default 0.6) and resampled to ``fps`` when given; one H.264 file each at
    quality ``crf`` (0: lossless); one of more than ``max_frames`` frames or ``max_duration``
    seconds is an error row (raystyle.infer.video.check_limits).
    """
    from raystyle import registry
    from raystyle.infer.video import (
        DEFAULT_SMOOTH,
        VIDEO_TILE,
        VideoError,
        check_crf,
        check_fps,
        check_limits,
        check_smooth,
    )

    say = echo or (lambda _msg: None)
    input, output = str(input), str(output)
    image_tile = 1024 if tile is None else tile  # videos: VIDEO_TILE (frames up to 2048 px whole)
    _check_options(workers, cpus_per_worker, batch_size, strength, max_side, image_tile, fmt)
    try:
        preserve_color = colour_mode(preserve_color)  # None or a mode: what the actors get
    except ColourError as exc:
        raise BatchError(f"--{exc}".replace("preserve_color", "preserve-color", 1)) from None
    smooth = DEFAULT_SMOOTH if smooth is None else smooth
    try:
        check_smooth(smooth)  # a bad --smooth, --fps or --crf fails here, before anything starts
        check_fps(fps)
        check_crf(crf)
        check_limits(max_frames, max_duration)
    except VideoError as exc:
        raise BatchError(str(exc)) from None
    if chunk_frames is not None and chunk_frames < 1:
        raise BatchError(f"--chunk-frames must be at least 1, got {chunk_frames}")
    models = registry.models_dir(models_dir)
    st = registry.get_style(style, models)
    from raystyle.infer.kinds import kind_of

    st.file(precision, kind_of(st).graph)  # no such precision: now
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
    say(f"[raystyle] {what} in {input}: {skipped} already done, {len(work.todo)} to do"
        + _refused_note(work))
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
                max_side=max_side, chunk_frames=chunk_frames or DEFAULT_CHUNK, crf=crf,
                max_frames=max_frames, max_duration=max_duration)
            rows, seconds = rows + video_rows, seconds + video_seconds
        stylized, errors = _reconcile(work, output, rows)
    errors = work.refused_rows() + errors  # refused inputs: manifest rows too
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

    from raystyle.cluster import ClusterError, connect

    connect(address)
    blocks = max(1, min(math.ceil(len(work.todo) / batch_size), 1000))
    from raystyle.cluster import (  # Ray loads on use: the CLI imports this module
        actor_pool,
        root_cause,
    )

    workers = min(actor_pool(workers, cpus_per_worker, gpu), blocks)  # no idle actors
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
        raise ClusterError(f"batch workers could not start: {root_cause(exc)}") from None
    return rows, time.perf_counter() - start


def _reconcile(work: Plan, output: str, rows: list[dict[str, Any]]
               ) -> tuple[int, list[dict[str, str]]]:
    """Outputs + error rows = inputs: an input the job lost becomes an error row too."""
    out_fs, out_root = resolve(output)
    existing = set(storage.list_inside(out_fs, out_root).files)
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
            storage.write_inside(filesystem, root, out, encode(result, fmt))
        except (BatchError, ImageError, ContainmentError) as exc:  # their messages name the file
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
        f"{len(work.todo)} to do" + _refused_note(work))
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
    errors = work.refused_rows() + errors  # refused inputs: manifest rows too
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

    from raystyle.cluster import ClusterError, connect

    connect(address)
    from raystyle.cluster import (  # Ray loads on use: the CLI imports this module
        actor_pool,
        root_cause,
    )

    workers = min(actor_pool(workers, cpus_per_worker, gpu), len(work.todo))
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
        raise ClusterError(f"style transfer tasks failed: {root_cause(exc)}") from None
    return rows, time.perf_counter() - start
