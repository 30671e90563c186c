"""[ray] Videos in `raystyle batch`: each video cut into chunks of frames, stylized by Ray Data
actors in parallel, written back in order into one file per video.

    driver: probe each video (a bad one is a manifest row; the others go on) ─▶ plan its
      output frames ─▶ chunks {path, start, stop} ─▶ Dataset (one chunk per block, order kept)
      ─▶ map_batches(VideoChunkActor, ActorPoolStrategy)  (one stylizer per actor: seek to the
         chunk, stylize and smooth from ``warmup`` frames before it, return its frames)
      ─▶ the driver encodes the chunks in order (H.264, the input's timestamps and audio) into
         a temporary file and publishes it when the video's last chunk is in.

Each chunk starts its smoothing ``warmup_frames(smooth)`` frames early (those frames are
stylized and dropped; counted in input frames, so ``--fps`` above the input's rate does not
shorten it), so the history at the chunk's first frame matches one sequential pass to within
``smooth ** warmup`` (1 %; the warm-up is capped at 32 frames, so above ``--smooth`` 0.87 a
little more): no seam at chunk borders. A video whose chunk fails is
an error row (its partial file is removed); the other videos still finish. So is one refused
while it is probed (raystyle.infer.video: not an allowed container or codec, over the frame or
duration caps; checked before its frame plan is made) and one whose frames grow past the pixel
cap mid-stream (the chunk that meets the frame fails). A chunk holds at most ``chunk_frames``
frames and at most ``chunk_budget()`` bytes of them (RAYSTYLE_CHUNK_MB, 512 MiB).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raystyle.batch.stages import BatchError, StylizeActor, resolve
from raystyle.infer.video import (
    OUTPUT_FORMATS,
    FramePlan,
    VideoError,
    VideoInfo,
    VideoWriter,
    check_limits,
    plan_frames,
    probe,
    stylized_frames,
    warmup_frames,
)
from raystyle.util import storage

DEFAULT_CHUNK = 48  # frames per chunk (2 s at 24 fps); warm-up adds smooth-dependent frames to each
# and at most this many bytes of output frames per chunk (RAYSTYLE_CHUNK_MB): 48 frames of 1080p
# (300 MB) fit, 4K chunks are cut to 21 frames, a 100 MP clip runs one frame per chunk
DEFAULT_CHUNK_MB = 512


@dataclass(frozen=True)
class VideoJob:
    """What the driver learnt about one video before Ray starts."""

    rel: str
    output: str
    info: VideoInfo
    plan: FramePlan


def _source(root: str, rel: str):
    """A path for local files (FFmpeg reads them itself), else a seekable pyarrow file; checked
    by raystyle.util.storage (ContainmentError: a ".." key, a link leaving INPUT)."""
    filesystem, base = resolve(root)
    if storage.is_local(filesystem):
        return storage.input_path(filesystem, base, rel)
    return storage.open_input(filesystem, base, rel)


def chunk_bounds(frames: int, size: int) -> list[tuple[int, int]]:
    """[0, frames) in chunks of ``size`` frames (the last may be shorter)."""
    return [(s, min(frames, s + size)) for s in range(0, frames, size)]


def chunk_budget() -> int:
    """Bytes of output frames one chunk may hold: RAYSTYLE_CHUNK_MB (default 512) MiB."""
    text = os.environ.get("RAYSTYLE_CHUNK_MB", "").strip()
    try:
        mb = float(text) if text else DEFAULT_CHUNK_MB
    except ValueError:
        mb = -1.0
    if not (mb > 0 and mb < 2**40):
        raise BatchError(f"RAYSTYLE_CHUNK_MB must be a number of MiB above 0, got {text!r}")
    return int(mb * 2**20)


def chunk_size(plan: FramePlan, frames: int, budget: int) -> int:
    """Frames per chunk of ``plan``: ``frames``, fewer where they would pass ``budget`` bytes (at
    least one: a frame itself is within the pixel cap)."""
    return max(1, min(frames, budget // (plan.width * plan.height * 3)))


class VideoChunkActor(StylizeActor):
    """A StylizeActor that takes one chunk per call: ``{path, start, stop}`` -> its frames
    (uint8 bytes and shape), or an error. ``jobs``: an object ref to {path: (info, plan)}."""

    def __init__(self, *, jobs: Any, input: str, smooth: float, warmup: int, frames_batch: int = 1,
                 **kwargs: Any):
        super().__init__(input=input, **kwargs)
        import ray

        self.jobs = jobs if isinstance(jobs, dict) else ray.get(jobs)
        self.smooth, self.warmup, self.frames_batch = smooth, warmup, frames_batch
        self.options["max_side"] = None  # frames come at the planned size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows: dict[str, list[Any]] = {"path": [], "start": [], "frames": [], "shape": [], "error": [], "ms": []}
        for rel, start, stop in zip(batch["path"], batch["start"], batch["stop"], strict=True):
            rel, start, stop = str(rel), int(start), int(stop)
            began = time.perf_counter()
            data, shape, error = b"", [0, 0, 0, 0], ""
            source = None
            try:
                info, plan = self.jobs[rel]
                source = _source(self.input, rel)
                # one array of the chunk's frames, filled as they come (no list of copies)
                stack = np.empty((stop - start, plan.height, plan.width, 3), np.uint8)
                got = 0
                for _, frame in stylized_frames(source, info, plan, self._run, smooth=self.smooth,
                                                start=start, stop=stop, warmup=self.warmup,
                                                batch=self.frames_batch):
                    if got >= len(stack) or frame.shape != stack.shape[1:]:
                        raise VideoError(f"{rel}: frames {start}-{stop - 1}: frame {start + got} is "
                                         f"{frame.shape}, {stack.shape[1:]} planned")
                    stack[got] = frame
                    got += 1
                if got != stop - start:
                    raise VideoError(f"{rel}: frames {start}-{stop - 1}: got {got}")
                data, shape = stack.tobytes(), list(stack.shape)
                del stack
            except VideoError as exc:
                error = str(exc)
            except Exception as exc:  # the manifest gets it; other videos go on
                error = f"{rel}: stylize failed at frames {start}-{stop - 1} ({type(exc).__name__}: {exc})"
            finally:
                if source is not None and hasattr(source, "close"):
                    with contextlib.suppress(Exception):
                        source.close()
            for key, value in (("path", rel), ("start", start), ("frames", data), ("shape", shape),
                               ("error", error), ("ms", round((time.perf_counter() - began) * 1000, 1))):
                rows[key].append(value)
        return {"path": np.array(rows["path"], dtype=object), "start": np.array(rows["start"]),
                "frames": np.array(rows["frames"], dtype=object), "shape": np.array(rows["shape"]),
                "error": np.array(rows["error"], dtype=object), "ms": np.array(rows["ms"])}


def prepare(videos: list[str], outputs: dict[str, str], input: str, *, max_side: int | None,
            fps: float | None, max_frames: int | None = None,
            max_duration: float | None = None) -> tuple[list[VideoJob], list[dict[str, Any]]]:
    """Probe and plan every video on the driver -> (jobs, error rows for the bad ones: also one
    over ``max_frames`` / ``max_duration``, refused before its plan is made)."""
    jobs, rows = [], []
    for rel in videos:
        source = None
        try:
            source = _source(input, rel)
            info = probe(source, name=rel, max_frames=max_frames, max_duration=max_duration)
            jobs.append(VideoJob(rel, outputs[rel], info, plan_frames(info, max_side, fps)))
        except VideoError as exc:
            rows.append({"path": rel, "status": "error", "error": str(exc)})
        except OSError as exc:
            rows.append({"path": rel, "status": "error", "error": f"{rel}: cannot read ({exc})"})
        except storage.ContainmentError as exc:
            rows.append({"path": rel, "status": "error", "error": f"{rel}: not read ({exc})"})
        except Exception as exc:  # MemoryError, a PyAV surprise: this video's row, the batch goes on
            rows.append({"path": rel, "status": "error",
                         "error": f"{rel}: cannot read as a video ({type(exc).__name__}: {exc})"})
        finally:
            if source is not None and hasattr(source, "close"):
                with contextlib.suppress(Exception):
                    source.close()
    return jobs, rows


class VideoOutput:
    """One video's output while its chunks come in: a temporary local file, published whole
    (locally an exclusive temporary name beside it, renamed; remotely uploaded to a temporary
    key and moved to its name once complete: raystyle.util.storage.put_file)."""

    def __init__(self, job: VideoJob, input: str, output: str, crf: int):
        self.job = job
        self.fs, root = resolve(output)
        self.dest = storage.output_path(self.fs, root, job.output)  # inside OUTPUT, folder made
        self.local = storage.is_local(self.fs)
        if self.local:
            fd, self.tmp = storage.create_temp(self.dest)  # O_EXCL: no planted link followed
            os.close(fd)
        else:
            self.tmp = Path(tempfile.mkdtemp(prefix="raystyle-video-")) / Path(job.output).name
        fmt = OUTPUT_FORMATS[Path(job.output).suffix.lower()]
        self.audio = None
        try:
            self.audio = _source(input, job.rel) if job.info.audio else None
            self.writer = VideoWriter(self.tmp, job.plan, fmt, audio=self.audio, crf=crf, name=job.output)
        except BaseException:
            self._close_audio()
            if self.local:
                self.tmp.unlink(missing_ok=True)
            else:
                shutil.rmtree(self.tmp.parent, ignore_errors=True)
            raise
        self.next = 0  # the next output frame expected

    def add(self, start: int, frames: np.ndarray) -> None:
        if start != self.next:
            raise VideoError(f"{self.job.rel}: chunk at frame {start} arrived, {self.next} expected")
        for i, frame in enumerate(frames):
            self.writer.write(frame, self.job.plan.pts[start + i])
        self.next += len(frames)

    @property
    def done(self) -> bool:
        return self.next >= self.job.plan.frames

    def publish(self) -> None:
        self.writer.close()
        self._close_audio()
        if self.local:
            os.replace(self.tmp, self.dest)
            return
        try:  # a temporary key, moved to the final name only once the upload is complete
            storage.put_file(self.fs, self.dest, self.tmp)
        finally:
            shutil.rmtree(self.tmp.parent, ignore_errors=True)

    def abort(self) -> None:
        self.writer.abort()
        self._close_audio()
        with contextlib.suppress(OSError):
            self.tmp.unlink()
        if not self.local:
            shutil.rmtree(self.tmp.parent, ignore_errors=True)

    def _close_audio(self) -> None:
        if self.audio is not None and hasattr(self.audio, "close"):
            with contextlib.suppress(Exception):
                self.audio.close()


def run_videos(videos: list[str], outputs: dict[str, str], input: str, output: str, style: str,
               models: str, *, workers: int | None, cpus_per_worker: int, gpu: bool,
               address: str | None, say: Callable[[str], None], actor_kwargs: dict[str, Any],
               smooth: float, fps: float | None, max_side: int | None,
               chunk_frames: int = DEFAULT_CHUNK, crf: int = 18, max_frames: int | None = None,
               max_duration: float | None = None) -> tuple[list[dict[str, Any]], float, int]:
    """Stylize ``videos`` (relative paths under ``input``) -> (rows {path, status, error}, seconds,
    frames written). Probing happens first, on the driver: bad videos are rows, never failures
    (over ``max_frames`` / ``max_duration`` too: raystyle.infer.video.check_limits). A chunk
    holds up to ``chunk_frames`` frames and up to ``chunk_budget()`` bytes of them."""
    import ray
    import ray.data

    from raystyle.cluster import ClusterError, connect

    if chunk_frames < 1:
        raise BatchError(f"--chunk-frames must be at least 1, got {chunk_frames}")
    budget = chunk_budget()
    try:
        check_limits(max_frames, max_duration)
    except VideoError as exc:
        raise BatchError(str(exc)) from None
    jobs, rows = prepare(videos, outputs, input, max_side=max_side, fps=fps, max_frames=max_frames,
                         max_duration=max_duration)
    if not jobs:
        return rows, 0.0, 0
    warmup = warmup_frames(smooth)
    sizes = {j.rel: chunk_size(j.plan, chunk_frames, budget) for j in jobs}
    chunks = [{"path": j.rel, "start": s, "stop": e} for j in jobs for s, e in chunk_bounds(j.plan.frames, sizes[j.rel])]
    connect(address)
    from raystyle.cluster import (  # Ray loads on use: the CLI imports this module
        actor_pool,
        root_cause,
    )

    workers = min(actor_pool(workers, cpus_per_worker, gpu), len(chunks))
    total = sum(j.plan.frames for j in jobs)
    say(f"[raystyle] {len(jobs)} video(s), {total} frames in {len(chunks)} chunks of up to {max(sizes.values())} "
        f"(+{warmup} warm-up) frames; {workers} worker(s) x {cpus_per_worker} CPU"
        + (" + 1 GPU" if gpu else "") + f"; smoothing {smooth:g}")
    by_rel = {j.rel: j for j in jobs}
    ctx = ray.data.DataContext.get_current()
    kept = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # chunks come back in order: written as they come
    start = time.perf_counter()
    current: VideoOutput | None = None
    failed: dict[str, str] = {}
    written = 0
    try:
        ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
        ds = ds.map_batches(
            VideoChunkActor,
            fn_constructor_kwargs=dict(style=style, models_dir=models, output=output, input=input,
                                       provider="cuda" if gpu else "cpu", threads=cpus_per_worker,
                                       jobs=ray.put({j.rel: (j.info, j.plan) for j in jobs}),
                                       smooth=smooth, warmup=warmup, frames_batch=4 if gpu else 1,
                                       **actor_kwargs),
            # one chunk at a time per actor: a chunk queued behind another on a busy actor waits
            # while an idle (or still starting) one could take it
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            batch_size=1, batch_format="numpy", num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0,
        )
        for row in ds.iter_rows():
            rel = str(row["path"])
            if rel in failed:
                continue
            job = by_rel[rel]
            try:
                if row["error"]:
                    raise VideoError(str(row["error"]))
                if current is None or current.job.rel != rel:
                    if current is not None:  # the previous video lost chunks: should not happen
                        current.abort()
                        failed[current.job.rel] = f"{current.job.rel}: chunks missing"
                    current = VideoOutput(job, input, output, crf)
                shape = [int(x) for x in row["shape"]]
                current.add(int(row["start"]), np.frombuffer(row["frames"], np.uint8).reshape(shape))
                if current.done:
                    current.publish()
                    written += job.plan.frames
                    elapsed = time.perf_counter() - start
                    say(f"[raystyle] {rel} -> {job.output}: {job.plan.frames} frames "
                        f"({job.plan.width}x{job.plan.height} at {float(job.plan.rate):.3g} fps), "
                        f"{written / elapsed:.2f} frames/s so far")
                    rows.append({"path": rel, "status": "ok", "error": ""})
                    current = None
            except (VideoError, OSError, storage.ContainmentError) as exc:
                if current is not None and current.job.rel == rel:
                    current.abort()
                    current = None
                failed[rel] = str(exc) if isinstance(exc, VideoError) else f"{rel}: cannot write ({exc})"
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"video workers failed: {root_cause(exc)}") from None
    finally:
        ctx.execution_options.preserve_order = kept
        if current is not None:
            current.abort()
    rows += [{"path": rel, "status": "error", "error": error} for rel, error in failed.items()]
    return rows, time.perf_counter() - start, written
