"""Benchmark: versioning a >= 10k-tile dataset with DVC versus plainly copying the same bytes.

Builds a real dataset with `geo/dataset.build_dataset` from synthetic partitions (64 px tiles so
10k+ tiles stay small on disk), in a throwaway git repo laid out like geoseg (dvc.yaml stage
`dataset`, local remote). Then, in one run:

  copy   one plain copy of the dataset folder (shutil.copytree), the baseline
  commit `dvc commit dataset`: hash the folder and fill the cache
  push   `dvc push dataset` to the local remote
  pull   `dvc pull dataset` after deleting the dataset and the cache

It prints each time, (commit + push) / copy and pull / copy (goal <= 3x each).

    .venv/bin/python benchmarks/bench_dataset.py [--partitions 10] [--scene 2048] [--tile 64]
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_partitions(work: Path, n: int, size: int, tile: int):
    import geopandas as gpd

    from geoseg_assets.assets.tiles import tiles_frame
    from geoseg_assets.geo import synthetic
    from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
    from geoseg_assets.geo.dataset_inputs import PartitionInput
    from geoseg_assets.geo.masks import write_mask_cog
    from geoseg_assets.geo.scene_checks import SceneSpec
    from geoseg_assets.geo.scene_io import sha256_file, write_scene_cog
    from geoseg_assets.geo.tiling import compute_tiles

    parts = []
    for i in range(n):
        region, date = f"r{i // 2}", ("2024-05-01", "2024-08-01")[i % 2]
        params = synthetic.SyntheticParams(region, date, width=size, height=size)
        raw = synthetic.write_scene(params, work / "raw" / f"{region}_{date}.tif")
        scene = write_scene_cog([str(raw)], str(work / "cogs" / f"{region}_{date}.tif"),
                                SceneSpec(band_names=synthetic.BAND_NAMES, dtype="uint16"))
        polys = synthetic.to_world(synthetic.land_cover(region, size, size), synthetic.scene_transform(params))
        labels = gpd.GeoDataFrame(
            [{"class_id": synthetic.CLASSES[name], "geometry": g} for name in synthetic.PRIORITY for g in polys[name]],
            geometry="geometry", crs=scene.crs_wkt)
        mask = write_mask_cog(scene.path, labels, DEFAULT_CLASS_MAP, str(work / "masks" / f"{region}_{date}.tif"))
        records = compute_tiles(scene.path, scene.band_names, size=tile, id_prefix=f"{region}_{date}")
        parts.append(PartitionInput(region, date, scene.path, mask.path, tiles_frame(records, scene.crs_wkt, region, date),
                                    sha256_file(scene.path)))
    return parts


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--scene", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "dataset_bench")
    parser.add_argument("--cache-type", default="copy",
                        help="DVC cache.type: copy (the project default), hardlink,copy or reflink,copy")
    args = parser.parse_args()

    from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
    from geoseg_assets.geo.dataset import build_dataset
    from geoseg_assets.geo.synthetic import BAND_NAMES
    from resources.dvc_store import DvcStore

    shutil.rmtree(args.out, ignore_errors=True)
    repo = args.out / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/data/\n")
    (repo / "dvc.yaml").write_text("stages:\n  dataset:\n    cmd: 'true'\n    outs:\n      - data/store/dataset\n")
    t0 = time.perf_counter()
    parts = make_partitions(args.out / "inputs", args.partitions, args.scene, args.tile)
    dataset = repo / "data" / "store" / "dataset"
    summary = build_dataset(parts, dataset, {c.name: c.id for c in DEFAULT_CLASS_MAP.classes}, list(BAND_NAMES),
                            block_size_m=2560.0, min_labelled_fraction=0.5)
    tiles = sum(summary.tile_counts.values())
    files = [p for p in dataset.rglob("*") if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    print(f"dataset: {tiles} tiles of {args.tile} px, {len(files)} files, {size_mb:.0f} MB "
          f"(built in {time.perf_counter() - t0:.0f}s)")
    if tiles < 10_000:
        print(f"warning: only {tiles} tiles; raise --partitions or --scene for >= 10k")

    store = DvcStore(repo_dir=str(repo), remote_url=str(args.out / "remote"), cache_type=args.cache_type)
    store.ensure_repo()
    copy_s = timed(lambda: shutil.copytree(dataset, args.out / "plain-copy"))
    commit_s = timed(lambda: store._dvc("commit", "--force", "dataset"))
    push_s = timed(lambda: store._dvc("push", "dataset"))
    shutil.rmtree(dataset)
    shutil.rmtree(repo / ".dvc" / "cache")
    pull_s = timed(lambda: store.pull("dataset"))
    restored = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file()) / 2**20
    assert abs(restored - size_mb) < 1e-6, "pull did not restore every byte"
    print(f"cache.type {args.cache_type}")
    print(f"plain copy {copy_s:6.2f}s | dvc commit {commit_s:6.2f}s  push {push_s:6.2f}s  pull {pull_s:6.2f}s")
    print(f"(commit + push) / copy = {(commit_s + push_s) / copy_s:.2f}  pull / copy = {pull_s / copy_s:.2f}  (goal <= 3 each)")


if __name__ == "__main__":
    main()
