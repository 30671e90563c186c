"""raystyle.util.storage decides what may be read and written: relative paths that stay in their
folder, listings that follow no folder link, temporary files created exclusively, and the files
a style's model.json may name."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from raystyle import registry
from raystyle.cli.main import main
from raystyle.util import storage

LOCAL = pafs.LocalFileSystem()


@pytest.mark.parametrize("rel, reason", [
    ("", "an empty path"), ("/etc/passwd", "an absolute path"), ("a//b.png", "an empty part"),
    ("../x.png", "'..' part"), ("a/../../x.png", "'..' part"), ("./x.png", "'.' part"),
    ("a/", "an empty part"), ("a\x00.png", "NUL"),
])
def test_paths_that_leave_their_folder_are_refused(rel, reason):
    assert reason in storage.unsafe_reason(rel)
    with pytest.raises(storage.ContainmentError, match="must stay inside the output folder") as exc:
        storage.inside("bucket/out", rel, "the output folder")
    assert "\n" not in str(exc.value)
    assert storage.inside("bucket/out", "a/b.c.png") == "bucket/out/a/b.c.png"
    assert storage.inside("/", "x") == "/x"
    assert storage.is_plain_name("model.onnx") and not storage.is_plain_name("a\\b.onnx")


def test_outputs_never_go_through_a_folder_link(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "up")
    with pytest.raises(storage.ContainmentError, match="outside the output folder"):
        storage.write_inside(LOCAL, str(out), "up/new/x.png", b"x")
    assert list(elsewhere.iterdir()) == []  # not even the folder "new" was made there
    made: set[str] = set()
    assert storage.write_inside(LOCAL, str(out), "sub/x.png", b"x", made) == f"{out}/sub/x.png"
    assert made == {f"{out}/sub"} and (out / "sub" / "x.png").read_bytes() == b"x"
    os.symlink(out / "sub", out / "inner")  # a link that stays inside OUTPUT is fine
    storage.write_inside(LOCAL, str(out), "inner/y.png", b"y")
    assert (out / "sub" / "y.png").read_bytes() == b"y"


def test_a_listing_follows_no_folder_link_and_keeps_temporary_files_apart(tmp_path):
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"x")
    (root / "notes.txt").write_bytes(b"t")
    (root / f".x.png.0123{storage.TMP_SUFFIX}").write_bytes(b"half")
    os.symlink("..", root / "a" / "up")
    os.symlink(".", root / "loop")
    os.symlink(tmp_path, root / "out.png")  # a link to a folder, whatever its name
    listing = storage.list_inside(LOCAL, str(root), {".png"})
    assert listing.files == ["a/x.png"]
    assert set(listing.refused) == {"a/up", "loop", "out.png"}
    assert [rel for rel, _ in listing.temps] == [f".x.png.0123{storage.TMP_SUFFIX}"]
    assert storage.list_inside(LOCAL, str(tmp_path / "missing")).files == []


def test_temporary_files_are_created_exclusively(tmp_path, monkeypatch):
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(storage.secrets, "token_hex", lambda n: next(names))
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.symlink(victim, tmp_path / f".out.png.planted{storage.TMP_SUFFIX}")
    storage.write_atomic(LOCAL, str(tmp_path / "out.png"), b"image")
    assert victim.read_text() == "untouched" and (tmp_path / "out.png").read_bytes() == b"image"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".out.png.planted{storage.TMP_SUFFIX}", "out.png", "victim"]


def test_upload_file_does_not_follow_a_link_at_the_old_temporary_name(tmp_path):
    """upload_file wrote a fixed ``.NAME.tmp`` beside its destination: a link planted there
    was followed, and the file it named overwritten."""
    src, victim, dest = tmp_path / "src.jsonl", tmp_path / "victim", tmp_path / "run" / "metrics.jsonl"
    src.write_text('{"step": 1}\n')
    victim.write_text("untouched")
    dest.parent.mkdir()
    os.symlink(victim, dest.parent / ".metrics.jsonl.tmp")
    storage.upload_file(src, storage.resolve(dest))
    assert victim.read_text() == "untouched"
    assert not dest.is_symlink() and dest.read_text() == '{"step": 1}\n'


def test_an_interrupted_local_write_leaves_neither_file_nor_temporary(tmp_path):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell():
                raise OSError("the source went away")
            return super().read(4)

    with pytest.raises(OSError, match="went away"):
        storage.put_stream(LOCAL, str(tmp_path / "v.mp4"), Broken(b"0123456789"))
    assert list(tmp_path.iterdir()) == []


def test_only_old_temporary_files_are_removed(tmp_path):
    fresh, old = (tmp_path / f".{n}{storage.TMP_SUFFIX}" for n in ("fresh", "old"))
    for path in (fresh, old):
        path.write_bytes(b"half")
    long_ago = os.path.getmtime(old) - storage.STALE_TMP_S - 1
    os.utime(old, (long_ago, long_ago))
    listing = storage.list_inside(LOCAL, str(tmp_path))
    assert storage.remove_stale_temps(LOCAL, str(tmp_path), listing.temps) == [old.name]
    assert fresh.exists() and not old.exists()


def test_raystyle_nst_does_not_follow_a_link_at_its_temporary_name(tmp_path, capsys):
    """`raystyle nst` wrote ``.NAME.PID.tmp`` (a name known in advance) and followed a link
    planted there."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    rng = np.random.default_rng(0)
    for path in (content, style):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    victim, out = tmp_path / "victim", tmp_path / "out.png"
    victim.write_text("untouched")
    os.symlink(victim, tmp_path / f".out.png.{os.getpid()}.tmp")
    rc = main(["nst", str(content), str(style), "-o", str(out), "--features", "random", "--size", "32",
               "--steps", "1", "--optimizer", "adam"])
    assert rc == 0, capsys.readouterr().err
    assert victim.read_text() == "untouched"
    assert not out.is_symlink() and Image.open(out).size == (32, 32)


def _style(models, name: str, entry: dict, **extra) -> None:
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not opened")
    (folder / registry.METADATA).write_text(json.dumps(
        {"style": name, "kind": "generator", "precisions": {"fp32": entry}, **extra}))


@pytest.mark.parametrize("entry, field", [
    ({"file": "../../etc/passwd"}, "precisions.fp32.file"),
    ({"file": "/etc/passwd"}, "precisions.fp32.file"),
    ({"file": "model.onnx", "tile": "sub/tile.onnx", "stats": "s.onnx", "sums": "u.onnx"},
     "precisions.fp32.tile"),
    ({"file": "model.onnx", "stats": "..", "tile": "t.onnx", "sums": "u.onnx"}, "precisions.fp32.stats"),
    ({"file": "model.onnx", "sums": "C:\\x.onnx", "tile": "t.onnx", "stats": "s.onnx"}, "precisions.fp32.sums"),
    ({"encoder": "../encoder.onnx", "decoder": "decoder.onnx"}, "precisions.fp32.encoder"),
])
def test_model_json_names_only_files_of_the_styles_folder(tmp_path, entry, field):
    _style(tmp_path, "evil", entry)
    with pytest.raises(registry.RegistryError) as exc:
        registry.get_style("evil", tmp_path)
    message = str(exc.value)
    assert "\n" not in message and f"model.json {field} " in message and "plain file name" in message
    (style,) = registry.list_styles(tmp_path)  # listed; opening any file of it is refused
    key = field.rsplit(".", 1)[1]
    with pytest.raises(registry.RegistryError, match=field.replace(".", r"\.")):
        style.file("fp32", "model" if key == "file" else key)


def test_stylize_with_a_model_json_that_leaves_its_folder_is_one_line(tmp_path, capsys):
    _style(tmp_path / "models", "evil", {"file": "../../../../../../../etc/passwd"})
    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(image)
    capsys.readouterr()
    rc = main(["stylize", str(image), "--style", "evil", "--models-dir", str(tmp_path / "models"),
               "-o", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("raystyle: error: style 'evil': model.json precisions.fp32.file "), err
