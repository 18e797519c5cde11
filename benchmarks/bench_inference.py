"""Benchmark: the full predictions path versus the bare network on the same windows, and peak memory.

Throughput (one process, same scene, same windows, same batches; passes alternate and the best of
each is kept):
  forward   the network alone on every window's input, prepared and preloaded in memory
  pipeline  `predict_to_cogs` + `predict_scene`: threaded window reads, normalization + indices,
            forward, blending, strip flushing and the class COG write
Prints megapixels/s for both and pipeline/forward (goal >= 0.90).

Memory: the pipeline on a 4096^2 and an 8192^2 scene, each in a fresh subprocess, prints peak RSS
(goal: nearly equal; the strip buffer grows with the scene width only).

    .venv/bin/python benchmarks/bench_inference.py [--size 2048] [--rss-sizes 4096 8192] [--passes 2]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BANDS = ("B", "G", "R", "NIR")
MEAN, STD = (800.0, 900.0, 900.0, 2000.0), (400.0, 400.0, 500.0, 1000.0)


def proc_status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so the next peak is the pipeline's alone (imports of
    torch & co. set a higher mark than the pipeline ever reaches)."""
    Path("/proc/self/clear_refs").write_text("5")


def make_scene(size: int, folder: Path) -> Path:
    from geoseg_assets.geo.synthetic import SyntheticParams, write_scene

    path = folder / f"scene_{size}.tif"
    if not path.exists():
        t = time.perf_counter()
        write_scene(SyntheticParams("bench", "2024-06-15", width=size, height=size), path)
        print(f"  generated {path.name} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return path


def default_network():
    """The demo's default architecture (Unet, resnet18, depth 3) with bands + NDVI + NDWI in, 6 classes out."""
    import torch

    from geoseg_assets.ml.models import build_model

    torch.manual_seed(0)
    return build_model("unet", "resnet18", 6, 6, encoder_depth=3, decoder_channels=(64, 32, 16)).eval()


def pipeline(net, scene: Path, out: Path, config):
    from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
    from geoseg_assets.geo.prediction_io import predict_to_cogs
    from geoseg_assets.ml.normalize import Normalizer
    from geoseg_assets.ml.inference import predict_scene

    normalizer = Normalizer(BANDS, MEAN, STD, ("NDVI", "NDWI"))
    predict = partial(predict_scene, net, normalizer, [c.id for c in DEFAULT_CLASS_MAP.classes], config=config)
    return predict_to_cogs(predict, str(scene), BANDS, str(out), DEFAULT_CLASS_MAP)


def preload(scene: Path, config):
    """Every window's prepared input, batched exactly as the pipeline batches them."""
    import numpy as np
    import rasterio
    import torch

    from geoseg_assets.ml.normalize import Normalizer
    from geoseg_assets.ml.inference import window_grid

    normalizer = Normalizer(BANDS, MEAN, STD, ("NDVI", "NDWI"))
    with rasterio.open(scene) as src:
        inputs = []
        for col, row in window_grid(src.width, src.height, config):
            win = rasterio.windows.Window(col, row, config.window, config.window)
            raw = src.read(window=win, boundless=True, fill_value=0).astype(np.float32)
            inputs.append(normalizer.prepare(raw))
    return [torch.stack(inputs[i:i + config.batch_size]) for i in range(0, len(inputs), config.batch_size)]


def throughput(size: int, passes: int, work: Path) -> dict:
    import torch

    from geoseg_assets.ml.inference import InferenceConfig

    config = InferenceConfig()
    scene = make_scene(size, work)
    net = default_network()
    batches = preload(scene, config)
    windows = sum(len(b) for b in batches)
    best = {"forward": float("inf"), "pipeline": float("inf")}
    with torch.no_grad():
        net(batches[0])  # warm-up (allocator, kernels)
        for _ in range(passes):
            t = time.perf_counter()
            for x in batches:
                torch.softmax(net(x), dim=1)
            best["forward"] = min(best["forward"], time.perf_counter() - t)
            t = time.perf_counter()
            result = pipeline(net, scene, work / "classes.tif", config)
            best["pipeline"] = min(best["pipeline"], time.perf_counter() - t)
    assert result.windows_forwarded == windows, (result.windows_forwarded, windows)
    mpx = size * size / 1e6
    return {"size": size, "windows": windows, "forward_s": best["forward"], "pipeline_s": best["pipeline"],
            "forward_mpx_s": mpx / best["forward"], "pipeline_mpx_s": mpx / best["pipeline"],
            "ratio": best["forward"] / best["pipeline"]}


def rss_case(size: int, work: Path) -> dict:
    from geoseg_assets.ml.inference import InferenceConfig

    scene = make_scene(size, work)
    net = default_network()
    import_peak = proc_status_mb("VmHWM")
    reset_peak_rss()
    base = proc_status_mb("VmRSS")
    t = time.perf_counter()
    result = pipeline(net, scene, work / f"classes_{size}.tif", InferenceConfig())
    return {"size": size, "seconds": time.perf_counter() - t, "peak_rss_mb": proc_status_mb("VmHWM"),
            "rss_before_mb": base, "import_peak_mb": import_peak, "windows": result.windows_total}


def report_throughput(t: dict, passes: int) -> None:
    print(f"throughput on a {t['size']}^2 scene, {t['windows']} windows of 256 px (overlap 64), best of {passes}:")
    print(f"  forward only (preloaded) : {t['forward_s']:7.2f} s  {t['forward_mpx_s']:6.3f} MP/s")
    print(f"  full predictions path    : {t['pipeline_s']:7.2f} s  {t['pipeline_mpx_s']:6.3f} MP/s")
    print(f"  ratio pipeline/forward   : {t['ratio']:.2f}  (goal >= 0.90)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="throughput scene side (0 skips it)")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_inference_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.rss_child:
        print(json.dumps(rss_case(args.rss_child, work)))
        return 0

    if args.size:
        report_throughput(throughput(args.size, args.passes, work), args.passes)
    rows = []
    for size in args.rss_sizes:
        make_scene(size, work)
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(size), "--work", str(work)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if rows:
        print("peak RSS of the full path (fresh process each):")
        for r in rows:
            print(f"  {r['size']:>6}^2: peak {r['peak_rss_mb']:7.1f} MB during the pipeline, {r['rss_before_mb']:.1f} MB "
                  f"before it (model loaded; import peak {r['import_peak_mb']:.1f} MB); {r['windows']} windows in "
                  f"{r['seconds']:.1f} s")
        print(f"  ratio largest/smallest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}  (goal: nearly 1); "
              f"growth over the loaded model: {rows[0]['peak_rss_mb'] - rows[0]['rss_before_mb']:.0f} MB vs "
              f"{rows[-1]['peak_rss_mb'] - rows[-1]['rss_before_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
