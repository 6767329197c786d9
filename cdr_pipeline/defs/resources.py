"""The resources every asset and check is given: the getCdr API (live, or the simulator when
``CDR_API_URL`` is unset), the data directory, and the analytics' settings, with their fields
from the settings read when the definitions are built (a bad setting fails the load with a
message naming every bad variable)."""

import dagster as dg

from cdr_pipeline.resources import analytics_resource, api_resource, storage_resource
from cdr_pipeline.settings import load_settings


@dg.definitions
def resources() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions(
        resources={
            "cdr_api": api_resource(settings),
            "cdr_storage": storage_resource(settings),
            "cdr_analytics": analytics_resource(settings),
        }
    )
