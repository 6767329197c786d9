"""Parquet files made partly of another file's row groups, copied as they are encoded: an
erasure re-encodes only the row groups an erased row is in (docs/performance.md, "Erasure").

pyarrow writes row groups but cannot copy one. A copied group's bytes stay as they were; only
the offsets the file's footer keeps of it move. The footer is Thrift's compact protocol, read
here into a tree that keeps every field as it came, known to this module or not, and written
back byte for byte; only the offsets, row counts and ordinals of the groups change.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, BinaryIO

MAGIC = b"PAR1"
# Thrift compact protocol's types (a struct's field header holds one in its low four bits).
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)
_INTEGERS = (I16, I32, I64)

# parquet.thrift's field ids, for the fields an offset or a count is moved in.
_FILE_SCHEMA, _FILE_ROWS, _FILE_GROUPS = 2, 3, 4
_GROUP_COLUMNS, _GROUP_ROWS, _GROUP_OFFSET, _GROUP_ORDINAL = 1, 3, 5, 7
_CHUNK_PATH, _CHUNK_OFFSET, _CHUNK_META = 1, 2, 3
_CHUNK_INDEXES = (4, 6, 8, 9)  # page indexes (written after the groups) and encryption
_META_SIZE, _META_DATA_PAGE, _META_INDEX_PAGE, _META_DICT_PAGE = 7, 9, 10, 11
_META_BLOOM = 14  # a bloom filter is written after the groups too


class FooterError(ValueError):
    """A footer this module will not splice (why, in the message)."""


@dataclass
class Seq:
    """A Thrift list or set: its elements' type and the elements."""

    kind: int
    element: int
    items: list[Any]


@dataclass
class Pairs:
    """A Thrift map."""

    key: int
    value: int
    items: list[tuple[Any, Any]]


class Struct:
    """A Thrift struct's fields in the order they came: ``(id, type, value)``."""

    def __init__(self, fields: list[list[Any]]) -> None:
        self.fields = fields
        self.end: int | None = None  # of a file's footer: where the row groups' bytes end

    def get(self, fid: int, default: Any = None) -> Any:
        for f in self.fields:
            if f[0] == fid:
                return f[2]
        return default

    def set(self, fid: int, value: Any) -> None:
        for f in self.fields:
            if f[0] == fid:
                f[2] = value
                return
        raise FooterError(f"field {fid} is not in the struct")

    def has(self, fid: int) -> bool:
        return any(f[0] == fid for f in self.fields)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise FooterError("the footer ends inside a value")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 70:
                raise FooterError("a varint runs past 10 bytes")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FooterError("the footer ends inside a value")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def value(self, kind: int) -> Any:
        if kind == BYTE:
            return self.byte()
        if kind in _INTEGERS:
            return self.zigzag()
        if kind == DOUBLE:
            return self.take(8)
        if kind == BINARY:
            return self.take(self.varint())
        if kind in (LIST, SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            if element in (TRUE, FALSE):  # a boolean in a container is a byte of its own
                return Seq(kind, element, [self.byte() for _ in range(size)])
            return Seq(kind, element, [self.value(element) for _ in range(size)])
        if kind == MAP:
            size = self.varint()
            if not size:
                return Pairs(0, 0, [])
            head = self.byte()
            k, v = head >> 4, head & 0x0F
            return Pairs(k, v, [(self.value(k), self.value(v)) for _ in range(size)])
        if kind == STRUCT:
            return self.struct()
        raise FooterError(f"unknown Thrift type {kind}")

    def struct(self) -> Struct:
        fields, last = [], 0
        while True:
            head = self.byte()
            kind, delta = head & 0x0F, head >> 4
            if kind == STOP:
                return Struct(fields)
            fid = last + delta if delta else self.zigzag()
            value = kind == TRUE if kind in (TRUE, FALSE) else self.value(kind)
            fields.append([fid, kind, value])
            last = fid


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, value: int) -> None:
        while value >= 0x80:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def zigzag(self, value: int) -> None:
        self.varint((value << 1) ^ (value >> 63))

    def value(self, kind: int, value: Any) -> None:
        if kind == BYTE:
            self.out.append(value)
        elif kind in _INTEGERS:
            self.zigzag(value)
        elif kind == DOUBLE:
            self.out += value
        elif kind == BINARY:
            self.varint(len(value))
            self.out += value
        elif kind in (LIST, SET):
            size = len(value.items)
            self.out.append((min(size, 15) << 4) | value.element)
            if size >= 15:
                self.varint(size)
            for item in value.items:
                if value.element in (TRUE, FALSE):
                    self.out.append(item)
                else:
                    self.value(value.element, item)
        elif kind == MAP:
            self.varint(len(value.items))
            if value.items:
                self.out.append((value.key << 4) | value.value)
            for k, v in value.items:
                self.value(value.key, k)
                self.value(value.value, v)
        elif kind == STRUCT:
            self.struct(value)
        else:
            raise FooterError(f"unknown Thrift type {kind}")

    def struct(self, value: Struct) -> None:
        last = 0
        for fid, kind, v in value.fields:
            delta = fid - last
            if 0 < delta <= 15:
                self.out.append((delta << 4) | kind)
            else:
                self.out.append(kind)
                self.zigzag(fid)
            if kind not in (TRUE, FALSE):
                self.value(kind, v)
            last = fid
        self.out.append(STOP)


def decode(data: bytes) -> Struct:
    """A Thrift struct (a footer's ``FileMetaData``), every field kept as it came."""
    reader = _Reader(data)
    try:
        found = reader.struct()
    except RecursionError:
        raise FooterError("structs nested too deep") from None
    if reader.pos != len(data):
        raise FooterError(f"{len(data) - reader.pos} bytes after the footer's struct")
    return found


def encode(meta: Struct) -> bytes:
    writer = _Writer()
    writer.struct(meta)
    return bytes(writer.out)


def read_footer(source: BinaryIO, size: int) -> Struct:
    """The footer of the Parquet file ``source`` (``size`` bytes long, seekable)."""
    if size < 12:
        raise FooterError("too short for a Parquet file")
    source.seek(size - 8)
    tail = source.read(8)
    (length,) = struct.unpack("<I", tail[:4])
    if tail[4:] != MAGIC or length > size - 12:
        raise FooterError("not a Parquet file with a plain footer")
    source.seek(size - 8 - length)
    meta = decode(source.read(length))
    meta.end = size - 8 - length
    return meta


@dataclass(frozen=True)
class Group:
    """One row group of a file: where its bytes are, and its footer entry."""

    start: int
    end: int
    meta: Struct

    @property
    def rows(self) -> int:
        return self.meta.get(_GROUP_ROWS)


def groups(meta: Struct) -> list[Group]:
    """Each row group's byte range (its column chunks, back to back), refused where the file
    keeps anything of a group outside it (page indexes, bloom filters, other files,
    encryption), which a copy of the range would leave behind, or where the footer is not
    one this module understands (a field of another type, a range outside the file)."""
    try:
        found = _groups(meta)
    except (AttributeError, TypeError, IndexError):
        raise FooterError("the footer's row groups are not as parquet.thrift has them") from None
    last = len(MAGIC)
    for g in found:
        if g.start < last or (meta.end is not None and g.end > meta.end):
            raise FooterError("a row group's bytes lie outside the file or over another's")
        last = g.end
    return found


def _groups(meta: Struct) -> list[Group]:
    found = []
    for group in meta.get(_FILE_GROUPS).items:
        if not group.get(_GROUP_ROWS):
            raise FooterError("an empty row group (its chunks may have no offsets)")
        spans = []
        for chunk in group.get(_GROUP_COLUMNS).items:
            if chunk.has(_CHUNK_PATH) or any(chunk.has(f) for f in _CHUNK_INDEXES):
                raise FooterError("a column chunk has page indexes, encryption or its own file")
            cm = chunk.get(_CHUNK_META)
            if cm.has(_META_BLOOM) or cm.has(_META_INDEX_PAGE):
                raise FooterError("a column chunk has a bloom filter or an index page")
            data = cm.get(_META_DATA_PAGE)
            start, size = cm.get(_META_DICT_PAGE) or data, cm.get(_META_SIZE)
            if not start <= data < start + size:  # its pages must lie in what is copied
                raise FooterError("a column chunk's data pages lie outside it")
            spans.append((start, start + size))
        spans.sort()
        if any(a[1] != b[0] for a, b in pairwise(spans)):
            raise FooterError("a row group's column chunks are not back to back")
        found.append(Group(spans[0][0], spans[-1][1], group))
    return found


def _copy(s: Struct) -> Struct:
    """A struct whose fields may be set without changing ``s`` (their values are shared)."""
    return Struct([list(f) for f in s.fields])


def _moved(group: Struct, by: int, ordinal: int) -> Struct:
    """A group's footer entry with its offsets moved ``by`` bytes (copied only down to the
    offsets: the rest, statistics and all, is shared with ``group``)."""
    moved = _copy(group)
    if moved.has(_GROUP_OFFSET):
        moved.set(_GROUP_OFFSET, moved.get(_GROUP_OFFSET) + by)
    if moved.has(_GROUP_ORDINAL):
        moved.set(_GROUP_ORDINAL, ordinal)
    chunks = moved.get(_GROUP_COLUMNS)
    moved.set(_GROUP_COLUMNS, Seq(chunks.kind, chunks.element, []))
    for old in chunks.items:
        chunk = _copy(old)
        if chunk.get(_CHUNK_OFFSET):
            chunk.set(_CHUNK_OFFSET, chunk.get(_CHUNK_OFFSET) + by)
        cm = _copy(chunk.get(_CHUNK_META))
        for fid in (_META_DATA_PAGE, _META_DICT_PAGE):
            if cm.has(fid):
                cm.set(fid, cm.get(fid) + by)
        chunk.set(_CHUNK_META, cm)
        moved.get(_GROUP_COLUMNS).items.append(chunk)
    return moved


def same_layout(a: Struct, b: Struct) -> bool:
    """Whether two files' groups may share a footer: the same schema, writer and metadata."""
    keep = (1, _FILE_SCHEMA, 5, 6, 7)  # version, schema, key-value metadata, writer, orders
    return all(
        a.has(f) == b.has(f) and (not a.has(f) or _field_bytes(a, f) == _field_bytes(b, f))
        for f in keep
    )


def _field_bytes(s: Struct, fid: int) -> bytes:
    return encode(Struct([f for f in s.fields if f[0] == fid]))


@dataclass(frozen=True)
class Piece:
    """A row group to put in the new file: ``group`` of the file ``source`` (seekable)."""

    source: BinaryIO
    group: Group


def splice(sink: BinaryIO, layout: Struct, pieces: Iterable[Piece]) -> int:
    """Write a Parquet file of ``pieces`` in order, their bytes copied as they are, under the
    footer ``layout`` (a file's footer: its schema, writer and metadata are kept, its groups
    replaced); return the row count. Every piece's file must have ``layout``'s (see
    :func:`same_layout`)."""
    sink.write(MAGIC)
    at, rows, entries = len(MAGIC), 0, []
    for piece in pieces:
        g = piece.group
        piece.source.seek(g.start)
        for data in _chunks(piece.source, g.end - g.start):
            sink.write(data)
        entries.append(_moved(g.meta, at - g.start, len(entries)))
        rows += entries[-1].get(_GROUP_ROWS)
        at += g.end - g.start
    meta = _copy(layout)
    meta.set(_FILE_ROWS, rows)
    meta.set(_FILE_GROUPS, Seq(LIST, STRUCT, entries))
    footer = encode(meta)
    sink.write(footer)
    sink.write(struct.pack("<I", len(footer)) + MAGIC)
    return rows


def _chunks(source: BinaryIO, n: int, size: int = 1 << 22) -> Iterator[bytes]:
    while n > 0:
        data = source.read(min(size, n))
        if not data:
            raise FooterError("a row group runs past the end of its file")
        n -= len(data)
        yield data
