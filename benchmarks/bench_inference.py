"""Benchmark: whole-scene prediction against the physical limit and against a TorchGeo loop, and peak memory.

One process, one real scene, one network (the production default: Unet-resnet18 of `ModelConfig`'s
depth, bands + NDVI + NDWI in, 6 classes out, untrained, seed 0). Passes alternate between the paths
and the best of each is kept:
  limit (torch)     the network once per pixel: non-overlapping 256² windows, inputs prepared and preloaded
                    in memory, batches of 8 (the issue's definition of the limit)
  limit (onnx)      the same with ONNX Runtime running the network's export (the limit of that runtime)
  torchgeo          TorchGeo's loop a user would write: RasterDataset + GridGeoSampler (256, stride 224) +
                    DataLoader (batch 8, `--torchgeo-workers` worker processes), `Normalizer.prepare`,
                    the torch network, argmax, hard paste into an in-memory array; nothing written
  geoseg            `predict_to_cogs` + `predict_scene` with the asset's defaults (equal windows of at most
                    1024 px, overlap 64, blended, reflection beyond borders, class COG written) and the
                    runtime the asset picks on a CPU (ONNX Runtime)
  geoseg torch      the same with the torch runtime
  geoseg 256        the defaults before issue 17 (256² windows, overlap 64, batch 8, torch)
Prints scene MP/s and the ratios to the torch limit and to the TorchGeo loop (goals: >= 0.85 and >= 1.05).

The scene is real Landsat pixels: `tests/data/landsat_drift/pucallpa_2020.tif` (697 x 377, 4 bands) mirrored
into a mosaic of the requested size, written as a tiled GeoTIFF in UTM 18S at 30 m (real pixels, synthetic
geolocation). Memory: geoseg on 4096² and 8192² mosaics, each in a fresh subprocess, prints peak RSS (goal:
8192² within 1.15x of 4096²).

    .venv/bin/python benchmarks/bench_inference.py [--megapixels 14.5] [--rss-sizes 4096 8192] [--passes 2]
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SOURCE = REPO / "tests" / "data" / "landsat_drift" / "pucallpa_2020.tif"
BANDS = ("SWIR1", "NIR", "R", "G")  # the source's band order (opengeos/data landsat/)
CLASSES = 6


def proc_status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so the next peak is the pipeline's alone."""
    Path("/proc/self/clear_refs").write_text("5")


def real_mosaic(width: int, height: int, folder: Path) -> Path:
    """The source scene mirrored tile by tile (so neighbours meet edge to edge) and cropped to width x height."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path = folder / f"pucallpa_mosaic_{width}x{height}.tif"
    if path.exists():
        return path
    with rasterio.open(SOURCE) as src:
        tile = src.read()
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(BANDS), "dtype": "uint8",
               "crs": "EPSG:32718", "transform": from_origin(500_000, 9_100_000, 30, 30), "nodata": 0,
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    th, tw = tile.shape[1:]
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)
        for row0 in range(0, height, th):
            flipped = tile[:, ::-1] if (row0 // th) % 2 else tile
            strip = np.concatenate([flipped[:, :, ::-1] if j % 2 else flipped
                                    for j in range(math.ceil(width / tw))], axis=2)[:, :, :width]
            h = min(th, height - row0)
            dst.write(strip[:, :h], window=rasterio.windows.Window(0, row0, width, h))
    return path


def normalizer():
    import numpy as np
    import rasterio

    from geoseg_assets.ml.normalize import Normalizer

    with rasterio.open(SOURCE) as src:
        pixels = src.read().reshape(len(BANDS), -1).astype(np.float64)
    return Normalizer(BANDS, tuple(pixels.mean(axis=1)), tuple(pixels.std(axis=1)), ("NDVI", "NDWI"))


def default_network():
    """The production default architecture, untrained (seed 0)."""
    import torch

    from geoseg_assets.assets.models import ModelConfig
    from geoseg_assets.ml.models import build_model, depth_kwargs

    config = ModelConfig()
    torch.manual_seed(0)
    return build_model(config.architecture, config.encoder, len(BANDS) + 2, CLASSES,
                       **depth_kwargs(config.architecture, config.encoder_depth)).eval()


def onnx_network(net, work: Path):
    from geoseg_assets.ml.onnx_export import export_onnx
    from geoseg_assets.ml.runtimes import OnnxNetwork

    return OnnxNetwork(export_onnx(net, len(BANDS) + 2, (256, 256), work / "network.onnx"))


def geoseg(network, norm, scene: Path, out: Path, config):
    from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
    from geoseg_assets.geo.prediction_io import predict_to_cogs
    from geoseg_assets.ml.inference import predict_scene

    predict = partial(predict_scene, network, norm, [c.id for c in DEFAULT_CLASS_MAP.classes], config=config)
    return predict_to_cogs(predict, str(scene), BANDS, str(out), DEFAULT_CLASS_MAP)


def preload_limit_batches(scene: Path, norm, size: int = 256, batch: int = 8):
    """Every non-overlapping size² window of the scene, prepared, in batches (padding beyond the scene is
    forwarded too: ceil(W/size) x ceil(H/size) windows)."""
    import numpy as np
    import rasterio
    import torch

    inputs = []
    with rasterio.open(scene) as src:
        for row in range(0, src.height, size):
            for col in range(0, src.width, size):
                raw = src.read(window=rasterio.windows.Window(col, row, size, size), boundless=True, fill_value=0)
                inputs.append(norm.prepare(raw.astype(np.float32)))
    return [torch.stack(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]


def torchgeo_loop(network, norm, scene: Path, workers: int):
    """TorchGeo 0.8's grid inference loop over the scene: chips of 256 px at stride 224, the argmax of each
    pasted over the previous ones; returns the class array (nothing written)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    class Scene(RasterDataset):
        filename_glob = scene.name

    dataset = Scene(paths=str(scene.parent))
    sampler = GridGeoSampler(dataset, size=256, stride=224)
    loader = DataLoader(dataset, sampler=sampler, batch_size=8, collate_fn=stack_samples, num_workers=workers)
    (xmin, xmax, _), (ymin, ymax, _), _ = [(s.start, s.stop, s.step) for s in dataset.bounds]
    res = dataset.res[0]
    height, width = round((ymax - ymin) / res), round((xmax - xmin) / res)
    classes = np.zeros((height, width), dtype=np.uint8)
    chips = 0
    for batch in loader:
        probs = network(norm.prepare(batch["image"]))
        labels = probs.argmax(dim=1).to(torch.uint8).numpy()
        for label, (xs, ys, _) in zip(labels, batch["bounds"]):
            col, row = round((xs.start - xmin) / res), round((ymax - ys.stop) / res)
            r0, c0 = max(row, 0), max(col, 0)  # the last chips reach beyond the scene (read as fill)
            r1, c1 = min(row + 256, height), min(col + 256, width)
            classes[r0:r1, c0:c1] = label[r0 - row:r1 - row, c0 - col:c1 - col]
            chips += 1
    return classes, chips


def throughput(megapixels: float, passes: int, workers: int, work: Path) -> dict:
    from geoseg_assets.ml.inference import InferenceConfig
    from geoseg_assets.ml.runtimes import TorchNetwork

    side = int(math.sqrt(megapixels * 1e6)) // 32 * 32
    scene = real_mosaic(side, side, work)
    norm = normalizer()
    net = default_network()
    torch_net, onnx_net = TorchNetwork(net), onnx_network(net, work)
    batches = preload_limit_batches(scene, norm)
    paths = {
        "limit (torch)": lambda: [torch_net(x) for x in batches],
        "limit (onnx)": lambda: [onnx_net(x) for x in batches],
        "torchgeo": lambda: torchgeo_loop(torch_net, norm, scene, workers),
        "geoseg": lambda: geoseg(onnx_net, norm, scene, work / "classes.tif", InferenceConfig()),
        "geoseg torch": lambda: geoseg(torch_net, norm, scene, work / "classes_torch.tif", InferenceConfig()),
        "geoseg 256": lambda: geoseg(torch_net, norm, scene, work / "classes_256.tif",
                                     InferenceConfig(window=256, overlap=64, batch_size=8)),
    }
    torch_net(batches[0]), onnx_net(batches[0])  # warm-up (allocators, kernels)
    best = {name: math.inf for name in paths}
    results = {}
    for _ in range(passes):
        for name, run in paths.items():
            t = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - t)
    geo = results["geoseg"]
    return {"side": side, "megapixels": side * side / 1e6, "seconds": best, "torchgeo_chips": results["torchgeo"][1],
            "geoseg_windows": f"{geo.windows_forwarded} of {geo.window_shape[0]}x{geo.window_shape[1]}",
            "geoseg_forward_s": geo.seconds_forward}


def rss_case(size: int, work: Path) -> dict:
    from geoseg_assets.ml.inference import InferenceConfig

    scene = real_mosaic(size, size, work)
    norm = normalizer()
    network = onnx_network(default_network(), work)
    import_peak = proc_status_mb("VmHWM")
    reset_peak_rss()
    base = proc_status_mb("VmRSS")
    t = time.perf_counter()
    result = geoseg(network, norm, scene, work / f"classes_{size}.tif", InferenceConfig())
    return {"size": size, "seconds": time.perf_counter() - t, "peak_rss_mb": proc_status_mb("VmHWM"),
            "rss_before_mb": base, "import_peak_mb": import_peak, "windows": result.windows_total}


def report_throughput(t: dict, passes: int, workers: int) -> None:
    mp, s = t["megapixels"], t["seconds"]
    rate = {name: mp / seconds for name, seconds in s.items()}
    print(f"whole-scene prediction of a {t['side']}² real Landsat mosaic ({mp:.1f} MP), best of {passes} passes; "
          f"torchgeo: {t['torchgeo_chips']} chips, {workers} loader workers; geoseg: {t['geoseg_windows']} windows, "
          f"{t['geoseg_forward_s']:.1f} s of forward")
    print(f"  {'path':<14} {'seconds':>8} {'MP/s':>7} {'/ limit (torch)':>16} {'/ torchgeo':>11}")
    for name in s:
        print(f"  {name:<14} {s[name]:8.2f} {rate[name]:7.3f} {rate[name] / rate['limit (torch)']:16.2f} "
              f"{rate[name] / rate['torchgeo']:11.2f}")
    print(f"  goals: geoseg >= 0.85 x limit (torch): {rate['geoseg'] / rate['limit (torch)']:.2f}; "
          f">= 1.05 x torchgeo: {rate['geoseg'] / rate['torchgeo']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=14.5, help="throughput scene size (0 skips it)")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--torchgeo-workers", type=int, default=1, help="DataLoader worker processes of the peer")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_inference_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.rss_child:
        print(json.dumps(rss_case(args.rss_child, work)))
        return 0

    if args.megapixels:
        report_throughput(throughput(args.megapixels, args.passes, args.torchgeo_workers, work), args.passes,
                          args.torchgeo_workers)
    rows = []
    for size in args.rss_sizes:
        real_mosaic(size, size, work)
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(size), "--work", str(work)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if rows:
        print("peak RSS of geoseg's default path (fresh process each):")
        for r in rows:
            print(f"  {r['size']:>6}²: peak {r['peak_rss_mb']:7.1f} MB during the prediction, {r['rss_before_mb']:.1f} MB "
                  f"before it (network loaded; import peak {r['import_peak_mb']:.1f} MB); {r['windows']} windows in "
                  f"{r['seconds']:.1f} s")
        print(f"  ratio largest/smallest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}  (goal <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
