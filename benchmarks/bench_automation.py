"""Benchmark: CPU of one automation tick (what the daemon's automation sensor evaluates every interval) against the
number of regions, for the code location's conditions and for the eager()-based condition they replaced.

The date axis is daily from 1972, so each region adds about 20,000 partitions per partitioned asset. For each region
count, on an empty ephemeral instance, `dg.evaluate_automation_conditions` runs `--ticks` times in a row with the
cursor carried over, as the daemon's ticks do, and the CPU seconds of each tick are printed:

  follow_upstream   the code location as it is (FOLLOW_UPSTREAM in geoseg_assets/partitions.py: dependency updates)
  eager_any_date    the same assets with `eager().without(in_latest_time_window()) & all_deps_blocking_checks_passed()`,
                    the condition before, whose `newly_missing()` scans every region x date partition each tick

Steady state is the last tick; the second tick of `follow_upstream` serializes the full partition set once.

    .venv/bin/python benchmarks/bench_automation.py [--regions 2 10 40] [--ticks 4]
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EAGER_ANY_DATE = "eager_any_date"


def code_location(variant: str, data_dir: Path):
    """The code location's definitions, or the same with the eager-based condition on every FOLLOW_UPSTREAM asset."""
    import dagster as dg

    from geoseg_assets.definitions import build_defs, default_resources
    from geoseg_assets.partitions import FOLLOW_UPSTREAM

    defs = build_defs(default_resources(data_dir))
    if variant != EAGER_ANY_DATE:
        return defs
    eager_any_date = (dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
                      & dg.AutomationCondition.all_deps_blocking_checks_passed())
    return defs.map_resolved_asset_specs(
        func=lambda spec: spec.replace_attributes(automation_condition=eager_any_date)
        if spec.automation_condition == FOLLOW_UPSTREAM else spec)


def tick_cpu(variant: str, regions: int, ticks: int) -> list[float]:
    """CPU seconds of each of `ticks` consecutive evaluations on an empty instance with `regions` regions."""
    import dagster as dg

    defs = code_location(variant, Path(tempfile.mkdtemp(prefix="bench_automation_")))
    seconds = []
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("region", [f"region{i:03d}" for i in range(regions)])
        cursor = None
        for _ in range(ticks):
            t0 = time.process_time()
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            seconds.append(time.process_time() - t0)
            cursor = result.cursor
            assert result.total_requested == 0, "an empty instance has nothing to materialize"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--ticks", type=int, default=4)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Dagster's preview/beta notes on every evaluation, not results
    print(f"{'condition':16s} {'regions':>7s}  CPU s per tick (tick 1..{args.ticks})")
    steady = {}
    for regions in args.regions:
        for variant in ("follow_upstream", EAGER_ANY_DATE):
            seconds = tick_cpu(variant, regions, args.ticks)
            steady[variant, regions] = seconds[-1]
            print(f"{variant:16s} {regions:7d}  " + "  ".join(f"{s:6.2f}" for s in seconds), flush=True)
        ratio = steady[EAGER_ANY_DATE, regions] / max(steady["follow_upstream", regions], 1e-3)
        print(f"{'':16s} {regions:7d}  steady tick: eager_any_date / follow_upstream = {ratio:.0f}x", flush=True)


if __name__ == "__main__":
    main()
