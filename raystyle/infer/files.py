"""What `raystyle stylize` does with files and folders, as a library: which inputs a list of
paths means, where each result goes, and one function that runs a registry style (of any kind)
on a list of images. ONNX Runtime and numpy only; the CLI (raystyle.cli.stylize) parses
options and prints, batch and the monitor can call the same pieces.

  inputs = expand_inputs(["photos/", "clip.mp4", "-"], warn=print)
  plan = plan_outputs(inputs, "out/", fmt=None)          # Job(src, dest, video, fmt) each
  run = style_runner("monet", style_images=None)          # run(images, **options) -> arrays
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raystyle.data.images import ENCODE_FORMATS, IMAGE_SUFFIXES, ImageError, format_for_path
from raystyle.errors import RaystyleError
from raystyle.infer.video import OUTPUT_FORMATS, VIDEO_SUFFIXES, is_video, output_name

STDIN = "-"
NO_INPUTS = "no input images or videos found"


@dataclass(frozen=True)
class Input:
    """One input: a file path (or ``-``, stdin) and its path relative to the folder it was
    found in (None for stdin): outputs keep that relative path."""

    src: str
    rel: Path | None

    @property
    def video(self) -> bool:
        return self.src != STDIN and is_video(self.src)


@dataclass(frozen=True)
class Job:
    """Where one input's result goes: ``dest`` (None: stdout) in image format ``fmt``."""

    src: str
    dest: Path | None
    video: bool
    fmt: str | None = None  # images: png, jpeg or webp


def expand_inputs(inputs: Sequence[str], warn: Callable[[str], Any] | None = None) -> list[Input]:
    """Files as given, folders searched recursively for images and videos, ``-`` for stdin. A
    folder is listed by raystyle.util.storage.list_inside: folder links are not followed and
    links to files outside the folder are not read (``warn`` gets a line for each)."""
    from pyarrow import fs as pafs

    from raystyle.util.storage import list_inside

    out: list[Input] = []
    for item in inputs:
        path = Path(item)
        if item == STDIN:
            out.append(Input(STDIN, None))
        elif path.is_dir():
            listing = list_inside(pafs.LocalFileSystem(), str(path.absolute()), IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            for error in listing.refused.values():
                if warn is not None:
                    warn(f"{path}/{error}")
            out += [Input(str(path / rel), Path(rel)) for rel in listing.files]
        else:
            out.append(Input(item, Path(path.name)))
    return out


def plan_outputs(inputs: Sequence[Input], output: str | Path, fmt: str | None = None) -> list[Job]:
    """Each input's destination under ``output``: a file when there is one input and ``output``
    names an image (.png, .jpg, .webp) or a video (.mp4, .mov, .mkv) file, ``-`` for stdout (one
    image), else a folder where each keeps its relative path (images as ``fmt``, default their
    own format where it is png/jpeg/webp, else png; videos as .mp4 unless .mov/.mkv). Refused
    (RaystyleError, nothing written): a file of the wrong kind, stdout for several inputs or a
    video, and two inputs that would be written to one file."""
    if not inputs:
        raise RaystyleError(NO_INPUTS)
    videos = [i for i in inputs if i.video]
    to_stdout = str(output) == "-"
    out = Path(output)
    if to_stdout and (len(inputs) != 1 or videos):
        raise RaystyleError("-o - (stdout) takes exactly one input image")
    suffix = out.suffix.lower()
    single_file = len(inputs) == 1 and (suffix.lstrip(".") in ENCODE_FORMATS or suffix in OUTPUT_FORMATS)
    if videos and suffix in VIDEO_SUFFIXES and suffix not in OUTPUT_FORMATS:
        raise RaystyleError(f"-o {out}: a video is written as .mp4, .mov or .mkv (H.264)")
    if single_file and bool(videos) != (suffix in OUTPUT_FORMATS):
        raise RaystyleError(f"-o {out}: " + ("a video is written as .mp4, .mov or .mkv" if videos else
                                             "an image is written as .png, .jpg or .webp"))

    def image_job(item: Input) -> Job:
        if single_file:
            return Job(item.src, out, False, format_for_path(out))
        own = item.rel.suffix.lower().lstrip(".") if item.rel is not None else ""
        chosen = fmt or (own if own in ENCODE_FORMATS else "png")
        dest = None if to_stdout else out / (item.rel or Path("stdin")).with_suffix(f".{chosen}")
        return Job(item.src, dest, False, chosen)

    jobs = [Job(i.src, out if single_file else out / output_name(i.rel.as_posix()), True) if i.video
            else image_job(i) for i in inputs]
    if not single_file and not to_stdout:  # a.webm and a.mp4 both become a.mp4: refuse, lose nothing
        seen: dict[Path, str] = {}
        for job in jobs:
            if job.dest in seen:
                raise RaystyleError(f"{seen[job.dest]} and {job.src} would both be written to {job.dest}")
            seen[job.dest] = job.src
    return jobs


def style_runner(style: str, *, models_dir: str | Path | None = None, precision: str = "fp32",
                 provider: str = "auto", tile: int = 1024, style_images: Sequence[str | Path] | None = None,
                 weights: str | None = None, alpha: float = 1.0) -> Callable[..., list[Any]]:
    """``run(images, **options) -> list of uint8 arrays`` for registry style ``style``, whatever
    its kind (raystyle.infer.kinds). A kind whose requests bring style images takes
    ``style_images`` (blended by ``weights``, "W1,W2,...", at strength ``alpha``); they are read
    and encoded once, here, for every image (a bad one fails here). Other kinds refuse them."""
    from raystyle.infer.kinds import kind_of, open_stylizer
    from raystyle.registry import get_style

    st = get_style(style, models_dir)
    takes_images = kind_of(st).style_images
    if not takes_images and (style_images or weights or alpha != 1.0):
        raise RaystyleError(f"--style-image, --weights and --alpha are for arbitrary styles; "
                            f"{style!r} is a {st.kind} style")
    if takes_images and not style_images:
        raise RaystyleError(f"style {style!r} is an arbitrary style: give --style-image PAINTING")
    stylizer = open_stylizer(st, models_dir=models_dir, precision=precision, provider=provider, tile=tile)
    if not takes_images:
        return stylizer.stylize_batch
    from raystyle.infer.arbitrary import parse_weights

    try:
        stats = stylizer.blend([Path(p) for p in style_images], parse_weights(weights))
    except (ImageError, OSError) as exc:
        raise RaystyleError(f"style image: {exc}") from None

    def run(images: list[Any], **options: Any) -> list[Any]:
        return stylizer.stylize_batch(images, styles=[stats] * len(images), alpha=alpha, **options)

    return run
