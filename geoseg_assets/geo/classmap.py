"""Class maps: class names, integer ids and colours of a segmentation task, plus the ignore id.

A project (or one region) keeps its class map as data in a JSON file (`read_class_map`):
{"classes": [{"name": "water", "id": 1, "color": [30, 100, 220]}, ...], "ignore_id": 255}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClassMapError

IGNORE_ID = 255
CLASS_MAP_FILE = "classes.json"
DEFAULT_COLOR = (128, 128, 128)


def usable_class_ids(ids, ignore_id: int = IGNORE_ID) -> bool:
    """The rule every class map follows: each class id lies in 1..254 (0 means no class) and is not the ignore id."""
    return all(1 <= i <= 254 and i != ignore_id for i in ids)


@dataclass(frozen=True)
class ClassDef:
    name: str
    id: int
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassMap:
    """An ordered set of classes; ids lie in 1..254 (0 is reserved for "no class", 255 = ignore)."""

    classes: tuple[ClassDef, ...]
    ignore_id: int = IGNORE_ID
    source: str = field(default="built-in", compare=False)  # where it came from (a file path), for metadata

    def __post_init__(self):
        ids = [c.id for c in self.classes]
        names = [c.name for c in self.classes]
        if not self.classes:
            raise ValueError("a class map needs at least one class")
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError(f"class ids and names must be unique: {list(zip(names, ids))}")
        if not usable_class_ids(ids, self.ignore_id):
            raise ValueError(f"class ids must lie in 1..254 and differ from the ignore id {self.ignore_id}: {ids}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def id_of(self, name: str) -> int:
        for c in self.classes:
            if c.name == name:
                return c.id
        raise KeyError(name)

    def name_of(self, class_id: int) -> str:
        for c in self.classes:
            if c.id == class_id:
                return c.name
        raise KeyError(class_id)

    def palette(self) -> dict[int, tuple[int, int, int]]:
        return {c.id: c.color for c in self.classes}

    def as_dict(self) -> dict:
        return {"classes": [{"name": c.name, "id": c.id, "color": list(c.color)} for c in self.classes],
                "ignore_id": self.ignore_id}


# The built-in land-cover classes, used when a project has no class-map file (the synthetic ground truth is
# generated in these ids: geo/synthetic.py takes them from here).
DEFAULT_CLASS_MAP = ClassMap((
    ClassDef("water", 1, (30, 100, 220)),
    ClassDef("forest", 2, (20, 110, 40)),
    ClassDef("cropland", 3, (220, 200, 60)),
    ClassDef("built_up", 4, (200, 40, 40)),
    ClassDef("road", 5, (90, 90, 90)),
    ClassDef("bare", 6, (170, 130, 90)),
))

FILE_KEYS = ("classes", "ignore_id")
CLASS_KEYS = ("name", "id", "color")
EXAMPLE = '{"classes": [{"name": "water", "id": 1, "color": [30, 100, 220]}], "ignore_id": 255}'


def _is_int(value) -> bool:
    """A JSON integer (JSON's true/false are bools in Python, which are ints too: not a class id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown_keys(entry: dict, allowed: tuple[str, ...], where: str, source: str) -> None:
    """Refuse keys the format does not know: a misspelt key would otherwise be silently ignored."""
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ClassMapError(source, f"{where + ' ' if where else ''}has unknown key(s) {unknown}; the keys are "
                            f"{list(allowed)}", "remove or rename them (a typo such as `colour` or `ids` is not read)")


def _parse_class(entry, index: int, source: str) -> ClassDef:
    """One `classes` entry -> ClassDef; raises ClassMapError naming the entry and the fix."""
    where = f"class #{index + 1}"
    if not isinstance(entry, dict):
        raise ClassMapError(source, f"{where} is {entry!r}, not an object", f"write each class as in {EXAMPLE}")
    name = entry.get("name")
    where = f"class #{index + 1} ({name!r})" if name is not None else where
    _unknown_keys(entry, CLASS_KEYS, where, source)
    if not isinstance(name, str) or not name.strip():
        raise ClassMapError(source, f"{where} has no name", 'give it a non-empty "name"')
    cid = entry.get("id")
    if not _is_int(cid):
        raise ClassMapError(source, f"{where} has id {cid!r}, not an integer", 'give it an integer "id" in 1..254')
    if cid == IGNORE_ID:
        raise ClassMapError(source, f"{where} uses id {cid}, the ignore id (unlabelled and nodata pixels)",
                            "give the class another id in 1..254")
    if not 1 <= cid <= 254:
        raise ClassMapError(source, f"{where} has id {cid}, outside 1..254 (0 means no class, 255 is ignore)",
                            "give the class an id in 1..254")
    color = entry.get("color", list(DEFAULT_COLOR))
    if not (isinstance(color, list) and len(color) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in color)):
        raise ClassMapError(source, f"{where} has color {color!r}, not 3 integers 0..255",
                            'write it as RGB, e.g. "color": [30, 100, 220], or leave it out (grey)')
    return ClassDef(name, cid, tuple(color))


def parse_class_map(data, source: str) -> ClassMap:
    """A class map from the parsed JSON of a class-map file, validated: raises ClassMapError naming `source`,
    what is wrong and the fix (unknown keys, missing or duplicate names/ids, ids outside 1..254, the ignore id
    used as a class, colours that are not 3 ints 0..255, an ignore id other than 255)."""
    if not isinstance(data, dict):
        raise ClassMapError(source, "is not a JSON object with a `classes` list", f"write it as {EXAMPLE}")
    _unknown_keys(data, FILE_KEYS, "", source)
    ignore_id = data.get("ignore_id", IGNORE_ID)
    if not _is_int(ignore_id) or ignore_id != IGNORE_ID:
        raise ClassMapError(source, f"has ignore_id {ignore_id!r}; masks, training and predictions mark unlabelled and "
                            f"nodata pixels {IGNORE_ID}", f'set "ignore_id": {IGNORE_ID} or leave it out')
    entries = data.get("classes")
    if not isinstance(entries, list) or not entries:
        raise ClassMapError(source, "has no `classes` list (or an empty one)", f"list the classes as in {EXAMPLE}")
    classes = [_parse_class(entry, i, source) for i, entry in enumerate(entries)]
    for what, values in (("id", [c.id for c in classes]), ("name", [c.name for c in classes])):
        dup = next((value for value, count in Counter(values).items() if count > 1), None)
        if dup is not None:
            raise ClassMapError(source, f"gives {what} {dup!r} to more than one class",
                                f"give every class its own {what}")
    return ClassMap(tuple(classes), ignore_id, source=source)


def read_class_map(path: str | Path) -> ClassMap:
    """Read and validate a class-map JSON file (see `parse_class_map`); raises ClassMapError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClassMapError(path, "class-map file does not exist",
                            "create it (README, 'Class maps') or point the class_map resource's `path` at it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassMapError(path, f"cannot be read ({exc})", "make it a readable UTF-8 JSON file") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClassMapError(path, f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                            f"fix the JSON; the format is {EXAMPLE}") from exc
    return parse_class_map(data, str(path))
