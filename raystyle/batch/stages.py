"""[ray] What image and video batches share: errors, locations, the read stage, the stylize actor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raystyle.errors import RaystyleError
from raystyle.util import storage


class BatchError(RaystyleError):
    """Bad batch input: missing folder, no images, bad options, clashing output names."""


def resolve(location: str | Path):
    """A local path or a URI (s3://, gs://, file://, hdfs://...) -> (pyarrow filesystem, path),
    through raystyle.util.storage (S3 credentials of the driver forwarded to the workers)."""
    text = str(location)
    target = text if "://" in text else Path(text).expanduser().resolve()
    try:
        loc = storage.resolve(target)
    except storage.StorageError as exc:
        raise BatchError(str(exc)) from None
    return loc.fs, loc.path.rstrip("/") or loc.path


def read_bytes(batch: dict[str, Any], root: str) -> dict[str, Any]:
    """Add each input's bytes, or a read error, to the rows (the IO stage, or in the actor)."""
    import numpy as np

    filesystem, base = resolve(root)
    data, errors = [], []
    for rel in batch["path"]:
        try:  # checked again here: a link made since the listing is still refused
            with storage.open_input(filesystem, base, str(rel)) as f:
                data.append(f.read())
            errors.append("")
        except storage.ContainmentError as exc:
            data.append(b"")
            errors.append(f"{rel}: not read ({exc})")
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
                 tile: int = 1024, strength: float = 1.0, preserve_color: bool | str | None = None,
                 max_side: int | None = None, style_images: Any = None,
                 weights: list[float] | None = None, alpha: float = 1.0):
        from raystyle.infer.base import StylizeError
        from raystyle.infer.kinds import kind_of, open_stylizer

        self.stylizer = open_stylizer(style, models_dir=models_dir, precision=precision,
                                      provider=provider, threads=threads, tile=tile)
        self.options: dict[str, Any] = dict(strength=strength, preserve_color=preserve_color,
                                            max_side=max_side)
        self.stats = None  # an arbitrary style's blended statistics, computed once
        arbitrary = kind_of(self.stylizer.style).style_images
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
            try:  # ContainmentError (a ValueError): the output would leave OUTPUT
                storage.write_inside(self.fs, self.root, out, encode(image, fmt), self.made_dirs)
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
