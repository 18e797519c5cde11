"""Where a STAC catalog's files are read and written: the local disk (`LocalFiles`) or, through the same five
methods, an object store (`resources/object_data_store.py`'s `ObjectFiles`). Paths are local paths or `/vsis3/` paths;
relative hrefs between them are computed the same way for both."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Protocol

from .publish import atomic_file


class CatalogFiles(Protocol):
    def read_bytes(self, path: PurePath) -> bytes:
        """The file's bytes; FileNotFoundError if there is none."""

    def exists(self, path: PurePath) -> bool: ...

    def json_files(self, folder: PurePath) -> list[PurePath]:
        """Every `*.json` file under `folder`, at any depth."""

    def write(self, changed: Mapping[PurePath, bytes]) -> None:
        """Write the files, in order, each whole (a reader never sees a partial file)."""

    def delete(self, paths: Iterable[PurePath]) -> None: ...


class LocalFiles:
    """Files on this machine's disk: each written by an atomic rename; folders left empty by deletes removed (up to
    the first that is not: a collection's folder holds its collection.json)."""

    def read_bytes(self, path: PurePath) -> bytes:
        return Path(path).read_bytes()

    def exists(self, path: PurePath) -> bool:
        return Path(path).exists()

    def json_files(self, folder: PurePath) -> list[PurePath]:
        return sorted(Path(folder).rglob("*.json")) if Path(folder).is_dir() else []

    def write(self, changed: Mapping[PurePath, bytes]) -> None:
        for path, data in changed.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                tmp.write_bytes(data)

    def delete(self, paths: Iterable[PurePath]) -> None:
        folders = set()
        for path in paths:
            Path(path).unlink(missing_ok=True)
            folders.add(Path(path).parent)
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            while folder.is_dir() and not any(folder.iterdir()):
                os.rmdir(folder)
                folder = folder.parent
