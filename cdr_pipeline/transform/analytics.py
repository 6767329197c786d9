"""The telecom analytics of a day, exactly as the data contract's "Analytics datasets" defines
them: where calls go (``call_destinations_daily``), the load of each clock hour
(``call_load_hourly``), billing reconciliation (columns of ``call_kpis_daily``) and the callers
whose traffic looks like abuse (``caller_risk_daily``).

The day's rows pass slice by slice (:meth:`DayAnalytics.add`). The hourly load and the
billing counts are gathered as they pass (:mod:`cdr_pipeline.transform.sums`). The rest
DuckDB reads from the day's ``cdr`` file once it is written, when it is on a local disk, else
from a narrow local Parquet file of the rows kept as they pass; :meth:`DayAnalytics.finish`
asks it under a memory limit and with a spill folder, so the per-caller work runs out of
core: memory stays flat however many callers and numbers a day holds. The SQL below is the
contract's wording, clause by clause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdr_pipeline.dictionary import described
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.transform.sums import Billing, Decoded, Load

# DuckDB's own limit; it spills to the day's scratch folder past it. A query that cannot fit
# (an operator that does not spill, on an odd day) is asked again once under the second.
DUCKDB_MEMORY = ("64MB", "512MB")
DUCKDB_THREADS = 2
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

# The scratch rows' columns whose values repeat: only they get dictionaries (hashing the ids
# and numbers into a dictionary per row group cost CPU for nothing: docs/performance.md).
_REPEATING = ["src_country", "dst_country", "dst_type", "call_end_status"]

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

# The day's calls as every query sees them: the columns of COLUMNS, and the times as epoch
# milliseconds (s start, a answer, e end, r callee's ring) and the local start hour (lh).
_CALLS_VIEW = """
create or replace view calls as
    select {columns}, epoch_ms(start_src_call_time) as s, epoch_ms(dst_accept_time) as a,
           epoch_ms(end_call_time) as e, epoch_ms(start_dst_ring_time) as r,
           hour(start_local) as lh
    from read_parquet('{path}') {where}
"""
_CALLS = "select * from calls"

DESTINATIONS_SQL = f"""
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

# Per caller, in stages that spill (hash aggregates, no count distinct). Only callers whose
# own counts could reach a flag go on to the costly stages: their figures, the (caller,
# number) pairs, a hash aggregate as large as the day, and the 10-minute window, a sort per
# caller (over every caller of a 1M-call day it ran out of DuckDB's memory limit on 2
# threads). A caller with fewer calls than every call-count threshold can be flagged neither
# for burst, fan_out nor repeat_target (each counts some of its calls), so the first stage
# counts only what could flag a caller alone: three counts of every caller, the other six only
# of those past it (`more`; what that saves: docs/performance.md).
RISK_ORDER = "len(flags) desc, calls desc, src"  # the most flags first
RISK_SQL = f"""
with c as not materialized ({_CALLS} where src is not null),
few as (
    select src, count(*) as calls,
           count(*) filter (where dst_type = 'premium_rate'
                            and lh between {NIGHT_HOURS[0]} and {NIGHT_HOURS[1]})
               as premium_night_calls,
           count(*) filter (where r is not null and a is null and e is not null
                            and e - r <= $short_ring_ms) as short_ring_unanswered_calls
    from c group by src
),
mc as (
    select * from c semi join (
        select src from few
        where calls >= least($burst, $fan_out, $repeat)
           or short_ring_unanswered_calls >= $short_ring or premium_night_calls >= $premium_night
    ) using (src)
),
more as (
    select src, min(src_country) as src_country,
           count(*) filter (where a is null) / count(*) as unanswered_share,
           count(*) filter (where call_end_status = 1 and duration_s < 10) / count(*)
               as short_call_share,
           count(*) filter (where dst_country is not null and src_country is not null
                            and dst_country <> src_country) / count(*) as international_share,
           count(*) filter (where dst_type = 'premium_rate') as premium_rate_calls,
           count(*) filter (where lh between {NIGHT_HOURS[0]} and {NIGHT_HOURS[1]})
               as night_calls
    from mc group by src
),
maybe as (select * from few join more using (src)),
pairs as (select src, dst, count(*) as n from mc group by src, dst),
numbers as (
    select src, count(*) filter (where dst is not null) as distinct_destinations,
           coalesce(max(n) filter (where dst is not null), 0) as max_calls_one_number
    from pairs group by src
),
candidates as (
    select * from maybe join numbers using (src)
    where calls >= $burst or distinct_destinations >= $fan_out
       or max_calls_one_number >= $repeat or short_ring_unanswered_calls >= $short_ring
       or premium_night_calls >= $premium_night
),
burst as (
    select src, max(n) as max_calls_10min from (
        select src, count(*) over (
            partition by src order by s range between current row and 599999 following
        ) as n from mc semi join candidates using (src)
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
order by {RISK_ORDER}
"""

# Connected calls with both times: what was billed against the talk rounded up to $inc.
_RECONCILE = """
    select call_id, duration_s as billed,
           ceil((epoch_ms(end_call_time) - epoch_ms(dst_accept_time)) / (1000.0 * $inc))::bigint
               * $inc as expected
    from {source}
    where call_end_status = 1 and dst_accept_time is not null and end_call_time is not null
"""


def _still(con, column: str, values: list[str]) -> set[str]:
    """Which of ``values`` the day's calls still hold in ``column``."""
    if not values:
        return set()
    found = con.sql(
        f"select distinct {column} as v from calls where {column} in (select unnest($values))",
        params={"values": values},
    )
    return set(found.to_arrow_table().column("v").to_pylist())


@dataclass
class Analytics:
    """A day's analytics: the hourly load, the query datasets by name, the billing figures;
    after an :class:`Amend`, which of the erased rows' callers and callees the day still
    holds (``still``, by column)."""

    hourly: pa.Table
    queried: dict[str, pa.Table] = field(default_factory=dict)
    billing: dict[str, Any] = field(default_factory=dict)
    still: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    """A query dataset as the analytics ask it: its SQL over ``calls``, the parameters, its
    schema; ``per_caller``: the ORDER BY of its rows when each is one caller's (``src``),
    made from that caller's calls alone."""

    sql: str
    params: dict[str, Any]
    schema: pa.Schema
    per_caller: str | None = None


@dataclass(frozen=True)
class Amend:
    """A day re-built after an erasure, which only took rows out: its per-caller datasets as
    published (``published``, by name), whose rows stay but those of the callers that lost
    calls (``lost["src"]``), asked again; and the erased rows' callers and callees (``lost``,
    by column), whom :attr:`Analytics.still` says the day still holds."""

    published: dict[str, pa.Table]
    lost: dict[str, list[str]]


def risk_params(s: AnalyticsSettings) -> dict[str, Any]:
    """:data:`RISK_SQL`'s thresholds."""
    return {
        "short_ring_ms": s.short_ring_s * 1000,
        "burst": s.burst_calls_10min,
        "fan_out": s.fan_out_destinations,
        "repeat": s.repeat_target_calls,
        "short_ring": s.short_ring_calls,
        "premium_night": s.premium_night_calls,
    }


def _connect(scratch: Path):
    import duckdb

    con = duckdb.connect()
    con.execute(f"set memory_limit = '{DUCKDB_MEMORY[0]}'")
    con.execute(f"set threads = {DUCKDB_THREADS}")
    con.execute("set preserve_insertion_order = false")
    con.execute(f"set temp_directory = '{scratch}'")
    return con


class DayAnalytics:
    """The analytics of one day, from its ``cdr`` rows in slices."""

    def __init__(
        self,
        scratch: Path,
        day_start: int,
        day_end: int,
        tz: ZoneInfo,
        settings: AnalyticsSettings,
        *,
        keep_rows: bool = True,
    ) -> None:
        """``keep_rows`` False: :meth:`finish` will be given the day's ``cdr`` file, so the
        rows are not kept a second time (writing them cost more than DuckDB reading the
        zstd file: docs/performance.md)."""
        self.scratch, self.day_start, self.day_end = scratch, day_start, day_end
        self.tz, self.settings, self.keep_rows = tz, settings, keep_rows
        self.path = scratch / "analytics-rows.parquet"
        self._writer: pq.ParquetWriter | None = None
        self.load = Load(day_start, day_end)
        self.billing = Billing()
        self.memory_retries = 0  # queries asked again under the larger limit

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of ``cdr`` :meth:`add` reads."""
        wanted = (*Load.COLUMNS, *Billing.COLUMNS, *(COLUMNS if self.keep_rows else ()))
        return tuple(dict.fromkeys(wanted))

    def add(self, part: pa.Table) -> None:
        decoded = Decoded(part)
        self.load.add(decoded)
        self.billing.add(decoded)
        if not self.keep_rows:
            return
        rows = part.select(COLUMNS)
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, rows.schema, compression="lz4", use_dictionary=_REPEATING
            )
        self._writer.write_table(rows)

    def finish(
        self,
        schema: pa.Schema,
        queries: dict[str, Query],
        cdr_file: Path | None = None,
        amend: Amend | None = None,
    ) -> Analytics:
        """The hourly load, each query dataset and the billing figures of the day
        (``schema``: ``cdr``'s, for a day with no rows), from ``cdr_file`` (the day's rows,
        all of them added) or the rows kept; with ``amend``, its per-caller datasets asked
        only of the callers that lost calls."""
        if cdr_file is None and not self.keep_rows:
            raise ValueError("the rows were not kept: finish needs the day's cdr file")
        if cdr_file is not None:
            path = cdr_file
        elif self._writer is None:
            pq.write_table(schema.empty_table().select(COLUMNS), self.path)
            path = self.path
        else:
            self._writer.close()
            path = self.path
        con = _connect(self.scratch)
        try:
            view = partial(
                _CALLS_VIEW.format, columns=", ".join(COLUMNS), path=str(path).replace("'", "''")
            )
            con.execute(view(where=""))
            amended = {
                n for n, q in queries.items() if amend and q.per_caller and n in amend.published
            }
            queried = {
                name: self._query(con, q.sql, **q.params).cast(q.schema)
                for name, q in queries.items()
                if name not in amended
            }
            found = Analytics(self.load.table(self.tz), queried, self.billing.figures())
            if amend is not None:
                found.still = {c: _still(con, c, lost) for c, lost in amend.lost.items()}
                callers = pa.array(amend.lost.get("src", []), pa.string())
                con.register("lost_callers", pa.table({"src": callers}))
                con.execute(view(where="where src in (select src from lost_callers)"))
                for name in amended:
                    found.queried[name] = self._amended(
                        con, queries[name], amend.published[name], callers
                    )
            return found
        finally:
            con.close()
            self.path.unlink(missing_ok=True)

    def _amended(self, con, query: Query, published: pa.Table, callers: pa.Array) -> pa.Table:
        """``query``'s rows of ``callers`` (``calls`` holds theirs alone) in place of theirs
        in ``published``, in the query's order."""
        fresh = self._query(con, query.sql, **query.params).cast(query.schema)
        kept = published.filter(pc.invert(pc.is_in(published.column("src"), value_set=callers)))
        con.register("amended", pa.concat_tables([kept.cast(query.schema), fresh]))
        ordered = con.sql(f"select * from amended order by {query.per_caller}")
        return ordered.to_arrow_table().cast(query.schema)

    def _query(self, con, sql: str, **params: Any) -> pa.Table:
        import duckdb

        try:
            return con.sql(sql, params=params).to_arrow_table()
        except duckdb.OutOfMemoryException:
            self.memory_retries += 1
            con.execute(f"set memory_limit = '{DUCKDB_MEMORY[1]}'")
            return con.sql(sql, params=params).to_arrow_table()


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
