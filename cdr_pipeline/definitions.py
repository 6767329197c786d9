"""The one ``dg.Definitions`` of the project, built from the environment at load time."""

import dagster as dg

from cdr_pipeline.config import Settings, load_settings
from cdr_pipeline.defs.assets import build_assets
from cdr_pipeline.defs.checks import CHECKS
from cdr_pipeline.defs.partitions import daily_partitions
from cdr_pipeline.defs.resources import CdrApiResource, CdrStorageResource
from cdr_pipeline.defs.schedules import build_schedules


def api_resource(settings: Settings) -> CdrApiResource:
    """Credentials come in as ``dg.EnvVar`` so their values never enter run config or the UI."""
    if settings.uses_simulator:
        return CdrApiResource(**settings.tuning)
    return CdrApiResource(
        api_url=dg.EnvVar("CDR_API_URL"),
        api_id=dg.EnvVar("CDR_API_ID"),
        app_id=dg.EnvVar("CDR_APP_ID"),
        **settings.tuning,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions_def = daily_partitions(settings.start_date, settings.timezone)
    job, schedules = build_schedules(partitions_def, settings.late_days)
    return dg.Definitions(
        assets=build_assets(partitions_def),
        asset_checks=CHECKS,
        jobs=[job],
        schedules=schedules,
        resources={
            "cdr_api": api_resource(settings),
            "cdr_storage": CdrStorageResource(
                data_dir=str(settings.data_dir), timezone=settings.timezone
            ),
        },
    )


defs = build_definitions(load_settings())
