"""The resources every asset and check is given: the getCdr API (live, or the simulator when
``CDR_API_URL`` is unset), the data directory, and the analytics' settings."""

import dagster as dg

from cdr_pipeline.defs.partitions import SETTINGS
from cdr_pipeline.resources import analytics_resource, api_resource, storage_resource


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "cdr_api": api_resource(SETTINGS),
            "cdr_storage": storage_resource(SETTINGS),
            "cdr_analytics": analytics_resource(SETTINGS),
        }
    )
