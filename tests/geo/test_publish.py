"""geo/publish.py: one file, one folder or several files replace their targets only when complete."""

import os

import pytest

from geoseg_assets.geo.publish import Publication, PublishError, atomic_dir, atomic_file, swap_dir


def test_atomic_file_replaces_on_success_and_keeps_the_old_bytes_on_failure(tmp_path):
    target = tmp_path / "report.html"
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.") and tmp.suffix == ".html"
        tmp.write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_atomic_file_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_file(tmp_path / "missing" / "x.bin"):
            pass


def test_atomic_dir_swaps_a_complete_folder_in_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "dataset"
    with atomic_dir(target) as build:
        (build / "manifest.json").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as build:
            (build / "manifest.json").write_text("v2")
            raise RuntimeError("shard failed")
    assert (target / "manifest.json").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    with atomic_dir(target) as build:
        (build / "manifest.json").write_text("v3")
    assert (target / "manifest.json").read_text() == "v3" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_swap_dir_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    target, staged = tmp_path / "dataset", tmp_path / "new"
    for folder, text in ((target, "old"), (staged, "new")):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
    real = os.replace

    def refuse_the_staged_folder(src, dst):
        if os.fspath(src) == os.fspath(staged):
            raise OSError("rename refused")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_the_staged_folder)
    with pytest.raises(OSError, match="rename refused"):
        with swap_dir(target, staged):
            pass
    assert (target / "manifest.json").read_text() == "old" and not (tmp_path / ".dataset.previous").exists()


def test_a_failed_commit_keeps_every_target_and_says_which_one(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.png"
    a.write_bytes(b"a0")
    b.mkdir()  # a folder where a file must go: its rename fails
    outputs = Publication()
    outputs.write_bytes(a, b"a1")
    outputs.write_bytes(b, b"b1")
    with pytest.raises(PublishError, match=f"{b}: cannot be replaced by the step's new output"):
        outputs.commit()
    assert a.read_bytes() == b"a0" and b.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.png"]
