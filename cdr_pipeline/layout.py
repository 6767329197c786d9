"""Where things are in the data directory: one key per thing, relative to its root.

Every key is made here, from a partition key checked to be a real date, so nothing a run is
given (a partition key, a journal read back from disk) can name a path outside the data
directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

# The default data directories: the demo's and a real API's never mix (each also records its
# source in SOURCE_KEY and refuses another's calls).
LIVE_DATA_DIR = "data/live"
DEMO_DATA_DIR = "data/demo"
DEMO_SHARED_DATA_DIR = "data/demo-shared"  # the demo's shared zone, with CDR_PSEUDONYM_KEY
PART_NAME = "part-0.parquet"
MANIFEST = "manifest.json"
RAW_ROOT = "raw/cdr"
STATE_ROOT = "_state"
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATASET_RE = re.compile(r"[a-z][a-z0-9_]*")


class StorageError(RuntimeError):
    """The data directory does not hold what a day needs, or holds it wrongly."""


class NoSuchDay(StorageError):
    """A date its zone skipped (Samoa's 2011-12-30): no local midnight to midnight."""


def parse_day(text: str) -> date:
    """A strict YYYY-MM-DD date (``date.fromisoformat`` alone also takes 20250301 and
    2025-W10-1); raises ``ValueError`` otherwise."""
    if not isinstance(text, str) or not _DAY_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a date in YYYY-MM-DD form")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a real date") from None


def check_day(day: str) -> str:
    """A partition key must be a real calendar date; anything else could escape the folder."""
    try:
        parse_day(day)
    except ValueError as exc:
        raise StorageError(f"partition key {exc}") from None
    return day


def is_day(name: str) -> bool:
    """Whether a folder name ``date=...`` names a day (without raising)."""
    try:
        check_day(name.removeprefix("date="))
    except StorageError:
        return False
    return name.startswith("date=")


def day_key(dataset: str, day: str) -> str:
    if not isinstance(dataset, str) or not _DATASET_RE.fullmatch(dataset):
        raise StorageError(f"unknown dataset {dataset!r}")
    return f"{dataset}/date={check_day(day)}"


def part_key(dataset: str, day: str) -> str:
    return f"{day_key(dataset, day)}/{PART_NAME}"


def raw_day_key(day: str) -> str:
    return f"{RAW_ROOT}/date={check_day(day)}"


def manifest_key(day: str) -> str:
    return f"{raw_day_key(day)}/{MANIFEST}"


def state_key(kind: str, day: str) -> str:
    """A record about a day (``validation``, ``journal``, ``lease``)."""
    return f"{STATE_ROOT}/{kind}/date={check_day(day)}.json"


SPILL_KEY = f"{STATE_ROOT}/spill"
ERASURES_KEY = "erasures/part-0.parquet"  # the audit of erasures (cdr_pipeline/erasure.py)
SOURCE_KEY = f"{STATE_ROOT}/source.json"  # where the data directory's calls come from
REPORT_KEY = "report.html"  # where `cdr-pipeline report` writes by default (a local folder's)


@dataclass(frozen=True)
class Day:
    """A partition: its key and its bounds as epoch seconds, ``[start, end)``."""

    key: str
    start: int
    end: int

    @classmethod
    def from_datetimes(cls, key: str, start: datetime, end: datetime) -> Day:
        return cls(check_day(key), int(start.timestamp()), int(end.timestamp()))

    @classmethod
    def from_key(cls, key: str, tz: ZoneInfo) -> Day:
        """Local midnight to local midnight: 23 or 25 hours on daylight-saving days."""
        d = date.fromisoformat(check_day(key))
        start = datetime(d.year, d.month, d.day, tzinfo=tz)
        nxt = d.fromordinal(d.toordinal() + 1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
        day = cls.from_datetimes(key, start, end)
        if day.end <= day.start:
            raise NoSuchDay(
                f"{key} never existed in {tz.key} (the zone skipped that date): there is "
                "nothing to fetch or publish for it"
            )
        return day


def day_exists(key: str, tz: ZoneInfo) -> bool:
    try:
        Day.from_key(key, tz)
    except NoSuchDay:
        return False
    return True
