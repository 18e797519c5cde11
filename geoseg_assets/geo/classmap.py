"""Class maps: class names, integer ids and colours of a segmentation task, plus the ignore id."""

from __future__ import annotations

from dataclasses import dataclass

from . import synthetic

IGNORE_ID = 255


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

    def __post_init__(self):
        ids = [c.id for c in self.classes]
        names = [c.name for c in self.classes]
        if not self.classes:
            raise ValueError("a class map needs at least one class")
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError(f"class ids and names must be unique: {list(zip(names, ids))}")
        if any(not 1 <= i <= 254 or i == self.ignore_id for i in ids):
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


SYNTHETIC_COLORS = {
    "water": (30, 100, 220),
    "forest": (20, 110, 40),
    "cropland": (220, 200, 60),
    "built_up": (200, 40, 40),
    "road": (90, 90, 90),
    "bare": (170, 130, 90),
}

DEFAULT_CLASS_MAP = ClassMap(
    tuple(ClassDef(name, cid, SYNTHETIC_COLORS[name]) for name, cid in synthetic.CLASSES.items())
)
