"""Model quality: the pipeline against a plain smp training script, same labelled pixels, network, steps and seed.

Cross-validated over bands of rows: the scene is cut into `--folds` horizontal bands; for each band (fold) the labels
of every OTHER row are the training labels and the band is held out. Per fold:
1. the pipeline lands the scene, imports the fold's labels into its label store, materializes
   scenes -> tiles -> masks -> dataset -> model (+ evaluation, promoted) -> predictions, all through Dagster;
2. the plain script (what a user writes in 70 lines: smp Unet, random crops from the labelled rows, CE +
   Dice, AdamW, N steps, non-overlapping tiles at inference) trains on the SAME scene COG and the SAME mask
   COG the pipeline rasterized, with the same network, crop, batch, number of optimizer steps and seed,
   on the pixels of the pipeline's train split (the same training data: this decides) and, unless
   `--skip-plain-all`, on every labelled pixel (what the pipeline gives up by holding val/test tiles out);
3. each whole-scene prediction is kept on the held-out band only.
The bands put together give every trainer one out-of-fold prediction of the whole scene, scored against the truth
(mIoU over the classes present, pixel accuracy, IoU per class): every labelled object is held out exactly once, so
a scene with 43 buildings is judged on 43 buildings instead of the handful one band holds. Per-fold figures and
the pipeline's wins per fold are printed too.

Cases: `spacenet` (the bundled real SpaceNet image, 0.5 m, 1 band, 43 building footprints: building vs
background) and `synthetic_hard` (a small 6-class scene where two classes cover over 85 % of pixels,
noisier pixels, labels with shifted borders and 5 % of the labelled area in a wrong class; truth = the clean labels).

    .venv/bin/python benchmarks/bench_model_quality.py                     # both cases, 5 folds, default budget
    .venv/bin/python benchmarks/bench_model_quality.py --case spacenet --folds 5 --fold 4   # the bottom 20 % only
    .venv/bin/python benchmarks/bench_model_quality.py --jobs 2 --threads 1  # two folds at once, 1 thread each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACENET = REPO / "tests/data/spacenet_buildings"
PIPELINE = "pipeline"
PLAIN_SAME = "plain script, same train pixels"  # the pipeline's train split: the comparison that decides
PLAIN_ALL = "plain script, every labelled px"  # also the pixels the pipeline holds out for val/test
DATE = "2024-06-15"
LABEL_NOISE_AREA = 0.05  # synthetic_hard: share of the labelled area given a wrong class
QUIET = {"console": {"config": {"log_level": "WARNING"}}}  # Dagster's run logs: warnings and errors only
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class Case:
    """A scene, its full truth raster (class ids, 255 = unknown) and its labels over the whole scene (the folds
    clip them)."""

    name: str
    scene: Path  # GeoTIFF to land
    spec: dict  # region.json
    classes: list[dict]  # class map: name, id, color
    labels: object  # GeoDataFrame with a `class` column (names), in the scene CRS, covering the whole scene
    truth: np.ndarray  # (H, W) uint8 class ids of the whole scene, 255 where unknown
    indices: list[str]


def fold_rows(height: int, folds: int) -> list[tuple[int, int]]:
    """The held-out band [row0, row1) of each fold: `folds` bands of (nearly) equal height, top to bottom."""
    edges = [round(height * i / folds) for i in range(folds + 1)]
    return list(zip(edges[:-1], edges[1:]))


def fold_labels(case: Case, rows: tuple[int, int]):
    """The case's labels outside the held-out rows (polygonal parts only), as the fold's training labels."""
    import geopandas as gpd
    import rasterio
    import shapely
    from shapely.geometry import box

    with rasterio.open(case.scene) as src:
        left, top = src.transform * (0, rows[0])
        right, bottom = src.transform * (src.width, rows[1])
    band = box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    kept = []
    for name, geom in zip(case.labels["class"], case.labels.geometry):
        parts = [g for g in shapely.get_parts(geom.difference(band)) if g.geom_type == "Polygon" and g.area > 0]
        if parts:
            kept.append((name, shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]))
    return gpd.GeoDataFrame({"class": [n for n, _ in kept]}, geometry=[g for _, g in kept], crs=case.labels.crs)


def spacenet_case(work: Path) -> Case:
    """SpaceNet buildings: background everywhere inside the scene, building footprints on top."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize
    from shapely.geometry import box
    from shapely.ops import unary_union

    path = SPACENET / "sample_geotiff.tif"
    buildings = gpd.read_file(SPACENET / "geotiff_labels.geojson")
    with rasterio.open(path) as src:
        buildings = buildings.set_crs(src.crs, allow_override=True) if buildings.crs != src.crs else buildings
        footprint = box(*src.bounds)
        truth = rasterize([(g, 2) for g in buildings.geometry], out_shape=(src.height, src.width),
                          transform=src.transform, fill=1, dtype="uint8")
        valid = src.read_masks(1) > 0
    truth[~valid] = 255
    houses = [g.intersection(footprint) for g in buildings.geometry if g.intersects(footprint)]
    background = footprint.difference(unary_union(houses))
    labels = gpd.GeoDataFrame({"class": ["background"] + ["building"] * len(houses)},
                              geometry=[background, *houses], crs=buildings.crs)
    return Case("spacenet", path, {"band_names": ["PAN"], "dtype": "uint16"},
                [{"name": "background", "id": 1, "color": [200, 200, 200]},
                 {"name": "building", "id": 2, "color": [200, 40, 40]}], labels, truth, [])


def synthetic_hard_case(work: Path, size: int = 768, seed: int = 0) -> Case:
    """6 synthetic classes, cropland + forest over 85 % of pixels, sensor noise 0.12, noisy labels (shifted borders,
    5 % of the labelled area in a wrong class)."""
    import geopandas as gpd
    import rasterio
    from rasterio.windows import Window
    from shapely import STRtree

    from geoseg_assets.geo import synthetic as syn
    from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP

    params = syn.SyntheticParams(region="hard", date=DATE, width=size, height=size, seed=seed, noise=0.12)
    transform = syn.scene_transform(params)
    cover = syn.land_cover(params.region, size, size, seed)
    rng = np.random.default_rng(seed)
    bare = cover["bare"]
    keep = rng.random(len(bare)) < 0.3  # most bare parcels become cropland: bare is rare, cropland dominant
    cover["cropland"] = cover["cropland"] + [p for p, k in zip(bare, keep) if not k]
    cover["bare"] = [p for p, k in zip(bare, keep) if k]
    world = syn.to_world(cover, transform)
    shapes = [(g, syn.CLASSES[name]) for name in syn.PRIORITY for g in world[name]]
    tree = STRtree([g for g, _ in shapes])
    truth, pixels = syn.render_window(params, world, tree, shapes, Window(0, 0, size, size), transform)
    truth = truth.astype(np.uint8)
    truth[truth == 0] = 255
    scene = work / "synthetic_hard.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                       crs=f"EPSG:{syn.EPSG}", transform=transform, nodata=syn.NODATA, tiled=True, blockxsize=256,
                       blockysize=256, compress="DEFLATE") as dst:
        dst.write(pixels)
    # Noisy labels: every polygon's border moved by up to +-1.5 px; polygons drawn in random order get a random
    # other class until 5 % of the labelled area is wrong (a polygon larger than what is left of that budget keeps
    # its class). Drawing 5 % of the polygons by count instead mislabelled the scene's largest cropland parcel
    # (170,706 px, 29 % of the scene) as water with seed 0: a broken label set, whose figures measured how each
    # trainer settles a contradiction (folds swung by +-0.25 mIoU), not learning under realistic noise.
    names = list(syn.CLASSES)
    rows = [(name, g.buffer(float(rng.uniform(-1.5, 1.5)) * syn.RESOLUTION)) for name in syn.PRIORITY
            for g in world[name]]
    rows = [(name, g) for name, g in rows if not g.is_empty]
    budget = LABEL_NOISE_AREA * sum(g.area for _, g in rows)
    for i in rng.permutation(len(rows)):
        name, g = rows[i]
        if g.area <= budget:
            rows[i] = (str(rng.choice([n for n in names if n != name])), g)
            budget -= g.area
    labels = gpd.GeoDataFrame({"class": [n for n, _ in rows]}, geometry=[g for _, g in rows], crs=f"EPSG:{syn.EPSG}")
    labels = labels[~labels.geometry.is_empty & labels.geom_type.isin(["Polygon", "MultiPolygon"])]
    classes = [{"name": c.name, "id": c.id, "color": list(c.color)} for c in DEFAULT_CLASS_MAP.classes]
    return Case("synthetic_hard", scene, {"band_names": list(syn.BAND_NAMES), "dtype": "uint16"}, classes, labels,
                truth, ["NDVI", "NDWI"])


CASES = {"spacenet": spacenet_case, "synthetic_hard": synthetic_hard_case}


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


def run_pipeline(case: Case, labels, work: Path, budget: dict) -> dict:
    """Land the scene, import `labels`, materialize everything through Dagster; paths of the outputs."""
    import dagster as dg

    from geoseg_assets.assets.masks import MASK_FILE
    from geoseg_assets.assets.models import EvaluationConfig, ModelConfig
    from geoseg_assets.assets.datasets import DatasetConfig
    from geoseg_assets.assets.predictions import CLASSES_FILE
    from geoseg_assets.assets.scenes import SCENE_FILE
    from geoseg_assets.assets.tiles import TilesConfig
    from geoseg_assets.assets.masks import ImportLabelsConfig
    from geoseg_assets.definitions import build_defs
    from geoseg_assets.partitions import partition_key
    from resources.class_map import ClassMapResource, ClassSpec
    from resources.compute import ComputeDevice
    from resources.data_store import DataStore
    from resources.drift_policy import DriftPolicy
    from resources.dvc_store import DvcStore
    from resources.geopackage_labels import GeoPackageLabelStore
    from resources.landing_source import REGION_SPEC_FILE, LandingFolderSource
    from resources.mlflow_tracking import MlflowTracking
    from resources.notifier import Notifier
    from tests.support.repos import new_project_repo

    repo = new_project_repo(work / "repo")
    landing = work / "landing"
    region = case.name.replace("_", "-")
    (landing / region / DATE).mkdir(parents=True)
    shutil.copy(case.scene, landing / region / DATE / case.scene.name)
    (landing / region / REGION_SPEC_FILE).write_text(json.dumps(case.spec))
    labels_path = work / "labels.geojson"
    labels.to_file(labels_path, driver="GeoJSON")
    store = DataStore(root=str(repo / "data" / "store"))
    resources = {
        "data_store": store, "scene_source": LandingFolderSource(root=str(landing)),
        "label_store": GeoPackageLabelStore(path=str(work / "labels.gpkg")),
        "class_map": ClassMapResource(classes=[ClassSpec(**c) for c in case.classes]),
        "dvc": DvcStore(repo_dir=str(repo), remote_url=str(work / "dvc-remote")),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                          artifact_location=str(work / "mlflow-artifacts")),
        "notifier": Notifier(), "compute": ComputeDevice(device="cpu"), "drift_policy": DriftPolicy(),
    }
    defs = build_defs(resources)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("region", [region])
    key = partition_key(region, DATE)
    dims = {"region": region, "date": DATE}
    tiles = TilesConfig(tile_size=budget["tile_size"])

    def run(job: str, config: dict | None = None, **kwargs):
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, run_config=dg.RunConfig(ops=config or {}, loggers=QUIET), raise_on_error=False, **kwargs)
        if not result.success:
            errors = [e.message for e in result.all_events if e.is_failure]
            raise SystemExit(f"{case.name}: {job} failed: {errors[-3:]}")
        return result

    run("imagery_job", {"tiles": tiles}, partition_key=key)
    run("import_labels_job", {"import_labels": ImportLabelsConfig(path=str(labels_path), region=region, replace=True)})
    run("imagery_job", {"tiles": tiles}, partition_key=key)  # masks with the labels
    dataset = run("dataset_job", {"dataset": DatasetConfig(**{"band_names": case.spec["band_names"],
                                                              "block_size_m": budget["block_size_m"], **budget["dataset"]})})
    meta = dataset.asset_materializations_for_node("dataset")[0].metadata
    model_config = ModelConfig(**{"indices": case.indices, "epochs": budget["epochs"], "samples_per_epoch": budget["samples"],
                                  "batch_size": budget["batch_size"], "crop": budget["crop"], "seed": budget["seed"],
                                  "patience": None, "fresh": True, "export_onnx": False, **budget["model"]})
    t0 = time.perf_counter()
    trained = run("training_job", {"model": model_config, "model_evaluation": EvaluationConfig(min_miou=0.0)})
    seconds = time.perf_counter() - t0
    evaluation = trained.asset_materializations_for_node("model_evaluation")[0].metadata
    run("prediction_job", partition_key=key)
    return {"scene": store.path("scenes", dims, SCENE_FILE), "mask": store.path("masks", dims, MASK_FILE),
            "train_pixels": split_pixels(store, dims, case.truth.shape, "train"),
            "prediction": store.path("predictions", dims, CLASSES_FILE), "seconds": seconds,
            "tiles": f"{meta['tiles_train'].value}/{meta['tiles_val'].value}/{meta['tiles_test'].value}",
            "test_miou": evaluation["test_miou"].value}


def split_pixels(store, dims: dict, shape: tuple[int, int], split: str) -> np.ndarray:
    """(H, W) bool: the pixels of the tiles the pipeline's dataset put in `split` (from its manifest)."""
    import geopandas as gpd

    from geoseg_assets.assets.tiles import TILES_FILE

    manifest = json.loads((store.partition_dir("dataset") / "manifest.json").read_text())
    ids = {t["tile_id"] for t in manifest["splits"][split]["tiles"]}
    tiles = gpd.read_parquet(store.path("tiles", dims, TILES_FILE))
    inside = np.zeros(shape, dtype=bool)
    for t in tiles[tiles["tile_id"].isin(ids)].itertuples():
        inside[t.row:t.row + t.height, t.col:t.col + t.width] = True
    return inside


# --------------------------------------------------------------------------------------------------
# The plain script (what a user writes without the pipeline)
# --------------------------------------------------------------------------------------------------


def plain_script(scene_path: Path, mask_path: Path, class_ids: list[int], budget: dict,
                 only: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Unet-resnet18 on random crops of the labelled pixels (those inside `only`, if given), CE + Dice, AdamW;
    whole-scene prediction by non-overlapping windows. Returns (class ids (H, W), training seconds)."""
    import rasterio
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    from geoseg_assets.assets.models import ModelConfig, train_config

    torch.manual_seed(budget["seed"])
    rng = np.random.default_rng(budget["seed"])
    with rasterio.open(scene_path) as src:
        image = src.read().astype(np.float32)
        valid = src.dataset_mask() > 0
    with rasterio.open(mask_path) as src:
        mask = src.read(1)
    lut = np.full(256, 255, dtype=np.int64)
    lut[class_ids] = np.arange(len(class_ids))
    target = lut[mask]
    if only is not None:
        target[~only] = 255
    labelled = target != 255
    mean = image[:, labelled].mean(axis=1)[:, None, None]
    std = image[:, labelled].std(axis=1)[:, None, None] + 1e-6
    x_all = (image - mean) / std
    x_all[:, ~valid] = 0
    c, h, w = x_all.shape
    crop, batch = budget["crop"], budget["batch_size"]
    rows, cols = np.nonzero(labelled)
    # the same network as the pipeline's ModelConfig (defaults + --model overrides)
    net_fields = {k: v for k, v in budget["model"].items() if k == "encoder_depth"}  # the script is a Unet-resnet18
    kwargs = train_config(ModelConfig(**net_fields), "unused").model_kwargs
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=c, classes=len(class_ids), **kwargs)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=255)
    pad = ((0, 0), (crop, crop), (crop, crop))
    xp, yp = np.pad(x_all, pad), np.pad(target, pad[1:], constant_values=255)
    t0 = time.perf_counter()
    net.train()
    for _ in range(budget["steps"]):
        xs, ys = [], []
        for _ in range(batch):
            i = rng.integers(len(rows))  # a crop around a random labelled pixel
            top, left = rows[i] + crop - crop // 2, cols[i] + crop - crop // 2
            xc, yc = xp[:, top:top + crop, left:left + crop], yp[top:top + crop, left:left + crop]
            if rng.random() < 0.5:
                xc, yc = xc[:, :, ::-1], yc[:, ::-1]
            if rng.random() < 0.5:
                xc, yc = xc[:, ::-1], yc[::-1]
            xs.append(np.ascontiguousarray(xc))
            ys.append(np.ascontiguousarray(yc))
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        logits = net(x)
        loss = F.cross_entropy(logits, y, ignore_index=255) + dice(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    net.eval()
    out = np.full((h, w), 255, dtype=np.uint8)
    ids = np.asarray(class_ids, dtype=np.uint8)
    with torch.inference_mode():
        for top in range(0, h, crop):
            for left in range(0, w, crop):
                window = np.zeros((c, crop, crop), dtype=np.float32)
                part = x_all[:, top:top + crop, left:left + crop]
                window[:, :part.shape[1], :part.shape[2]] = part
                pred = net(torch.from_numpy(window)[None]).argmax(1)[0].numpy()
                out[top:top + crop, left:left + crop] = ids[pred[:part.shape[1], :part.shape[2]]]
    out[~valid] = 255
    return out, seconds


# --------------------------------------------------------------------------------------------------
# Folds and scoring
# --------------------------------------------------------------------------------------------------


def run_fold(name: str, fold: int, rows: tuple[int, int], budget: dict, flags: dict) -> dict:
    """One fold: the pipeline and the plain script(s) trained without the labels of `rows`; each trainer's
    whole-scene prediction (H, W) and the pipeline's split figures. Runs in a worker process with --jobs."""
    import rasterio
    import torch

    if flags["threads"]:
        torch.set_num_threads(flags["threads"])
    work = Path(tempfile.mkdtemp(prefix=f"geoseg-bench-quality-{name}-fold{fold}-"))
    try:
        case = CASES[name](work)
        with rasterio.open(case.scene) as src:
            res = abs(src.transform.a)
        fold_budget = {**budget, "block_size_m": 2 * budget["tile_size"] * res}  # blocks of 2 x 2 tiles
        pipe = run_pipeline(case, fold_labels(case, rows), work, fold_budget)
        with rasterio.open(pipe["prediction"]) as src:
            predictions = {PIPELINE: src.read(1)}
        seconds = {PIPELINE: pipe["seconds"]}
        ids = [c["id"] for c in case.classes]
        if not flags["skip_plain"]:
            predictions[PLAIN_SAME], seconds[PLAIN_SAME] = plain_script(pipe["scene"], pipe["mask"], ids, fold_budget,
                                                                        pipe["train_pixels"])
            if not flags["skip_plain_all"]:
                predictions[PLAIN_ALL], seconds[PLAIN_ALL] = plain_script(pipe["scene"], pipe["mask"], ids, fold_budget)
        return {"fold": fold, "rows": rows, "predictions": predictions, "seconds": seconds, "tiles": pipe["tiles"],
                "test_miou": pipe["test_miou"]}
    finally:
        if flags["keep"]:
            print(f"fold {fold}: work folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def score(prediction: np.ndarray, truth: np.ndarray, classes: list[dict]) -> dict:
    """mIoU over the classes present in `truth`, pixel accuracy, IoU and support per class (255 = unknown)."""
    from geoseg_assets.ml.metrics import confusion_matrix, segmentation_metrics

    ids = [c["id"] for c in classes]
    names = [c["name"] for c in classes]
    cm = confusion_matrix(np.where(prediction == 255, 255, truth), prediction, ids, ignore_id=255)
    metrics = segmentation_metrics(cm, names)
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "unpredicted": int(((prediction == 255) & (truth != 255)).sum()),
            "iou": {n: v["iou"] for n, v in metrics["per_class"].items()},
            "support": {n: int(cm[i].sum()) for i, n in enumerate(names)}}


def print_table(title: str, results: dict, classes: list[dict]) -> None:
    names = [c["name"] for c in classes]
    print(f"{title:34} {'mIoU (present)':>15} {'pixel acc':>10}  " + "  ".join(f"{n[:12]:>12}" for n in names))
    for who, r in results.items():
        print(f"{who:34} {r['miou']:15.3f} {r['pixel_accuracy']:10.3f}  " +
              "  ".join(f"{r['iou'][n]:12.3f}" for n in names))
    support = next(iter(results.values()))["support"]
    print(f"{'support px':34} {'':15} {'':10}  " + "  ".join(f"{support[n]:12d}" for n in names))


def run_case(name: str, folds: list[int], args, budget: dict, flags: dict) -> bool:
    """All requested folds of one case, the out-of-fold table; True when the pipeline is at least as good as the
    plain script on the same train pixels (pooled out-of-fold mIoU)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"geoseg-bench-quality-{name}-case-"))
    try:
        case = CASES[name](scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    height = case.truth.shape[0]
    bands = fold_rows(height, args.folds)
    shares = np.bincount(case.truth[case.truth != 255], minlength=256)
    shares = {c["name"]: round(float(shares[c["id"]] / shares.sum()), 3) for c in case.classes}
    print(f"\n== {name}: {case.truth.shape[1]} x {height} px, class shares {shares}; folds {folds} of {args.folds} "
          f"(held-out rows {[bands[f] for f in folds]})", flush=True)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            outcomes = list(pool.map(run_fold, [name] * len(folds), folds, [bands[f] for f in folds],
                                     [budget] * len(folds), [flags] * len(folds)))
    else:
        outcomes = [run_fold(name, f, bands[f], budget, flags) for f in folds]
    held_out = np.zeros(case.truth.shape, dtype=bool)
    oof = {who: np.full(case.truth.shape, 255, dtype=np.uint8) for who in outcomes[0]["predictions"]}
    for out in outcomes:
        r0, r1 = out["rows"]
        held_out[r0:r1] = True
        per_fold = {who: score(pred[r0:r1], case.truth[r0:r1], case.classes) for who, pred in out["predictions"].items()}
        for who, pred in out["predictions"].items():
            oof[who][r0:r1] = pred[r0:r1]
        print(f"\nfold {out['fold']}: held-out rows {r0}..{r1}; pipeline tiles train/val/test {out['tiles']}, its "
              f"test-split mIoU {out['test_miou']:.3f}; training s " +
              ", ".join(f"{who} {sec:.0f}" for who, sec in out["seconds"].items()))
        print_table(f"fold {out['fold']}", per_fold, case.classes)
    truth = np.where(held_out, case.truth, 255)
    pooled = {who: score(np.where(held_out, pred, 255), truth, case.classes) for who, pred in oof.items()}
    print(f"\n{name}: out-of-fold prediction of {int(held_out.sum()):,} px ({len(folds)} fold(s)) against the truth")
    print_table(f"{name}, out of fold", pooled, case.classes)
    if PLAIN_SAME not in pooled:
        return True
    wins = 0
    for out in outcomes:
        r0, r1 = out["rows"]
        mine, theirs = (score(out["predictions"][w][r0:r1], case.truth[r0:r1], case.classes)["miou"]
                        for w in (PIPELINE, PLAIN_SAME))
        wins += mine >= theirs
    margin = pooled[PIPELINE]["miou"] - pooled[PLAIN_SAME]["miou"]
    print(f"{name}: pipeline - plain script (same train pixels) = {margin:+.3f} mIoU out of fold; "
          f"pipeline >= plain in {wins} of {len(outcomes)} folds")
    return margin >= 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=240, help="optimizer steps of both trainers")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=15, help="pipeline epochs (steps / epochs crops batches each)")
    parser.add_argument("--tile-size", type=int, default=128, help="pipeline tile grid (split granularity)")
    parser.add_argument("--folds", type=int, default=5, help="bands of rows; each is held out once")
    parser.add_argument("--fold", type=int, action="append", help="run only these folds (0 = top band; repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at once (worker processes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument("--model", type=json.loads, default={}, help="ModelConfig overrides (JSON) of the pipeline")
    parser.add_argument("--dataset", type=json.loads, default={}, help="DatasetConfig overrides (JSON)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = torch's default)")
    parser.add_argument("--skip-plain", action="store_true", help="train the pipeline only (config experiments)")
    parser.add_argument("--skip-plain-all", action="store_true",
                        help="skip the plain script on every labelled pixel (train it on the pipeline's train split only)")
    args = parser.parse_args()
    if args.steps % args.epochs:
        parser.error(f"--steps {args.steps} must be a multiple of --epochs {args.epochs}")
    folds = sorted(set(args.fold)) if args.fold else list(range(args.folds))
    if not all(0 <= f < args.folds for f in folds):
        parser.error(f"--fold must lie in 0..{args.folds - 1}")
    budget = {"steps": args.steps, "batch_size": args.batch_size, "crop": args.crop, "seed": args.seed,
              "epochs": args.epochs, "samples": args.steps // args.epochs * args.batch_size,
              "tile_size": args.tile_size, "model": args.model, "dataset": args.dataset}
    flags = {"threads": args.threads, "keep": args.keep, "skip_plain": args.skip_plain,
             "skip_plain_all": args.skip_plain_all}
    print(f"pipeline overrides: model {args.model}, dataset {args.dataset}")
    print(f"budget per fold and trainer: {args.steps} optimizer steps x {args.batch_size} crops of {args.crop} px, "
          f"seed {args.seed}, same Unet-resnet18; pipeline: {args.epochs} epochs x {budget['samples']} crops, tiles "
          f"{args.tile_size} px; {args.folds} bands of rows, each held out once; {args.jobs} fold(s) at once, "
          f"{args.threads or 'default'} torch thread(s) each")
    names = list(CASES) if args.case == "all" else [args.case]
    t0 = time.perf_counter()
    worse = [name for name in names if not run_case(name, folds, args, budget, flags)]
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    if args.skip_plain:  # nothing to compare with: a config experiment, not a verdict
        print("result: no verdict (--skip-plain trained the pipeline only)")
        return 0
    print("result: " + (f"the pipeline LOST to the plain script on the same training pixels on {worse}" if worse
                        else "the pipeline's out-of-fold mIoU >= the plain script's on the same training pixels on "
                             "every case"))
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
