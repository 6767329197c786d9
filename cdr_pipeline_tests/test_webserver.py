"""The UI's own API as a client: a real ``dagster-webserver`` and ``dagster-daemon`` on
loopback, driven through GraphQL the way the UI drives them.

Lists the assets, launches a partition backfill, waits for the daemon to finish it, and reads
the partition statuses back; then checks the files on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from cdr_pipeline import datasets
from cdr_pipeline_tests.servers import daemon_process, stop, tail, webserver

ASSETS = ["raw_cdr", *datasets.NAMES]
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]

LIST_ASSETS = "query { assetNodes { assetKey { path } groupName isPartitioned } }"
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
  }
}
"""
STATUSES = """
query Statuses($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on TimePartitionStatuses { ranges { status startKey endKey } }
      }
    }
  }
}
"""


@pytest.fixture
def dagster_services(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(home),
        "CDR_DATA_DIR": str(data),
        "CDR_START_DATE": "2024-01-01",
        "CDR_SIM_CALLS_PER_DAY": "300",
        "CDR_SIMULATOR": "true",
    }
    # The instance's SQLite storage is created here, once, not raced for by the two services.
    with dg.DagsterInstance.from_config(str(home)):
        pass
    daemon_log = tmp_path / "daemon.log"
    daemon = daemon_process(env, daemon_log)
    try:
        with webserver(env, tmp_path / "webserver.log") as url:
            assert daemon.poll() is None, f"dagster-daemon exited:\n{tail(daemon_log)}"
            yield url, data, daemon_log
    finally:
        stop(daemon)


def _graphql(url: str, query: str, **variables: object) -> dict:
    resp = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.mark.slow
def test_backfill_through_the_webservers_graphql(dagster_services):
    url, data, daemon_log = dagster_services
    nodes = _graphql(url, LIST_ASSETS)["assetNodes"]
    listed = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(listed) == set(ASSETS)
    assert all(n["groupName"] == "cdr" and n["isPartitioned"] for n in listed.values())

    params = {
        "partitionNames": DAYS,
        "assetSelection": [{"path": [name]} for name in ASSETS],
        "title": "test backfill",
    }
    launched = _graphql(url, LAUNCH, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    deadline = time.monotonic() + 240
    while True:  # the daemon picks the backfill up and launches its run
        backfill = _graphql(url, BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        if backfill["status"] != "REQUESTED":
            break
        assert time.monotonic() < deadline, f"the backfill did not finish:\n{tail(daemon_log)}"
        time.sleep(1)
    assert backfill["status"] == "COMPLETED_SUCCESS", f"{backfill}\n{tail(daemon_log)}"
    assert backfill["numPartitions"] == len(DAYS)

    for asset in ASSETS:
        statuses = _graphql(url, STATUSES, key={"path": [asset]})["assetNodeOrError"]
        ranges = statuses["assetPartitionStatuses"]["ranges"]
        assert [(r["status"], r["startKey"], r["endKey"]) for r in ranges] == [
            ("MATERIALIZED", DAYS[0], DAYS[-1])
        ], asset
    for day in DAYS:
        assert (data / "call_kpis_daily" / f"date={day}" / "part-0.parquet").exists()
