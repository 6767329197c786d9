"""Parquet footers read and written back byte for byte, and files spliced from copied row
groups and new ones, read back by pyarrow and DuckDB."""

from __future__ import annotations

import io
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdr_pipeline import footer, publish
from cdr_pipeline.footer import (
    BINARY,
    BYTE,
    DOUBLE,
    FALSE,
    I16,
    I32,
    I64,
    LIST,
    MAP,
    STRUCT,
    TRUE,
    Pairs,
    Seq,
    Struct,
)
from cdr_pipeline.publish import Kept, Spliced, write_parquet
from cdr_pipeline.store import open_store

DAY = "2024-03-01"


def _table(n: int, seed: int = 7) -> pa.Table:
    """Rows like a day's: ids all different, repeating codes, nulls, times."""
    rng = random.Random(seed)
    return pa.table(
        {
            "call_id": pa.array([f"c{i:08d}" for i in range(n)]),
            "src": pa.array([f"1380000{rng.randrange(10_000):04d}" for _ in range(n)]),
            "status": pa.array([rng.randrange(5) for _ in range(n)], pa.int8()),
            "duration_s": pa.array(
                [rng.randrange(600) if rng.random() > 0.2 else None for _ in range(n)], pa.int64()
            ),
            "start": pa.array(
                [1_700_000_000_000 + 1000 * i for i in range(n)], pa.timestamp("ms", "UTC")
            ),
            "label": pa.array([rng.choice(["ok", "busy", None]) for _ in range(n)]),
        }
    )


def _footer_bytes(data: bytes) -> bytes:
    length = int.from_bytes(data[-8:-4], "little")
    return data[-8 - length : -8]


def _written(table: pa.Table, **kw: object) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kw)
    return sink.getvalue()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"row_group_size": 100},
        {"compression": "snappy", "use_dictionary": False},
        {"write_statistics": ["src"], "data_page_size": 512},
        {"write_page_index": True},
    ],
)
def test_every_footer_is_written_back_byte_for_byte(options):
    data = _written(_table(1000), **options)
    raw = _footer_bytes(data)
    assert footer.encode(footer.decode(raw)) == raw


def test_every_thrift_form_survives_a_round_trip():
    inner = Struct([[1, I32, -5], [2, TRUE, True], [3, FALSE, False]])
    tree = Struct(
        [
            [1, BYTE, 0xFE],
            [2, I16, -300],
            [17, I64, -(1 << 62)],  # a field id 16 past the last: written in the long form
            [18, I32, 2**31 - 1],
            [19, DOUBLE, b"\x00" * 7 + b"\x40"],
            [20, BINARY, b"x" * 300],
            [21, LIST, Seq(LIST, I32, list(range(-20, 20)))],  # 15 or more: size as a varint
            [22, LIST, Seq(LIST, TRUE, [1, 2, 1])],  # booleans in a list: a byte each
            [23, MAP, Pairs(BINARY, STRUCT, [(b"k", inner)])],
            [24, MAP, Pairs(0, 0, [])],
            [30, STRUCT, inner],
        ]
    )
    data = footer.encode(tree)
    again = footer.decode(data)
    assert footer.encode(again) == data
    assert again.get(17) == -(1 << 62) and again.get(2) == -300
    assert again.get(30).get(2) is True and again.get(30).get(3) is False
    assert again.get(21).items == list(range(-20, 20))
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(footer.FooterError):
            footer.decode(data[:cut])
    with pytest.raises(footer.FooterError, match="after"):
        footer.decode(data + b"\x00")


def _groups_of(data: bytes) -> list[footer.Group]:
    return footer.groups(footer.read_footer(io.BytesIO(data), len(data)))


@pytest.mark.parametrize("kept", [[], [0], [1, 3], [0, 1, 2, 3, 4], [4]])
def test_a_splice_copies_the_kept_groups_as_they_are_and_encodes_the_rest(
    monkeypatch, tmp_path, kept
):
    monkeypatch.setattr(publish, "ROW_GROUP_ROWS", 200)
    table = _table(1000)
    old = tmp_path / "old.parquet"
    write_parquet(str(old), table)
    data = old.read_bytes()
    groups = _groups_of(data)
    assert [g.rows for g in groups] == [200] * 5
    source = pa.OSFile(str(old))
    layout = footer.read_footer(source, source.size())
    parts, expected = [], []
    for i, group in enumerate(groups):
        rows = table.slice(200 * i, 200)
        if i in kept:
            parts.append(Kept(source, group))
        else:  # a few rows less; the group of index 2 loses them all
            rows = rows.slice(0, 0) if i == 2 else rows.filter([j % 7 != 0 for j in range(200)])
            parts.append(rows)
        expected.append(rows)
    new = tmp_path / "new.parquet"
    assert write_parquet(str(new), Spliced(layout, parts)) == sum(map(len, expected))
    out = new.read_bytes()
    want = pa.concat_tables(expected)
    assert pq.read_table(new).equals(want)
    got = duckdb.sql(f"select * from read_parquet('{new}') order by call_id").to_arrow_table()
    assert got.to_pylist() == want.to_pylist()
    spliced = _groups_of(out)
    assert [g.rows for g in spliced] == [len(t) for t in expected if len(t)]
    by_rows = iter(spliced)
    for i, rows in enumerate(expected):
        if not len(rows):
            continue
        g = next(by_rows)
        if i in kept:  # the same bytes, elsewhere in the file
            assert out[g.start : g.end] == data[groups[i].start : groups[i].end]
    meta = pq.ParquetFile(new).metadata
    assert meta.num_rows == len(want)
    for i in range(meta.num_row_groups):  # each group's statistics still its own
        stats = meta.row_group(i).column(0).statistics
        ids = pq.ParquetFile(new).read_row_group(i, columns=["call_id"])["call_id"]
        assert (stats.min, stats.max) == (min(ids.to_pylist()), max(ids.to_pylist()))
    if kept == list(range(5)):  # nothing erased: the very same file
        assert out == data
    source.close()


def _publish(tmp_path: Path, table: pa.Table, **kw: object):
    store = open_store(tmp_path)
    path = tmp_path / "cdr" / f"date={DAY}" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    if kw:
        pq.write_table(table, path, **kw)
    else:
        write_parquet(str(path), table)
    return store


@pytest.mark.parametrize(
    ("how", "spliceable"),
    [
        ({}, True),
        ({"write_page_index": True}, False),  # the index would be left behind
        ({"compression": "snappy"}, True),  # each chunk names its own codec
    ],
)
def test_only_a_file_of_the_same_layout_is_spliced(tmp_path, how, spliceable):
    table = _table(300)
    store = _publish(tmp_path, table, **how)
    opened = publish.open_spliceable(store, "cdr", DAY, table.schema)
    assert (opened is not None) is spliceable
    if opened is not None:
        opened[0].close()
    other = table.schema.remove(1)  # another schema: its groups would not fit
    assert publish.open_spliceable(store, "cdr", DAY, other) is None


def test_a_splice_goes_through_an_object_store(monkeypatch):
    """On a store with no local paths (fsspec's in-memory one), the published file is read
    and the new one written as streams, through the day's transaction."""
    monkeypatch.setattr(publish, "ROW_GROUP_ROWS", 100)
    store = open_store("memory://cdr-splice/lake")
    table = _table(450)
    with publish.DayTransaction(store, DAY) as txn:
        txn.stage("cdr", table)
        txn.commit()
    opened = publish.open_spliceable(store, "cdr", DAY, table.schema)
    assert opened is not None
    source, layout, groups = opened
    parts = [Kept(source, g) for g in groups]
    parts[1] = table.slice(100, 100).slice(0, 60)  # forty rows of the second group erased
    with publish.DayTransaction(store, DAY) as txn:
        txn.stage("cdr", Spliced(layout, parts))
        txn.commit()
    source.close()
    want = pa.concat_tables([table.slice(0, 160), table.slice(200)])
    assert publish.read_day_table(store, "cdr", DAY).equals(want)


def _rewritten(data: bytes, change) -> bytes:
    """``data`` (a Parquet file) with its footer changed by ``change`` (the tree, in place)."""
    meta = footer.read_footer(io.BytesIO(data), len(data))
    change(meta)
    raw = footer.encode(meta)
    body = data[: meta.end]
    return body + raw + len(raw).to_bytes(4, "little") + footer.MAGIC


def _far(meta: Struct) -> None:  # a chunk that says it lies past the end of the file
    chunk = meta.get(4).items[-1].get(1).items[0].get(3)
    chunk.set(9, chunk.get(9) + 10**9)


def _not_a_list(meta: Struct) -> None:  # the row groups as a number
    meta.set(4, 7)
    meta.fields[[f[0] for f in meta.fields].index(4)][1] = I32


@pytest.mark.parametrize("change", [_far, _not_a_list])
def test_a_footer_out_of_its_file_or_its_types_is_refused_not_copied(tmp_path, change):
    """Whatever a published footer says, a splice copies nothing from outside its file: such
    a file is not spliced (the re-build then reads its rows, and fails there if they are
    broken)."""
    data = _rewritten(_written(_table(300), row_group_size=100), change)
    with pytest.raises(footer.FooterError):
        _groups_of(data)
    path = tmp_path / "cdr" / f"date={DAY}" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert publish.open_spliceable(open_store(tmp_path), "cdr", DAY, _table(1).schema) is None


def test_a_footer_nested_past_the_interpreters_stack_is_refused():
    deep = bytes([0x0C]) * 100_000  # field 0, a struct, within a struct ...
    with pytest.raises(footer.FooterError, match="nested"):
        footer.decode(bytes([0x1C]) + deep)
