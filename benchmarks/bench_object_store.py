"""Benchmark: tiling and whole-scene prediction reading the scene from an S3-compatible object store over GDAL's
`/vsis3/` (HTTP range requests, `geoseg_assets/geo/object_store.py`) against the same scene as a local file, in one
run (goal: remote <= 1.3x local).

One process, one real scene: `tests/data/landsat_drift/pucallpa_2020.tif` mirrored into a mosaic of the requested
size (as `bench_inference.py`), written as the `scenes` asset writes a scene (a COG: 512 px tiles, DEFLATE,
overviews), uploaded to a bucket of moto's standalone S3 server on 127.0.0.1 (real HTTP, nothing mocked; a real
store adds network latency that loopback does not have). Passes alternate local and remote, the best of each is kept:
  tiling      `compute_tiles` (the `tiles` asset: 256 px grid, per-band stats of every tile)
  prediction  the `predictions` step's I/O through the real stores: `predict_to_cogs` + `predict_scene` with the
              asset's defaults and the runtime it picks on a CPU (ONNX Runtime), the production default network
              (untrained), writing the class COG into a `publishing()` block of the store: a folder `DataStore`
              (rename) against an `ObjectDataStore` on the same bucket (upload under a temp key, server-side copy)
Also printed: the requests the remote reads cost (moto's request log, its GETs of the scene's key), against the
object's blocks, and what publishing the class COG to the bucket took alone.

    .venv/bin/python benchmarks/bench_object_store.py [--megapixels 14.5] [--passes 2]
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_inference import BANDS, default_network, geoseg, normalizer, onnx_network, real_mosaic  # noqa: E402
from tests.support.s3 import CREDENTIALS, s3_server  # noqa: E402

GOAL = 1.3
KEY = "scenes/region=pucallpa/date=2020-07-01/scene.tif"
DIMS = {"region": "pucallpa", "date": "2020-07-01"}


def scene_cog(megapixels: float, work: Path) -> Path:
    from geoseg_assets.geo.scene_io import publish_as_cog

    side = int(math.sqrt(megapixels * 1e6)) // 32 * 32
    cog = work / "scene.tif"
    publish_as_cog(str(real_mosaic(side, side, work)), cog)
    return cog


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=14.5)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()

    import rasterio

    from geoseg_assets.geo.object_store import s3_raster_env, vsis3_path
    from geoseg_assets.geo.tiling import compute_tiles
    from geoseg_assets.ml.inference import InferenceConfig
    from resources.catalog import PREDICTED_CLASSES
    from resources.data_store import DataStore
    from resources.object_data_store import ObjectDataStore

    with tempfile.TemporaryDirectory(prefix="bench_object_store_") as tmp, s3_server(Path(tmp)) as server:
        work = Path(tmp)
        os.environ.update(server.env())  # AWS's standard variables: how the stores' boto3 clients find the server
        scene = scene_cog(args.megapixels, work)
        client = server.client()
        bucket = server.new_bucket()
        started = time.perf_counter()
        client.upload_file(str(scene), bucket, KEY)
        upload_s = time.perf_counter() - started
        remote = vsis3_path(bucket, KEY)
        store_env = (server.endpoint, CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                     CREDENTIALS["AWS_DEFAULT_REGION"])
        with rasterio.open(scene) as src:
            width, height, blocks = src.width, src.height, len(list(src.block_windows(1)))
        size_mb = scene.stat().st_size / 1e6
        started = time.perf_counter()
        whole = client.get_object(Bucket=bucket, Key=KEY)["Body"].read()
        get_s = time.perf_counter() - started
        started = time.perf_counter()
        client.get_object(Bucket=bucket, Key=KEY, Range="bytes=0-65535")["Body"].read()
        range_ms = (time.perf_counter() - started) * 1000
        print(f"scene: {width} x {height} x {len(BANDS)} uint8 COG, {size_mb:.1f} MB, {blocks} blocks of 512^2; "
              f"upload {upload_s:.2f} s; S3 endpoint {server.endpoint} (moto)\n"
              f"one GET of the whole object: {get_s:.3f} s ({len(whole) / 1e6 / get_s:.0f} MB/s: the floor of reading it "
              f"once); one 64 KB range GET: {range_ms:.1f} ms (moto reads the whole object for a range)", flush=True)

        norm, net = normalizer(), default_network()
        network = onnx_network(net, work)
        config = InferenceConfig()

        def tiling(path: str):
            return compute_tiles(path, list(BANDS), size=256)

        stores = {"local": DataStore(root=str(work / "store")),
                  "remote": ObjectDataStore(url=f"s3://{bucket}/outputs", endpoint_url=server.endpoint,
                                            root=str(work / "store-cache"))}

        def prediction(path: str):
            store = stores["remote" if path.startswith("/vsis3/") else "local"]
            with store.publishing() as outputs:
                return geoseg(network, norm, path, outputs.path(store.file(PREDICTED_CLASSES, DIMS)), config)

        cases = {"tiling": tiling, "prediction": prediction}
        best = {(case, where): math.inf for case in cases for where in ("local", "remote")}
        gets, server_cpu = {}, {}
        results = {}
        for _ in range(args.passes):
            for case, run in cases.items():
                for where in ("local", "remote"):
                    _, mark = server.gets(bucket, KEY)
                    cpu = cpu_seconds(server.pid)
                    t = time.perf_counter()
                    if where == "remote":
                        with s3_raster_env(*store_env):
                            results[(case, where)] = run(remote)
                    else:
                        results[(case, where)] = run(str(scene))
                    best[(case, where)] = min(best[(case, where)], time.perf_counter() - t)
                    if where == "remote":
                        gets[case], _ = server.gets(bucket, KEY, mark)
                        server_cpu[case] = cpu_seconds(server.pid) - cpu

        assert len(results[("tiling", "local")]) == len(results[("tiling", "remote")])
        assert results[("prediction", "local")].class_pixels == results[("prediction", "remote")].class_pixels
        print(f"\nbest of {args.passes} passes, same results from both sources (tile records, class pixel counts):")
        mp = width * height / 1e6
        for case in cases:
            local, remote_s = best[(case, "local")], best[(case, "remote")]
            ratio = remote_s / local
            print(f"  {case:<10} local {local:6.2f} s ({mp / local:5.2f} MP/s)   /vsis3/ {remote_s:6.2f} s "
                  f"({mp / remote_s:5.2f} MP/s)   ratio {ratio:.2f} (goal <= {GOAL})   last remote pass: {gets[case]} "
                  f"GETs of the scene ({blocks} blocks), the S3 server used {server_cpu[case]:.2f} CPU-s of this "
                  f"machine's {os.cpu_count()}")

        classes = stores["local"].file(PREDICTED_CLASSES, DIMS)
        remote_store = stores["remote"]
        started = time.perf_counter()
        with remote_store.publishing() as outputs:
            outputs.path(remote_store.file(PREDICTED_CLASSES, DIMS)).write_bytes(classes.read_bytes())
        print(f"\npublishing the class COG ({classes.stat().st_size / 1e6:.1f} MB) to the bucket alone "
              f"(ObjectDataStore.publishing: upload under a temp key, copy to the final key, delete the temp key): "
              f"{time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
