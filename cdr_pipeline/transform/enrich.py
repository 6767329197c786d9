"""Columns ``cdr`` derives from each call's own fields: the local start time, and the number
intelligence of ``src`` and ``dst`` (transform/phones.py). Added slice by slice on the rows'
way to the file, so a large day's memory stays what it was."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from cdr_pipeline.transform.phones import NumberBook

ENRICHED_FIELDS = [
    pa.field("start_local", pa.timestamp("ms")),
    pa.field("src_e164", pa.string()),
    pa.field("src_country", pa.string()),
    pa.field("dst_e164", pa.string()),
    pa.field("dst_country", pa.string()),
    pa.field("dst_type", pa.string(), nullable=False),
]


class Enricher:
    """Adds :data:`ENRICHED_FIELDS` to slices of ``cdr`` rows; one per day (its number book
    remembers the prefixes it has resolved)."""

    def __init__(self, tz: ZoneInfo, region: str, *, grouping: bool = True) -> None:
        self._local = pa.timestamp("ms", tz=tz.key)
        self.book = NumberBook(region, grouping=grouping)

    def __call__(self, part: pa.Table) -> pa.Table:
        start = part.column("start_src_call_time")
        local = (
            pc.local_timestamp(start.cast(self._local))
            if len(part)
            else pa.array([], pa.timestamp("ms"))
        )
        src_e164, src_country, _ = self.book.resolve(part.column("src"))
        dst_e164, dst_country, dst_type = self.book.resolve(part.column("dst"))
        columns = [local, src_e164, src_country, dst_e164, dst_country, dst_type]
        for f, column in zip(ENRICHED_FIELDS, columns, strict=True):
            part = part.append_column(f, column.cast(f.type) if column.type != f.type else column)
        return part
