"""The telecom analytics of a day, exactly as the data contract's "Analytics datasets" defines
them: where calls go (``call_destinations_daily``), the load of each clock hour
(``call_load_hourly``), billing reconciliation (columns of ``call_kpis_daily``) and the callers
whose traffic looks like abuse (``caller_risk_daily``).

The day's rows pass by slice by slice (:meth:`DayAnalytics.add`) and are kept in a narrow local
Parquet file; :meth:`DayAnalytics.finish` then asks DuckDB, under a memory limit and with a
spill folder, so the per-caller and per-event work runs out of core: memory stays flat however
many callers and numbers a day holds. The SQL below is the contract's wording, clause by clause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq

from cdr_pipeline.dictionary import described
from cdr_pipeline.settings import AnalyticsSettings

DUCKDB_MEMORY = "100MB"  # DuckDB's own limit; it spills to the day's scratch folder past it
INCREMENTS = (60, 30, 6)  # billing increments tried, largest first; 1 when none fits
INCREMENT_SHARE = 0.99  # of billed calls that must be multiples of an increment
MATCH_WARN = 0.99  # billing_match_rate below this warns
WORST_CALLS = 10
NIGHT_HOURS = (0, 5)  # local hours, both included
FLAGS = ("burst", "fan_out", "premium_night", "repeat_target", "short_ring_unanswered")

# the columns of ``cdr`` the analytics read
COLUMNS = [
    "call_id",
    "src",
    "dst",
    "src_country",
    "dst_country",
    "dst_type",
    "start_src_call_time",
    "start_dst_ring_time",
    "dst_accept_time",
    "end_call_time",
    "call_end_status",
    "duration_s",
    "start_local",
]

DESTINATIONS_SCHEMA = described(
    pa.schema(
        [
            pa.field("dst_country", pa.string()),
            pa.field("dst_type", pa.string(), nullable=False),
            pa.field("calls", pa.int64(), nullable=False),
            pa.field("connected_calls", pa.int64(), nullable=False),
            pa.field("billed_seconds", pa.int64(), nullable=False),
            pa.field("connect_rate", pa.float64()),
            pa.field("acd_s", pa.float64()),
            pa.field("share_of_calls", pa.float64()),
            pa.field("low_sample", pa.bool_(), nullable=False),
        ]
    ),
    "call_destinations_daily",
)
HOURLY_SCHEMA = described(
    pa.schema(
        [
            pa.field("hour_start", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("local_hour", pa.int8(), nullable=False),
            pa.field("attempts", pa.int64(), nullable=False),
            pa.field("connected_calls", pa.int64(), nullable=False),
            pa.field("talk_seconds", pa.int64(), nullable=False),
            pa.field("erlangs", pa.float64(), nullable=False),
            pa.field("peak_concurrent_calls", pa.int64(), nullable=False),
            pa.field("busy_hour", pa.bool_(), nullable=False),
        ]
    ),
    "call_load_hourly",
)
RISK_SCHEMA = described(
    pa.schema(
        [
            pa.field("src", pa.string(), nullable=False),
            pa.field("src_country", pa.string()),
            pa.field("calls", pa.int64(), nullable=False),
            pa.field("distinct_destinations", pa.int64(), nullable=False),
            pa.field("unanswered_share", pa.float64(), nullable=False),
            pa.field("short_call_share", pa.float64(), nullable=False),
            pa.field("international_share", pa.float64(), nullable=False),
            pa.field("premium_rate_calls", pa.int64(), nullable=False),
            pa.field("night_calls", pa.int64(), nullable=False),
            pa.field("max_calls_10min", pa.int64(), nullable=False),
            pa.field("max_calls_one_number", pa.int64(), nullable=False),
            pa.field("short_ring_unanswered_calls", pa.int64(), nullable=False),
            pa.field("flags", pa.list_(pa.string()), nullable=False),
        ]
    ),
    "caller_risk_daily",
)

_CALLS = """
    select *, epoch_ms(start_src_call_time) as s, epoch_ms(dst_accept_time) as a,
           epoch_ms(end_call_time) as e, epoch_ms(start_dst_ring_time) as r,
           hour(start_local) as lh
    from read_parquet($path)
"""

_DESTINATIONS = f"""
with c as ({_CALLS}), total as (select count(*) as n from c)
select dst_country, dst_type,
       count(*) as calls,
       count(*) filter (where call_end_status = 1) as connected_calls,
       coalesce(sum(duration_s), 0)::bigint as billed_seconds,
       count(*) filter (where call_end_status = 1) / count(*) as connect_rate,
       case when count(*) filter (where call_end_status = 1) > 0
            then sum(duration_s) filter (where call_end_status = 1)
                 / count(*) filter (where call_end_status = 1) end as acd_s,
       count(*) / any_value(total.n) as share_of_calls,
       count(*) < $low as low_sample
from c, total
group by dst_country, dst_type
order by calls desc, dst_country nulls last, dst_type
"""

# Talk intervals [accept, end) of the day's calls, cut at the day's end (talk after it is not
# counted); an interval that is empty after the cut is no interval.
_INTERVALS = f"""
    select a, least(e, $day_end) as e from ({_CALLS})
    where a is not null and e is not null and least(e, $day_end) > a
"""

_HOURLY = f"""
with c as ({_CALLS}),
iv as ({_INTERVALS}),
h as (select * from hours),
starts as (
    select h.i, count(c.s) as attempts, count(c.s) filter (where c.call_end_status = 1) as connected
    from h left join c on c.s >= h.hs and c.s < h.he group by h.i
),
talk as (
    -- (least and greatest skip nulls: an hour without talk must not count as all talk)
    select h.i, coalesce(sum(case when iv.a is not null
                                  then least(iv.e, h.he) - greatest(iv.a, h.hs) end), 0) as talk_ms
    from h left join iv on iv.a < h.he and iv.e > h.hs group by h.i
),
events as (
    select t, d, sum(d) over (order by t, d rows unbounded preceding) as level
    from (select a as t, 1 as d from iv union all select e as t, -1 as d from iv)
),
peak_in as (
    select h.i, max(events.level) as peak
    from h join events on events.d = 1 and events.t >= h.hs and events.t < h.he group by h.i
),
open_at_start as (
    select h.i, (select count(*) from iv where iv.a <= h.hs and iv.e > h.hs) as n from h
)
select h.hs as hour_start, h.local_hour, starts.attempts, starts.connected as connected_calls,
       (talk.talk_ms // 1000)::bigint as talk_seconds,
       greatest(coalesce(peak_in.peak, 0), open_at_start.n) as peak_concurrent_calls
from h join starts using (i) join talk using (i) join open_at_start using (i)
left join peak_in using (i)
order by h.i
"""

# Per caller, in stages that spill (hash aggregates, no count distinct); the 10-minute window,
# which needs a sort per caller, runs only over the calls of callers who may be flagged: a
# window over every caller of a 1M-call day ran out of DuckDB's memory limit on 2 threads.
_RISK = f"""
with c as ({_CALLS} where src is not null),
pairs as (select src, dst, count(*) as n from c group by src, dst),
numbers as (
    select src, count(*) filter (where dst is not null) as distinct_destinations,
           coalesce(max(n) filter (where dst is not null), 0) as max_calls_one_number
    from pairs group by src
),
per as (
    select src, min(src_country) as src_country, count(*) as calls,
           count(*) filter (where a is null) / count(*) as unanswered_share,
           count(*) filter (where call_end_status = 1 and duration_s < 10) / count(*)
               as short_call_share,
           count(*) filter (where dst_country is not null and src_country is not null
                            and dst_country <> src_country) / count(*) as international_share,
           count(*) filter (where dst_type = 'premium_rate') as premium_rate_calls,
           count(*) filter (where lh between {NIGHT_HOURS[0]} and {NIGHT_HOURS[1]})
               as night_calls,
           count(*) filter (where dst_type = 'premium_rate'
                            and lh between {NIGHT_HOURS[0]} and {NIGHT_HOURS[1]})
               as premium_night_calls,
           count(*) filter (where r is not null and a is null and e is not null
                            and e - r <= $short_ring_ms) as short_ring_unanswered_calls
    from c group by src
),
candidates as (
    select * from per join numbers using (src)
    where calls >= $burst or distinct_destinations >= $fan_out
       or max_calls_one_number >= $repeat or short_ring_unanswered_calls >= $short_ring
       or premium_night_calls >= $premium_night
),
burst as (
    select src, max(n) as max_calls_10min from (
        select src, count(*) over (
            partition by src order by s range between current row and 599999 following
        ) as n from c semi join candidates using (src)
    ) group by src
),
flagged as (
    select candidates.*, burst.max_calls_10min,
           list_concat(  -- in the order of their names: the list comes out sorted
               case when burst.max_calls_10min >= $burst then ['burst'] else [] end,
               case when distinct_destinations >= $fan_out then ['fan_out'] else [] end,
               case when premium_night_calls >= $premium_night
                    then ['premium_night'] else [] end,
               case when max_calls_one_number >= $repeat then ['repeat_target'] else [] end,
               case when short_ring_unanswered_calls >= $short_ring
                    then ['short_ring_unanswered'] else [] end
           )::varchar[] as flags
    from candidates join burst using (src)
)
select src, src_country, calls, distinct_destinations, unanswered_share, short_call_share,
       international_share, premium_rate_calls, night_calls, max_calls_10min,
       max_calls_one_number, short_ring_unanswered_calls, flags
from flagged where len(flags) > 0
order by len(flags) desc, calls desc, src
"""

# Connected calls with both times: what was billed against the talk rounded up to $inc.
_RECONCILE = """
    select call_id, duration_s as billed,
           ceil((epoch_ms(end_call_time) - epoch_ms(dst_accept_time)) / (1000.0 * $inc))::bigint
               * $inc as expected
    from {source}
    where call_end_status = 1 and dst_accept_time is not null and end_call_time is not null
"""

# The billed seconds of the calls reconciled, counted by the increments they are multiples of.
_MULTIPLES = """
select count(*) filter (where duration_s > 0) as billed,
       count(*) filter (where duration_s > 0 and duration_s % 60 = 0) as m60,
       count(*) filter (where duration_s > 0 and duration_s % 30 = 0) as m30,
       count(*) filter (where duration_s > 0 and duration_s % 6 = 0) as m6
from read_parquet($path)
where call_end_status = 1 and dst_accept_time is not null and end_call_time is not null
"""

_BILLING_COUNTS = """
select count(*) filter (where duration_s > 0 and dst_accept_time is null)
           as billed_without_answer,
       count(*) filter (where dst_accept_time is not null and end_call_time is not null
                        and end_call_time > dst_accept_time and duration_s = 0)
           as answered_without_billing
from read_parquet($path)
"""


@dataclass
class Analytics:
    """A day's analytics datasets and its billing figures."""

    destinations: pa.Table
    hourly: pa.Table
    risk: pa.Table
    billing: dict[str, Any] = field(default_factory=dict)


def _connect(scratch: Path):
    import duckdb

    con = duckdb.connect()
    con.execute(f"set memory_limit = '{DUCKDB_MEMORY}'")
    con.execute("set threads = 2")
    con.execute("set preserve_insertion_order = false")
    con.execute(f"set temp_directory = '{scratch}'")
    return con


class DayAnalytics:
    """The analytics of one day, from its ``cdr`` rows in slices."""

    def __init__(
        self, scratch: Path, day_start: int, day_end: int, tz: ZoneInfo, settings: AnalyticsSettings
    ) -> None:
        self.scratch, self.day_start, self.day_end = scratch, day_start, day_end
        self.tz, self.settings = tz, settings
        self.path = scratch / "analytics-rows.parquet"
        self._writer: pq.ParquetWriter | None = None

    def add(self, part: pa.Table) -> None:
        rows = part.select(COLUMNS)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, rows.schema, compression="lz4")
        self._writer.write_table(rows)

    def finish(self, schema: pa.Schema) -> Analytics:
        """Every analytics dataset of the day (``schema``: ``cdr``'s, for a day with no rows)."""
        if self._writer is None:
            pq.write_table(schema.empty_table().select(COLUMNS), self.path)
        else:
            self._writer.close()
        con = _connect(self.scratch)
        try:
            return Analytics(
                self._destinations(con), self._hourly(con), self._risk(con), self._billing(con)
            )
        finally:
            con.close()
            self.path.unlink(missing_ok=True)

    def _query(self, con, sql: str, **params: Any) -> pa.Table:
        return con.sql(sql, params={"path": str(self.path), **params}).to_arrow_table()

    def _destinations(self, con) -> pa.Table:
        got = self._query(con, _DESTINATIONS, low=self.settings.low_sample_calls)
        return got.cast(DESTINATIONS_SCHEMA)

    def _hourly(self, con) -> pa.Table:
        starts = list(range(self.day_start, self.day_end, 3600))
        con.register(
            "hours",
            pa.table(
                {
                    "i": list(range(len(starts))),
                    "hs": [s * 1000 for s in starts],
                    "he": [min(s + 3600, self.day_end) * 1000 for s in starts],
                    "local_hour": [_local_hour(s, self.tz) for s in starts],
                }
            ),
        )
        got = self._query(con, _HOURLY, day_end=self.day_end * 1000)
        con.unregister("hours")
        talk = got.column("talk_seconds").to_pylist()
        # the hour with the most talk, the earliest on ties; none on a day without talk
        busiest = talk.index(max(talk)) if any(talk) else None
        return pa.table(
            {
                "hour_start": pa.array([v * 1000 for v in starts], pa.timestamp("ms", tz="UTC")),
                "local_hour": got.column("local_hour"),
                "attempts": got.column("attempts"),
                "connected_calls": got.column("connected_calls"),
                "talk_seconds": got.column("talk_seconds"),
                "erlangs": [t / 3600 for t in talk],
                "peak_concurrent_calls": got.column("peak_concurrent_calls"),
                "busy_hour": [i == busiest for i in range(len(talk))],
            }
        ).cast(HOURLY_SCHEMA)

    def _risk(self, con) -> pa.Table:
        s = self.settings
        got = self._query(
            con,
            _RISK,
            short_ring_ms=s.short_ring_s * 1000,
            burst=s.burst_calls_10min,
            fan_out=s.fan_out_destinations,
            repeat=s.repeat_target_calls,
            short_ring=s.short_ring_calls,
            premium_night=s.premium_night_calls,
        )
        return got.cast(RISK_SCHEMA)

    def _billing(self, con) -> dict[str, Any]:
        m = self._query(con, _MULTIPLES).to_pylist()[0]
        inc = next(
            (
                i
                for i, n in zip(INCREMENTS, (m["m60"], m["m30"], m["m6"]), strict=True)
                if m["billed"] and n >= INCREMENT_SHARE * m["billed"]
            ),
            1,
        )
        rows = con.sql(
            f"select count(*) as n, count(*) filter (where billed = expected) as matched "
            f"from ({_RECONCILE.format(source='read_parquet($path)')})",
            params={"path": str(self.path), "inc": inc},
        ).fetchall()[0]
        counts = self._query(con, _BILLING_COUNTS).to_pylist()[0]
        return {
            "billing_increment_s": inc,
            "billing_match_rate": rows[1] / rows[0] if rows[0] else None,
            **counts,
        }


def worst_billed(cdr: pa.Table, increment: int, limit: int = WORST_CALLS) -> list[dict[str, Any]]:
    """The calls whose bill is furthest from their talk rounded up to ``increment`` (for the
    billing check: it lists them by call_id)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("day", cdr)
        return (
            con.sql(
                f"select call_id, billed, expected, abs(billed - expected) as off "
                f"from ({_RECONCILE.format(source='day')}) where billed <> expected "
                "order by off desc, call_id limit $limit",
                params={"inc": increment, "limit": limit},
            )
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()


def _local_hour(epoch_s: int, tz: ZoneInfo) -> int:
    return datetime.fromtimestamp(epoch_s, tz).hour
