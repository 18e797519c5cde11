"""Benchmark: scenes + tiles versus a plain windowed read + one COG write of the same scene.

For each scene size (default 4096 and 8192 pixels a side, 4 x uint16) a synthetic scene is
generated once, then three measurements run, each in a fresh subprocess so peak RSS is its own:

  baseline  one windowed read of the whole scene + one COG write of it (same COG options)
  pipeline  the real `imagery_job` (scenes -> tiles with their checks) on an ephemeral instance

It prints wall time, the ratio pipeline / baseline (goal <= 1.5) and peak RSS per size (goal:
nearly equal across sizes, i.e. bounded by windows, not the scene).

    .venv/bin/python benchmarks/bench_tiling.py [--sizes 4096 8192] [--out benchmarks/out]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_scene(size: int, out: Path) -> Path:
    from geoseg_assets.geo.synthetic import SyntheticParams, write_scene

    path = out / "landing" / "bench" / "2024-06-15" / f"scene_{size}.tif"
    if not path.exists():
        t = time.perf_counter()
        write_scene(SyntheticParams("bench", "2024-06-15", width=size, height=size, nodata_margin=0.05), path)
        print(f"  generated {path.name} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return path


def case_baseline(scene: Path, work: Path) -> dict:
    import rasterio

    from geoseg_assets.geo.scene_io import copy_as_cog
    from geoseg_assets.geo.windows import iter_blocks

    t = time.perf_counter()
    total = 0
    with rasterio.open(scene) as src:
        for win in iter_blocks(src.width, src.height, 1024):
            total += int(src.read(window=win).sum(dtype="uint64") > 0)
    copy_as_cog(str(scene), str(work / "baseline_cog.tif"))
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}


def case_pipeline(scene: Path, work: Path) -> dict:
    import dagster as dg

    from geoseg_assets.definitions import build_defs, default_resources
    from geoseg_assets.partitions import partition_key
    from resources.landing_source import LandingFolderSource

    landing = work / "landing"
    (landing / "bench" / "2024-06-15").mkdir(parents=True, exist_ok=True)
    landed = landing / "bench" / "2024-06-15" / scene.name
    if not landed.exists():  # a hard link (same filesystem): the landing folder refuses symlinks out of it
        os.link(scene, landed)
    resources = {**default_resources(work), "scene_source": LandingFolderSource(root=str(landing))}
    selection = [dg.AssetKey("scenes"), dg.AssetKey("tiles")]  # what the foundation issue benchmarks
    job = build_defs(resources).resolve_job_def("imagery_job")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("region", ["bench"])
    t = time.perf_counter()
    result = job.execute_in_process(partition_key=partition_key("bench", "2024-06-15"), instance=instance,
                                    asset_selection=selection)
    seconds = time.perf_counter() - t
    assert result.success
    tiles = result.asset_materializations_for_node("tiles")[0].metadata["tile_count"].value
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "tiles": tiles}


def run_case(case: str, scene: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=scene.parent.parent.parent) as work:
        out = subprocess.run(
            [sys.executable, __file__, "--case", case, "--scene", str(scene), "--work", work],
            capture_output=True, text=True, cwd=REPO,
        )
    if out.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--case", choices=["baseline", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        fn = case_baseline if args.case == "baseline" else case_pipeline
        print(json.dumps(fn(args.scene, args.work)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        scene = make_scene(size, args.out)
        base = run_case("baseline", scene)
        pipe = run_case("pipeline", scene)
        rows.append((size, base, pipe))
        print(f"{size:>5}^2 x 4 uint16: baseline {base['seconds']:7.2f}s  pipeline {pipe['seconds']:7.2f}s  "
              f"ratio {pipe['seconds'] / base['seconds']:.2f} (goal <= 1.5)  "
              f"peak RSS baseline {base['peak_rss_mb']:.0f} MB, pipeline {pipe['peak_rss_mb']:.0f} MB  "
              f"({pipe['tiles']} tiles)", flush=True)
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        growth = large[2]["peak_rss_mb"] / small[2]["peak_rss_mb"]
        pixels = (large[0] / small[0]) ** 2
        print(f"pipeline peak RSS grows x{growth:.2f} while pixels grow x{pixels:.0f} (goal: nearly equal)")


if __name__ == "__main__":
    main()
