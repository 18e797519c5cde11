"""Small pure helpers shared across geo/, ml/ and the assets: band lookup, union-find, Markdown tables."""

from geoseg_assets.geo.bands import band_position
from geoseg_assets.geo.union_find import UnionFind
from geoseg_assets.markdown import markdown_table


def test_band_position_matches_case_insensitively_with_or_without_aliases():
    bands = ["Blue", "Green", "Red", "NIR08"]
    assert [band_position(bands, b) for b in ("B", "g", "RED", "NIR", "SWIR1")] == [0, 1, 2, 3, None]
    assert band_position(bands, "R", aliases=False) is None and band_position(bands, "red", aliases=False) == 2
    assert band_position(["R", "r"], "R") == 0  # the first match


def test_union_find_represents_a_set_by_its_smallest_item_whatever_the_union_order():
    sets = UnionFind(["c", "a", "b", "d"])
    sets.union("c", "b")
    sets.union("b", "a")
    assert {x: sets.find(x) for x in "abcd"} == {"a": "a", "b": "a", "c": "a", "d": "d"}
    sets.add("e")
    sets.discard("e")
    assert "e" not in sets.parent


def test_markdown_table_has_a_header_rule_and_one_line_per_row():
    assert markdown_table(("class", "km²"), [("water", "1.5000"), ("forest", 2)]) == (
        "| class | km² |\n|---|---|\n| water | 1.5000 |\n| forest | 2 |")
    assert markdown_table(("a", "b"), []) == "| a | b |\n|---|---|\n"
