"""Disjoint sets (union-find with path compression): which items are joined, directly or through others."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class UnionFind:
    """Disjoint sets of orderable items whose representative is always the smallest item, so the result does
    not depend on the order of the unions (deterministic block ids, region roots)."""

    def __init__(self, items: Iterable[Hashable] = ()):
        self.parent = {i: i for i in items}

    def add(self, item) -> None:
        """A new set holding only `item`."""
        self.parent[item] = item

    def find(self, item):
        """The representative of `item`'s set."""
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a, b) -> None:
        """Join the sets of `a` and `b`."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo

    def discard(self, item) -> None:
        """Forget `item`; only for items whose whole set is being forgotten (no other item may point at it)."""
        del self.parent[item]
