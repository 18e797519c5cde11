"""Partitions: dynamic `region` x daily `date`. Build keys with `partition_key()`, never by hand."""

from __future__ import annotations

import dagster as dg

REGION = "region"
DATE = "date"
# Landing dates are acquisition dates: from Landsat 1's launch (the start of the archive) to today (UTC).
DATE_START = "1972-07-23"

region_partitions = dg.DynamicPartitionsDefinition(name=REGION)
# end_offset=1: today's (UTC) partition exists from midnight on, so a scene acquired today can run today.
date_partitions = dg.DailyPartitionsDefinition(start_date=DATE_START, end_offset=1)
region_date_partitions = dg.MultiPartitionsDefinition({REGION: region_partitions, DATE: date_partitions})


def partition_key(region: str, date: str) -> dg.MultiPartitionKey:
    """The multi-partition key of one region/date (dimension order is handled by Dagster)."""
    return dg.MultiPartitionKey({REGION: region, DATE: date})


def partition_dims(context) -> dict[str, str]:
    """{'region': ..., 'date': ...} of the partition an asset/check context is running for."""
    key = context.partition_key
    if isinstance(key, dg.MultiPartitionKey):
        by_dim = key.keys_by_dimension
    else:  # plain "date|region" string: values are ordered by dimension name
        by_dim = dict(zip(sorted([REGION, DATE]), str(key).split("|")))
    return {REGION: by_dim[REGION], DATE: by_dim[DATE]}


# Re-run a partition when its upstream partition changes, for ANY date (eager() alone only acts on
# the latest time window, so a replaced scene of an old date would never propagate), and only once
# the upstream's blocking checks have passed. Both are asserted in tests/assets/test_automation.py.
FOLLOW_UPSTREAM = (
    dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
)
