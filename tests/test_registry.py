"""The versioned registry: MODELS/NAME -> .versions/NAME/VERSION, swapped atomically."""

import json
import threading
import time

import onnx
import pytest

from raystyle import registry
from raystyle.infer.generator import Stylizer


def _version(models, name, tag, files=None, grace=0.0):
    """Install a version of ``name`` whose model.json and ONNX files all carry ``tag``."""
    version, work = registry.new_version(name, models)
    meta = {"style": name, "version": version, "tag": tag, "precisions": {"fp32": {"file": "model.onnx"}}}
    for f in files or []:
        model = onnx.load(str(f))
        model.metadata_props.append(onnx.StringStringEntryProto(key="raystyle_version", value=version))
        onnx.save(model, str(work / f.name))
    if files:
        meta = {**json.loads((files[0].parent / registry.METADATA).read_text()), "version": version, "tag": tag}
    (work / registry.METADATA).write_text(json.dumps(meta))
    return registry.install(work, name, version, models, grace=grace)


def test_install_swaps_a_symlink_and_keeps_the_newest_versions(tmp_path):
    installed = [_version(tmp_path, "s", i) for i in range(5)]
    entry = tmp_path / "s"
    assert entry.is_symlink() and not entry.readlink().is_absolute()  # the models dir can move
    current = registry.get_style("s", tmp_path)
    assert current.path == entry and current.meta["tag"] == 4 and current.version == installed[-1].version
    assert current.version_dir == tmp_path / ".versions" / "s" / installed[-1].version
    assert current.file("fp32") == current.version_dir / "model.onnx"
    assert registry.versions("s", tmp_path) == [s.version for s in installed[-registry.KEEP:]]
    assert [s.name for s in registry.list_styles(tmp_path)] == ["s"]  # .versions and links are hidden
    assert sorted(p.name for p in tmp_path.iterdir()) == [".versions", "s"]
    assert sorted(p.name for p in (tmp_path / ".versions" / "s").iterdir()) == registry.versions("s", tmp_path)


def test_a_plain_folder_from_an_older_raystyle_is_read_then_migrated(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / registry.METADATA).write_text(json.dumps({"style": "old", "precisions": {}}))
    legacy = registry.get_style("old", tmp_path)
    assert legacy.version_dir == tmp_path / "old" and legacy.meta["style"] == "old"
    new = _version(tmp_path, "old", "new")
    assert (tmp_path / "old").is_symlink() and registry.get_style("old", tmp_path).meta["tag"] == "new"
    kept = registry.versions("old", tmp_path)
    assert len(kept) == 2 and kept[0].endswith("-legacy") and kept[1] == new.version
    assert json.loads((tmp_path / ".versions" / "old" / kept[0] / registry.METADATA).read_text())["style"] == "old"


GRACE = 4.0  # seconds a replaced version stays in the concurrency test (GRACE_S is 600)


def _opened_versions(stylizer):
    sessions = [stylizer.session, *(stylizer.tiling_sessions or ())]
    return {s.get_modelmeta().custom_metadata_map.get("raystyle_version") for s in sessions}


@pytest.mark.slow  # a concurrency drill
def test_readers_never_see_a_missing_style_or_two_versions_mixed(exported, tmp_path):
    """A writer swaps in versions (40 or more) while readers build Stylizers and read styles in a loop.

    Every version's model.json and its four ONNX graphs carry the version id, so a reader
    that mixed two versions (model.json of one, a graph of another) is caught.
    """
    src = exported.version_dir
    files = [src / n for n in ("model.onnx", "stats.onnx", "tile.onnx", "sums.onnx")]
    models = tmp_path / "models"
    _version(models, "tiny", -1, files, grace=GRACE)
    errors, reads = [], {"stylizers": 0, "styles": 0}
    done = threading.Event()

    def stylizers():
        while not done.is_set():
            try:
                s = Stylizer("tiny", models_dir=models, provider="cpu", threads=1)
                opened = _opened_versions(s)
                if opened != {s.style.meta["version"]} or s.style.version_dir.name != s.style.version:
                    errors.append(f"mixed: model.json {s.style.meta['version']}, graphs {opened}")
                reads["stylizers"] += 1
            except Exception as exc:  # a missing style or file
                errors.append(f"{type(exc).__name__}: {exc}")

    def styles():
        while not done.is_set():
            try:
                if [s.name for s in registry.list_styles(models)] != ["tiny"]:
                    errors.append("list_styles lost the style")
                st = registry.get_style("tiny", models)
                if st.meta["version"] != st.version_dir.name:
                    errors.append(f"model.json {st.meta['version']} read from {st.version_dir.name}")
                reads["styles"] += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    readers = [threading.Thread(target=stylizers), threading.Thread(target=styles)]
    for t in readers:
        t.start()
    i = 0
    start = time.monotonic()  # long enough for versions to outlive the grace and be pruned
    try:  # at least 40 swaps, and on until the readers have done enough reads to mean something
        while i < 40 or time.monotonic() - start < 3 * GRACE or (
                min(reads["stylizers"], reads["styles"] // 4) < 30 and i < 1000 and not errors):
            _version(models, "tiny", i, files, grace=GRACE)
            i += 1
    finally:
        done.set()
        for t in readers:
            t.join()
    assert not errors, errors[:5]
    assert reads["stylizers"] >= 30 and reads["styles"] >= 120, reads
    last = registry.get_style("tiny", models)
    assert last.meta["tag"] == i - 1 and _opened_versions(Stylizer("tiny", models_dir=models)) == {last.version}
    pruned_during_the_run = i + 1 - len(registry.versions("tiny", models))
    assert pruned_during_the_run > 0, "versions were deleted while readers were opening them"
    registry.prune("tiny", models, grace=0)
    assert len(registry.versions("tiny", models)) == registry.KEEP


def test_a_version_replaced_within_the_grace_period_is_kept(tmp_path):
    """However fast exports follow each other, a version stays GRACE_S after it was replaced,
    so a reader that resolved it just before the swap still finds all of its files."""
    first = [_version(tmp_path, "s", i, grace=3600) for i in range(5)]
    assert registry.versions("s", tmp_path) == [s.version for s in first]  # all within grace
    time.sleep(0.05)
    registry.prune("s", tmp_path, grace=0.01)
    assert registry.versions("s", tmp_path) == [s.version for s in first[-registry.KEEP:]]


@pytest.mark.slow  # a concurrency drill with exports
def test_re_export_while_serving(trained_checkpoint, exported, tmp_path, torch_one_thread):
    """A real re-export of a style while Stylizers keep opening it: always one whole version."""
    from raystyle.export import export_style

    models = tmp_path / "models"
    # the version being served: the session's export of the same checkpoint (direction ab)
    src = exported.version_dir
    files = [src / n for n in ("model.onnx", "stats.onnx", "tile.onnx", "sums.onnx")]
    first = _version(models, "live", "first", files)
    assert first.meta["direction"] == "ab"
    seen, errors, done = set(), [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                s = Stylizer("live", models_dir=models, provider="cpu", threads=1)
                assert s.style.meta["version"] == s.style.version_dir.name
                seen.add(s.style.version)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        later = export_style(trained_checkpoint, "live", models_dir=models, direction="ba")
        deadline = time.monotonic() + 10
        while later.version not in seen and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
    finally:
        done.set()
        t.join()
    assert not errors, errors[:5]
    assert seen == {first.version, later.version}
    assert registry.get_style("live", models).meta["direction"] == "ba"


@pytest.mark.parametrize("name", ["../x", ".hidden", "", "monet\n"])  # "$" matched before a final "\n"
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(registry.RegistryError, match="style name"):
        registry.new_version(name, tmp_path)
