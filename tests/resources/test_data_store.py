import pytest

from resources.data_store import UnsafePartitionKeyError


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "", "x" * 65, "a|b", ".hidden", "a\\b", "a b", "../../etc"])
def test_unsafe_partition_keys_are_rejected_with_the_rule(store, bad):
    with pytest.raises(UnsafePartitionKeyError) as err:
        store.path("scenes", {"region": bad, "date": "2024-01-01"}, "scene.tif")
    assert "region" in str(err.value) or "empty" in str(err.value)


def test_paths_are_laid_out_by_dimension_under_the_root(store, tmp_path):
    path = store.path("scenes", {"region": "alpha", "date": "2024-06-15"}, "scene.tif")
    assert path == tmp_path / "store" / "scenes" / "region=alpha" / "date=2024-06-15" / "scene.tif"
    assert store.partition_dir("dataset") == tmp_path / "store" / "dataset"


def test_dimension_order_of_the_key_does_not_change_the_folder(store):
    """Dagster's MultiPartitionKey lists date first: the layout must not depend on it."""
    by_dagster = store.path("scenes", {"date": "2024-06-15", "region": "alpha"}, "scene.tif")
    assert by_dagster == store.path("scenes", {"region": "alpha", "date": "2024-06-15"}, "scene.tif")
    assert by_dagster.parent.parent.name == "region=alpha"


def test_atomic_write_replaces_only_on_success(store):
    target = store.path("scenes", {"region": "alpha", "date": "2024-06-15"}, "scene.json")
    store.write_bytes(target, b"good")
    with pytest.raises(RuntimeError):
        with store.atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in target.parent.iterdir()] == ["scene.json"]  # no temp file left behind


def test_publishing_replaces_every_output_together_or_none(tmp_path):
    import pytest

    from resources.data_store import DataStore

    store = DataStore(root=str(tmp_path))
    a, b = tmp_path / "x" / "a.bin", tmp_path / "x" / "b.png"
    with store.publishing() as outputs:
        outputs.write_bytes(a, b"a1")
        outputs.write_bytes(b, b"b1")
    with pytest.raises(RuntimeError, match="preview failed"):
        with store.publishing() as outputs:
            outputs.write_bytes(a, b"a2")
            raise RuntimeError("preview failed")
    assert (a.read_bytes(), b.read_bytes()) == (b"a1", b"b1")
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.bin", "b.png"]
    with store.publishing() as outputs:
        outputs.write_bytes(a, b"a3")
        outputs.write_bytes(b, b"b3")
    assert (a.read_bytes(), b.read_bytes()) == (b"a3", b"b3")
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.bin", "b.png"]


def test_a_temp_folder_with_a_file_still_being_written_is_not_swept(tmp_path):
    import os
    import time

    from resources.data_store import sweep_stale_temps

    old = time.time() - 7200
    building, dead = tmp_path / "dataset-live", tmp_path / "dataset-dead"
    for folder in (building, dead):
        folder.mkdir()
        (folder / "shard-0.npy").write_bytes(b"x")
        os.utime(folder / "shard-0.npy", (old, old))
    (building / "shard-1.npy").write_bytes(b"being written")  # touched now
    for folder in (building, dead):
        os.utime(folder, (old, old))
    assert sweep_stale_temps(tmp_path, 3600, everything=True) == [dead]
    assert building.exists() and not dead.exists()


def test_provisional_dir_puts_the_old_folder_and_records_back_when_the_block_fails(tmp_path):
    import shutil

    import pytest

    from resources.data_store import DataStore

    store = DataStore(root=str(tmp_path))
    target, lock = tmp_path / "dataset", tmp_path / "dvc.lock"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    lock.write_text("md5: old")
    staged = tmp_path / ".tmp" / "dataset-new"
    staged.mkdir(parents=True)
    (staged / "manifest.json").write_text("new")
    with pytest.raises(RuntimeError, match="push failed"):
        with store.provisional_dir(target, staged, keep=(lock,)) as live:
            assert (live / "manifest.json").read_text() == "new"
            lock.write_text("md5: new")
            raise RuntimeError("push failed")
    assert (target / "manifest.json").read_text() == "old" and lock.read_text() == "md5: old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp", "dataset", "dvc.lock"]

    # A run killed between moving the old folder aside and putting the new one in place: the next run
    # finds only the backup and restores it before anything else.
    (tmp_path / ".dataset.previous").mkdir()
    (tmp_path / ".dataset.previous" / "manifest.json").write_text("old")
    shutil.rmtree(target)
    staged.mkdir(parents=True, exist_ok=True)
    (staged / "manifest.json").write_text("newer")
    with pytest.raises(RuntimeError):
        with store.provisional_dir(target, staged):
            raise RuntimeError("again")
    assert (target / "manifest.json").read_text() == "old"
    with store.provisional_dir(target, _new_folder(tmp_path, "newest")):
        pass
    assert (target / "manifest.json").read_text() == "newest" and not (tmp_path / ".dataset.previous").exists()


def _new_folder(root, text):
    folder = root / ".tmp" / f"dataset-{text}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(text)
    return folder
