"""Errors raised for bad input: each names the offending file, what is wrong and how to fix it."""

from __future__ import annotations


class InputError(ValueError):
    """An input file that cannot be used as it is."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


class SceneError(InputError):
    """A scene raster that cannot be used as it is."""


class LabelError(InputError):
    """A label file (or label set) that cannot be used as it is."""


class ClassMapError(InputError):
    """A class-map file that cannot be used as it is."""
