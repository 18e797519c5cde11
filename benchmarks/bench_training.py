"""Benchmark: one training epoch through the real input pipeline (random crops of the train split,
flips and rotations) versus forward+backward on the same batches preloaded in memory: the input
pipeline's overhead ratio (goal <= 1.10) and its share of step time (goal <= 10 %).

Uses the demo dataset (`make demo` builds it at data/store/dataset) and the default model config.

    .venv/bin/python benchmarks/bench_training.py [--dataset data/store/dataset] [--batches 8]
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO / "data" / "store" / "dataset")
    parser.add_argument("--batches", type=int, default=8, help="batches per measured pass")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating passes of each kind (best is kept)")
    args = parser.parse_args()

    import torch

    from geoseg_assets.assets.models import ModelConfig, train_config
    from geoseg_assets.ml.data import make_loaders
    from geoseg_assets.ml.losses import SegmentationLoss
    from geoseg_assets.ml.models import build_model

    config = train_config(ModelConfig(batch_size=args.batch_size), checkpoint_dir="")
    torch.manual_seed(0)
    train_loader, _, _, info = make_loaders(args.dataset, args.batch_size, indices=config.indices, seed=0)
    net = build_model(config.architecture, config.encoder, info.in_channels, info.num_classes, **config.model_kwargs)
    loss_fn = SegmentationLoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()

    def take(loader):
        for i, batch in enumerate(loader):
            if i == args.batches:
                break
            yield batch

    for x, y in take(train_loader):  # warm-up: allocator, kernels, page cache
        step(x, y)
    preloaded = [(x.clone(), y.clone()) for x, y in take(train_loader)]

    def timed(batches) -> float:
        start = time.perf_counter()
        for x, y in batches:
            step(x, y)
        return time.perf_counter() - start

    # Alternate the two passes and keep each one's best, so drift in CPU speed favours neither.
    pipeline_s = compute_s = float("inf")
    for _ in range(args.repeats):
        pipeline_s = min(pipeline_s, timed(take(train_loader)))
        compute_s = min(compute_s, timed(preloaded))
    n = len(preloaded)
    print(f"{n} batches of {args.batch_size} tiles {info.tile_shape}, {info.in_channels} channels, "
          f"{config.architecture}/{config.encoder}")
    print(f"real input pipeline {pipeline_s:6.2f}s | preloaded forward+backward {compute_s:6.2f}s | "
          f"overhead ratio {pipeline_s / compute_s:.3f} (goal <= 1.10)")
    print(f"input pipeline's share of step time (random train crops, flips and rotations): "
          f"{max(0.0, 1 - compute_s / pipeline_s):.1%} (goal <= 10 %)")


if __name__ == "__main__":
    main()
