"""`dataset`: labelled tiles of every partition, split by spatial block, sharded and versioned with DVC."""

import shutil
from pathlib import Path

import dagster as dg
from pydantic import Field

from geoseg_assets import metadata as md
from geoseg_assets.assets.masks import masks, resolve_class_map
from geoseg_assets.assets.tiles import tiles
from geoseg_assets.geo.audit import mask_grid_problem
from geoseg_assets.geo.dataset import DatasetError, build_dataset
from geoseg_assets.geo.dataset_inputs import PartitionInput
from geoseg_assets.geo.synthetic import BAND_NAMES
from resources.catalog import DATASET, MASK, SCENE_COG, TILE_TABLE
from resources.class_map import ClassMapResource
from resources.data_store import DataStore
from resources.dvc_store import DvcError, DvcStore
from resources.git_refs import DatasetRecord, PushResult, fetch_command

DVC_STAGE = "dataset"


class DatasetConfig(dg.Config):
    """Which partitions enter the training set and how it is split."""

    band_names: list[str] = Field(default=list(BAND_NAMES), description="Bands (in order) a partition must have to enter.")
    regions: list[str] | None = Field(default=None, description="Regions to use; None = every region with these bands.")
    seed: int = Field(default=0, description="Seed of the spatial-block split.")
    fractions: list[float] = Field(default=[0.7, 0.15, 0.15], description="train / val / test shares of tiles.")
    block_size_m: float = Field(default=5120.0, gt=0, description="Side of a spatial block in CRS units.")
    min_labelled_fraction: float = Field(default=0.5, ge=0, le=1, description="Tiles with fewer labelled pixels are left out.")
    tiles_per_shard: int = Field(default=1024, gt=0, description="Tiles per shard file.")
    version_with_dvc: bool = Field(default=True, description="Commit and push the result with DVC (off under `dvc repro`, which commits itself).")


def collect_partitions(instance: dg.DagsterInstance, data_store: DataStore, config: DatasetConfig,
                       log) -> tuple[list[PartitionInput], dict[str, str]]:
    """Partitions whose tiles and masks are materialized and whose scene has the configured bands. A
    partition whose files are missing, unreadable or out of step (a mask made from an earlier scene, or on
    another grid) is left out with a warning naming it and the fix, so one stale partition never stops
    the others. Returns (partitions, {left-out partition: why})."""
    done = set(map(str, instance.get_materialized_partitions(tiles.key))) & set(map(str, instance.get_materialized_partitions(masks.key)))
    parts, left_out = [], {}
    for key in sorted(done):
        date, region = key.split("|")
        if config.regions is not None and region not in config.regions:
            continue
        dims = {"region": region, "date": date}
        try:
            scene = data_store.scene_record(dims)
            if scene["band_names"] != config.band_names:
                log.info(f"{key}: bands {scene['band_names']} differ from {config.band_names}; left out")
                continue
            problem = stale_mask_problem(instance, key, scene, data_store.file(MASK, dims))
            if problem is None:
                part_tiles = data_store.tile_table(dims)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"its scene record or tile table cannot be read ({exc})"
        if problem is not None:
            log.warning(f"partition {key} left out of the dataset: {problem}. Fix: re-materialize scenes, tiles and "
                        f"masks of {key} (imagery_job), then the dataset")
            left_out[key] = problem
            continue
        parts.append(PartitionInput(
            region=region, date=date,
            scene_path=str(data_store.file(SCENE_COG, dims)),
            mask_path=str(data_store.file(MASK, dims)),
            tiles=part_tiles,
            scene_sha256=scene["fingerprint"],
            mask_sha256=data_store.sha256(data_store.file(MASK, dims)),
        ))
    return parts, left_out


def stale_mask_problem(instance: dg.DagsterInstance, key: str, scene: dict, mask_path) -> str | None:
    """Why a partition's mask does not belong to its current scene (None if it does): made from another
    scene's bytes (per the mask's last materialization), or not on the scene's grid."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=masks.key, asset_partitions=[key]), limit=1).records
    if records:
        meta = records[0].asset_materialization.metadata
        made_from = getattr(meta.get("scene_fingerprint"), "value", None)
        if made_from and made_from != scene.get("fingerprint"):
            return (f"its mask was made from scene {made_from[:12]}..., the scene is now {str(scene.get('fingerprint'))[:12]}... "
                    "(the scene was replaced after the mask)")
    return mask_grid_problem(str(mask_path), scene)


def check_object_store_deps(data_store: DataStore, dvc: DvcStore) -> None:
    """With outputs in an object store, the DVC stage must depend on the store's tiles and masks folders (DVC hashes
    them by their objects' ETags), not on local folders that do not exist; a Failure with the dvc.yaml to write."""
    wanted = [data_store.display(data_store.partition_dir(asset)) for asset in (TILE_TABLE.asset, MASK.asset)]
    try:
        deps = dvc.stage_deps(DVC_STAGE)
    except DvcError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    if not all(url in deps for url in wanted):
        raise dg.Failure(
            f"{Path(dvc.repo_dir) / 'dvc.yaml'}: stage {DVC_STAGE!r} depends on {deps}, but the tiles and masks live "
            f"in the object store. Fix: list {wanted[0]} and {wanted[1]} under its deps (in place of data/store/tiles "
            "and data/store/masks), or set version_with_dvc=false", allow_retries=False)


REPRODUCE = "python -m geoseg_assets.reproduce"


def restore_command(record: DatasetRecord, git_remote: str) -> str:
    """Markdown: how to get these exact bytes back, by hand and in one command."""
    return (
        f"In a clone with access to the DVC remote (`dvc remote add --local -f -d local <remote>` if it is not "
        f"the committed default):\n\n```bash\n"
        f"{fetch_command(record.ref, git_remote)}   # if the clone lacks it\n"
        f"git checkout {record.ref}   # detached: that code + this dvc.lock (needs a clean tree; `git switch -` back)\n"
        f"dvc pull {DVC_STAGE}\n```\n\n"
        f"or in one step, leaving your branch and `data/store/dataset` alone (restores into a detached worktree "
        f"under `data/reproduce/`):\n\n```bash\n"
        f"{REPRODUCE} --dataset {record.version}\n"
        f"{REPRODUCE} <model-name> <model-version>   # the dataset of any registered model\n```"
    )


def record_metadata(record: DatasetRecord, pushed: PushResult, git_remote: str) -> dict:
    return {
        "dataset_ref": record.ref,
        "dataset_commit": record.commit,
        "dataset_code_commit": record.code_commit or "none (the repository had no commit)",
        "dataset_ref_pushed": pushed.message,
        "restore_command": dg.MetadataValue.md(restore_command(record, git_remote)),
    }


@dg.asset(
    deps=[tiles, masks],
    kinds={"numpy", "dvc"},
    group_name="datasets",
    description="Training set: labelled tiles of all partitions, train/val/test split by spatial blocks (no place in "
    "two splits), normalization stats from train, a few large shards + manifest; versioned with DVC and recorded in git "
    "as `refs/geoseg/datasets/<md5>` (`python -m geoseg_assets.reproduce` or `git checkout <ref> && dvc pull dataset` "
    "restores it).",
)
def dataset(context: dg.AssetExecutionContext, config: DatasetConfig, data_store: DataStore,
            class_map: ClassMapResource, dvc: DvcStore) -> dg.MaterializeResult:
    out_dir = data_store.partition_dir(DATASET)
    # DVC versions a local folder: the output itself, or, when outputs live in an object store, a working copy in
    # the DVC repository that goes once the version is committed, pushed and published (DVC's cache keeps the bytes)
    workspace = dvc.stage_out(DVC_STAGE) if data_store.remote else out_dir
    if config.version_with_dvc and not data_store.remote and dvc.stage_out(DVC_STAGE).resolve() != out_dir.resolve():
        raise dg.Failure(
            f"{out_dir}: DVC versions the dataset at {dvc.stage_out(DVC_STAGE)} (dvc.yaml); keep the data root at "
            f"<repo>/data (GEOSEG_DATA_DIR) or set version_with_dvc=false", allow_retries=False)
    if config.version_with_dvc and data_store.remote:
        check_object_store_deps(data_store, dvc)
    parts, left_out = collect_partitions(context.instance, data_store, config, context.log)
    if not parts:
        raise dg.Failure("no partition has tiles and masks with the configured bands; materialize tiles and masks first",
                         allow_retries=False)
    maps = {p.region: resolve_class_map(class_map, p.region) for p in parts}
    first = next(iter(maps.values()))
    if any(m != first for m in maps.values()):
        raise dg.Failure(f"regions {sorted(maps)} use different class maps; build one dataset per class map "
                         "(set `regions`)", allow_retries=False)
    # Versioned with DVC, the new folder is built aside and replaces the old one only while `dvc commit` +
    # `dvc push` run; if either fails, the old folder and dvc.lock come back, so bytes and record stay in step.
    if data_store.remote:  # beside the DVC working copy (the same disk, so it is renamed into place)
        workspace.parent.mkdir(parents=True, exist_ok=True)
        build_dir = workspace.with_name(f".{workspace.name}-{context.run.run_id[:8]}")
    else:
        build_dir = data_store.tmp_dir() / f"dataset-{context.run.run_id[:8]}" if config.version_with_dvc else out_dir
    try:
        summary = build_dataset(
            parts, build_dir, {c.name: c.id for c in first.classes}, config.band_names, seed=config.seed,
            fractions=config.fractions, block_size_m=config.block_size_m,
            min_labelled_fraction=config.min_labelled_fraction, tiles_per_shard=config.tiles_per_shard,
            ignore_id=first.ignore_id,
        )
    except DatasetError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    version, record_meta = None, {"dataset_ref": "none (not versioned: `dvc repro` commits it; the model records it)"}
    if config.version_with_dvc:
        try:
            with data_store.provisional_dir(workspace, build_dir, keep=(dvc.lock_path(),)):
                version = dvc.commit(DVC_STAGE).md5
                # the git record of this version (code commit + this dvc.lock), so it stays restorable once
                # dvc.lock moves on; part of publishing: if it cannot be made, the earlier dataset comes back
                record = dvc.record(DVC_STAGE)
                if data_store.remote:
                    data_store.publish_folder(DATASET, workspace)
        except DvcError as exc:
            raise dg.Failure(f"{exc}; the earlier dataset at {data_store.display(out_dir)} and {dvc.lock_path()} were "
                             "kept as they were", allow_retries=False,
                             metadata={"error": str(exc), "kept": data_store.display(out_dir)}) from exc
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
            if data_store.remote:
                shutil.rmtree(workspace, ignore_errors=True)
        pushed = dvc.push_record(record)
        if pushed.status == "failed":
            context.log.warning(pushed.message)
        context.log.info(f"dataset version {version} committed to dvc.lock, pushed to the DVC remote and recorded as "
                         f"{record.ref} ({record.commit[:12]}; {pushed.message})")
        record_meta = record_metadata(record, pushed, dvc.git_remote)
    elif data_store.remote:
        try:
            data_store.publish_folder(DATASET, build_dir)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
    counts = summary.tile_counts
    return dg.MaterializeResult(
        metadata={
            "path": md.path(out_dir),
            "manifest": md.path(out_dir / Path(summary.manifest_path).name),
            "dataset_version": version or "not versioned (dvc repro commits it)",
            **record_meta,
            "tiles_train": counts["train"], "tiles_val": counts["val"], "tiles_test": counts["test"],
            "blocks": summary.block_counts,
            "dropped_tiles": summary.dropped_tiles,
            "partitions_left_out": left_out or "none",
            "class_share": summary.class_share,
            "class_pixels": summary.class_pixels,
            "norm_mean": summary.norm_mean, "norm_std": summary.norm_std,
            "partitions": [f"{p.region}/{p.date}" for p in parts],
            "seed": config.seed,
            "shard_files": len(summary.shard_files),
        },
        data_version=dg.DataVersion(version) if version else None,
    )
