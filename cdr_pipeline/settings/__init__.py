"""Every setting, declared once: name, type, default, bounds, variable and meaning.

A setting is a pydantic field made with :func:`knob` (``fields.py``), which records its
environment variable. Seven models hold them (``models.py``; the client's and the simulator's
in ``client.py``), among them
:class:`StorageSettings` (where data goes, the day boundary; the deployment's, never a run's),
:class:`ProjectSettings` (the partitions, the schedules, the endpoint), :class:`ClientSettings`
(how the client fetches; fields of the API resource too) and :class:`SimulatorSettings`.
:func:`load_settings` reads them from the environment and reports every bad variable at once,
in plain words; the resources, the CLI, ``.env.example`` and the operators' guide's table are made
from these declarations (``cdr_pipeline_tests/test_settings.py`` keeps the last two equal).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic

from cdr_pipeline.layout import DEMO_DATA_DIR, DEMO_SHARED_DATA_DIR, parse_day
from cdr_pipeline.settings.fields import (
    InvalidEndpointError,
    check_endpoint,
    check_link,
    is_link_local,
    is_loopback,
    knob,
)
from cdr_pipeline.settings.models import (
    DEMO_DAYS,
    MODELS,
    NO_API,
    AnalyticsSettings,
    ClientSettings,
    OperationsSettings,
    ProjectSettings,
    PublishSettings,
    SimulatorSettings,
    StorageSettings,
)

__all__ = [
    "DEMO_DAYS",
    "DEMO_HOME",
    "LIVE_HOME",
    "MODELS",
    "NO_API",
    "AnalyticsSettings",
    "ClientSettings",
    "ConfigError",
    "InvalidEndpointError",
    "Knob",
    "OperationsSettings",
    "ProjectSettings",
    "PublishSettings",
    "Settings",
    "SimulatorSettings",
    "StorageSettings",
    "apply_dotenv",
    "check_endpoint",
    "check_link",
    "dagster_home",
    "env_example",
    "expanded_in_dotenv",
    "is_link_local",
    "is_loopback",
    "knob",
    "knobs",
    "load_settings",
    "markdown_table",
]

LIVE_HOME = ".dagster_home/live"
DEMO_HOME = ".dagster_home/demo"


class ConfigError(ValueError):
    """One or more settings are missing or wrong; the message names each variable."""


@dataclass(frozen=True)
class Knob:
    """One setting as the operators' guide, ``.env.example`` and error messages show it."""

    model: type[pydantic.BaseModel]
    field: str
    env: str
    default: Any
    description: str
    secret: bool
    bounds: str
    limits: tuple[Any, Any]  # (lowest, highest) allowed, None where unbounded


def knobs() -> Iterator[Knob]:
    for model in MODELS:
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra
            if not isinstance(extra, dict) or "env" not in extra:
                continue
            bounds = [
                f"{op} {getattr(m, attr)}"
                for m in info.metadata
                for attr, op in (
                    ("ge", ">="),
                    ("gt", ">"),
                    ("le", "<="),
                    ("lt", "<"),
                    ("min_length", "length >="),
                )
                if getattr(m, attr, None) is not None
            ]
            low = [getattr(m, a) for m in info.metadata for a in ("ge", "gt") if hasattr(m, a)]
            high = [getattr(m, a) for m in info.metadata for a in ("le", "lt") if hasattr(m, a)]
            yield Knob(
                model,
                name,
                str(extra["env"]),
                info.default,
                info.description or "",
                bool(extra.get("secret")),
                ", ".join(bounds),
                (next(iter(low), None), next(iter(high), None)),
            )


@dataclass(frozen=True)
class Settings:
    """The loaded settings, one model of each kind."""

    storage: StorageSettings
    publish: PublishSettings
    project: ProjectSettings
    client: ClientSettings
    simulator: SimulatorSettings
    analytics: AnalyticsSettings
    operations: OperationsSettings

    def of(self, model: type[pydantic.BaseModel]) -> pydantic.BaseModel:
        models = (
            self.storage,
            self.publish,
            self.project,
            self.client,
            self.simulator,
            self.analytics,
            self.operations,
        )
        return next(m for m in models if type(m) is model)

    # The storage's and the project's settings are what most callers want: reach them directly.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        for model in (self.storage, self.project):
            if hasattr(model, name):
                return getattr(model, name)
        raise AttributeError(name)


# Plain words for pydantic's error types; ``{…}`` takes the error's context (its bound).
_PLAIN = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "literal_error": "must be one of {expected}",
    "string_too_short": "must be at least {min_length} characters (a shorter secret could not "
    "be told apart from ordinary text in logs)",
}


def _problems(model: type[pydantic.BaseModel], values: dict[str, str]) -> list[str]:
    env_of = {k.field: k for k in knobs() if k.model is model}
    try:
        model.model_validate(values)
    except pydantic.ValidationError as exc:
        out = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            message = str(err["msg"]).removeprefix("Value error, ")
            if field not in env_of:  # a rule over several settings: its message names them
                out.append(message)
                continue
            knob_ = env_of[field]
            if message.startswith(knob_.env):
                out.append(message)
                continue
            plain = _PLAIN.get(err["type"], message).format(**err.get("ctx", {}))
            shown = "***" if knob_.secret else repr(values.get(field))
            out.append(f"{knob_.env}={shown}: {plain}")
        return out
    return []


def apply_dotenv(folder: Path | None = None) -> set[str]:
    """Load ``.env`` from ``folder`` (the working directory) over the environment, as
    Dagster's own commands do, so every entry point sees the same settings; return the names
    it set."""
    from dotenv import dotenv_values  # comes with dagster

    path = (folder or Path.cwd()) / ".env"
    if not path.is_file():
        return set()
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    os.environ.update(values)
    return set(values)


def expanded_in_dotenv(folder: Path | None = None) -> list[str]:
    """The names whose ``.env`` value had a ``${...}`` expanded (as Dagster's loading does,
    quoted or not): a secret holding ``${`` is changed without a word."""
    from dotenv import dotenv_values

    path = (folder or Path.cwd()) / ".env"
    if not path.is_file():
        return []
    raw, done = dotenv_values(path, interpolate=False), dotenv_values(path)
    return sorted(k for k, v in raw.items() if v is not None and "${" in v and done.get(k) != v)


def _start_in_the_future(given: dict[type[pydantic.BaseModel], dict[str, str]]) -> list[str]:
    """A rule over two models: the first day must not be after today in the day's zone (each
    value's own form is the field rules' to report)."""
    zone = given[StorageSettings].get("timezone", StorageSettings.model_fields["timezone"].default)
    start = given[ProjectSettings].get(
        "start_date", ProjectSettings.model_fields["start_date"].default
    )
    try:
        today = datetime.now(ZoneInfo(zone)).date()
        first = parse_day(start)
    except (ValueError, ZoneInfoNotFoundError):
        return []
    if first <= today:
        return []
    return [f"CDR_START_DATE={first} is in the future (today is {today} in {zone})"]


def _clearing_without_key(given: dict[type[pydantic.BaseModel], dict[str, str]]) -> list[str]:
    """A rule over two models: clearing old days keeps their shared-zone form, made with the
    key."""
    days = given[OperationsSettings].get("clear_retention_days", "0")
    try:  # (the value's own form is the field rules' to report)
        if int(days) <= 0 or given[StorageSettings].get("pseudonym_key"):
            return []
    except ValueError:
        return []
    return [
        f"CDR_CLEAR_RETENTION_DAYS={days} needs CDR_PSEUDONYM_KEY (and CDR_SHARED_DATA_DIR): a "
        "cleared day keeps its calls with tokens in place of numbers"
    ]


def _unknown(env: Mapping[str, str]) -> list[str]:
    """A ``CDR_`` variable no setting declares is a typo until shown otherwise: said with the
    nearest declared name (a misspelt CDR_API_URL must not leave the demo's simulator on)."""
    declared = [k.env for k in knobs()]
    said = []
    for name in sorted(n for n in env if n.startswith("CDR_") and n not in declared):
        near = difflib.get_close_matches(name, declared, n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]}?" if near else " (`cdr-pipeline config` lists them)"
        said.append(f"unknown setting {name} (in the environment or .env){hint}")
    return said


def _is_demo(given: dict[type[pydantic.BaseModel], dict[str, str]]) -> bool:
    value = given[ProjectSettings].get("simulator", False)
    try:
        return pydantic.TypeAdapter(bool).validate_python(value)
    except pydantic.ValidationError:
        return False  # the setting's own rule says what is wrong


def _demo_defaults(given: dict[type[pydantic.BaseModel], dict[str, str]]) -> None:
    """The demo's own data directory, and a partition window of its last days (what the UI
    and the CLI both show), where the operator set neither."""
    if not _is_demo(given):
        return
    given[StorageSettings].setdefault("data_dir", DEMO_DATA_DIR)
    if "pseudonym_key" in given[StorageSettings]:
        given[StorageSettings].setdefault("shared_data_dir", DEMO_SHARED_DATA_DIR)
    if "start_date" not in given[ProjectSettings]:
        default_zone = StorageSettings.model_fields["timezone"].default
        zone = given[StorageSettings].get("timezone", default_zone)
        try:
            today = datetime.now(ZoneInfo(zone)).date()
        except (ValueError, ZoneInfoNotFoundError):
            return  # the zone's own rule says what is wrong
        given[ProjectSettings]["start_date"] = (today - timedelta(days=DEMO_DAYS)).isoformat()


def dagster_home(demo: bool) -> Path:
    """``DAGSTER_HOME`` when set, else the demo's or the live instance's own folder."""
    given = os.environ.get("DAGSTER_HOME")
    return Path(given) if given else Path(DEMO_HOME if demo else LIVE_HOME).resolve()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (the process environment by default); an empty
    variable counts as unset. Raises :class:`ConfigError` naming every bad variable."""
    env = os.environ if env is None else env
    given: dict[type[pydantic.BaseModel], dict[str, str]] = {m: {} for m in MODELS}
    for k in knobs():
        raw = (env.get(k.env) or "").strip()
        if raw:
            given[k.model][k.field] = raw
    _demo_defaults(given)
    problems = [p for model in MODELS for p in _problems(model, given[model])]
    problems += _unknown(env)
    problems += _start_in_the_future(given)
    problems += _clearing_without_key(given)
    if problems:
        if len(problems) == 1:
            raise ConfigError(problems[0])
        raise ConfigError(
            f"{len(problems)} settings are wrong:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return Settings(
        StorageSettings.model_validate(given[StorageSettings]),
        PublishSettings.model_validate(given[PublishSettings]),
        ProjectSettings.model_validate(given[ProjectSettings]),
        ClientSettings.model_validate(given[ClientSettings]),
        SimulatorSettings.model_validate(given[SimulatorSettings]),
        AnalyticsSettings.model_validate(given[AnalyticsSettings]),
        OperationsSettings.model_validate(given[OperationsSettings]),
    )


def env_example() -> str:
    """``.env.example``, made from the declarations."""
    lines = [
        "# Copy to .env (never commit it) or export these. Set CDR_API_URL, CDR_API_ID and",
        "# CDR_APP_ID, or CDR_SIMULATOR=true for the demo; the rest is optional. Made from",
        "# cdr_pipeline/settings/ by `cdr-pipeline config --env-example`.",
    ]
    model = None
    for k in knobs():
        if k.model is not model:
            model = k.model
            lines += ["", f"# {(model.__doc__ or '').strip().splitlines()[0]}"]
        default = "" if k.default is None or k.secret else k.default
        if isinstance(default, bool):
            default = str(default).lower()
        bounds = f" ({k.bounds})" if k.bounds else ""
        lines.append(f"# {k.description}{bounds}")
        lines.append(f"# {k.env}={default}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The settings table of docs/operators.md, made from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for k in knobs():
        shown = str(k.default).lower() if isinstance(k.default, bool) else k.default
        default = "—" if k.default is None else f"`{shown}`"
        meaning = k.description + (f" ({k.bounds})" if k.bounds else "")
        meaning += " (secret)" if k.secret else ""
        rows.append(f"| `{k.env}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
