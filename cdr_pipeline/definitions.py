"""The one ``dg.Definitions`` of the project, built from the environment at load time."""

import dagster as dg
import pydantic

from cdr_pipeline.config import TUNING_ENV, ConfigError, Settings, load_settings, prefer_jemalloc
from cdr_pipeline.defs.assets import build_assets
from cdr_pipeline.defs.checks import CHECKS
from cdr_pipeline.defs.partitions import daily_partitions
from cdr_pipeline.defs.resources import CdrApiResource, CdrStorageResource
from cdr_pipeline.defs.schedules import build_schedules


def api_resource(settings: Settings) -> CdrApiResource:
    """Credentials come in as ``dg.EnvVar`` so their values never enter run config or the UI."""
    credentials = (
        {}
        if settings.uses_simulator
        else {
            "api_url": dg.EnvVar("CDR_API_URL"),
            "api_id": dg.EnvVar("CDR_API_ID"),
            "app_id": dg.EnvVar("CDR_APP_ID"),
        }
    )
    try:
        return CdrApiResource(**credentials, **settings.tuning)
    except pydantic.ValidationError as exc:
        # The resource's field bounds are the rule; say which variable broke it.
        env_name = {field: name for name, (field, _) in TUNING_ENV.items()}
        problems = [
            f"{env_name.get(str(err['loc'][0]), err['loc'][0])}="
            f"{settings.tuning.get(str(err['loc'][0]))!r}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("; ".join(problems)) from None


def build_definitions(settings: Settings) -> dg.Definitions:
    prefer_jemalloc()  # the code server and every run worker build the definitions
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
                data_dir=settings.data_dir, timezone=settings.timezone
            ),
        },
    )


defs = build_definitions(load_settings())
