"""Parse and map: raw record bytes to an encoded table row, or an error record with the reason.

One :class:`RecordMapper` serves every source of a flow. JSON formats (CloudTrail,
NDJSON, GuardDuty, ...) are decoded and mapped in one pass by the table's
:class:`~operators.schema.Mapper`; text formats are parsed into a dict first by their
:class:`~operators.formats.TextFormat`. Which table a record goes to follows from its
source and its object's format (``auto`` sources resolve the format per object).

Runs of lines of the tabular formats with a columnar path (VPC flow logs, ALB and NLB
access logs onto their standard tables, S3 server access logs) are mapped by polars
instead (:mod:`operators.columnar`), with the same rows byte for byte; a line it cannot
vouch for, and a run too short to pay for it, take the line path.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import cast

import orjson

from connectors.s3.config import SourceConfig
from dataflow.core.failures import failed
from dataflow.core.messages import ErrorRecord, ObjectEnd, ObjectStart, RawRecord, Row, Rows
from operators.columnar import MIN_RUN, Columns, columns_for
from operators.formats import ParseError, TextFormat
from operators.formats.registry import DEFAULT_TABLES, text_format
from operators.schema import Mapper, MappingError, TableDef

__all__ = ["ERROR_SAMPLE_BYTES", "RecordMapper"]

log = logging.getLogger(__name__)

ERROR_SAMPLE_BYTES = 16 * 1024 * 1024
"""Most bytes of an offending record kept in its error record: in practice the whole record,
so that `s3sentinel replay` can send it again once the cause is fixed."""

TRACKED_OBJECTS = 4096
"""Objects whose bad records are counted at once (least recently seen forgotten first)."""


class _Bad:
    """Bad records of one object so far, for the dead-letter bound."""

    __slots__ = ("bytes", "codes", "count", "folded")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.codes: dict[str, int] = {}
        self.folded = False


class _Route:
    """How records of one (source, format) are mapped."""

    __slots__ = ("columns", "keep", "mapper", "parser", "stream")

    def __init__(self, mapper: Mapper, parser: TextFormat | None, keep: bool = False,
                 columns: Columns | None = None) -> None:
        self.mapper = mapper
        self.parser = parser
        self.stream = mapper.table.stream
        self.keep = keep
        """Hand the row dicts on with the encoded rows (:attr:`Rows.parsed`)."""
        self.columns = columns
        """The columnar path of this route's runs of lines, when it has one."""


class RecordMapper:
    """Maps the raw records of configured sources onto their tables' rows.

    :arg sources: The configured sources.
    :arg tables: Table definitions by name (see :func:`operators.schema.load_tables`).
    :arg max_row_bytes: Largest encoded row accepted (one row must fit in one request).
    :arg keep_parsed: Tables whose rows the next step reads: their bundles carry the row
        dicts too (:attr:`~dataflow.core.messages.Rows.parsed`).
    :arg columnar: Map runs of VPC flow log lines with polars (:mod:`operators.columnar`),
        which gives the same rows; False keeps every record on the line path.
    :raises KeyError: A source names a table that is not defined.
    """

    def __init__(self, sources: list[SourceConfig], tables: Mapping[str, TableDef],
                 max_row_bytes: int, keep_parsed: frozenset[str] = frozenset(),
                 columnar: bool = True) -> None:
        self._columnar = columnar
        self._sources = {s.name: s for s in sources}
        self._tables = tables
        self._keep = keep_parsed
        self._routes: dict[tuple[str, str], _Route | ErrorRecord | str] = {}
        self._max_row = max_row_bytes - 2  # the row plus the array's brackets
        self._bad: OrderedDict[str, _Bad] = OrderedDict()
        for src in sources:  # check every table a source names, before any data
            if src.format != "auto":
                route = self._route(src.name, src.format)
                if isinstance(route, str):
                    raise KeyError(route)

    def _route(self, source: str, fmt: str) -> _Route | str:
        """The route of (source, format); a string says why there is none."""
        route = self._routes.get((source, fmt))
        if route is None:
            src = self._sources[source]
            name = src.table or DEFAULT_TABLES.get(fmt)
            if name is None or name not in self._tables:
                route = (f"source {source!r} maps format {fmt!r} onto table {name!r}, which is "
                         f"not defined; defined tables: {', '.join(sorted(self._tables))}. "
                         "Declare it under [[tables]] or in runtime.tables_dir.")
            else:
                try:
                    parser = text_format(fmt, fields=src.fields, delimiter=src.delimiter,
                                         table=name)
                except ValueError as ex:  # e.g. a vpcflow field list an auto source cannot use
                    route = f"source {source!r} cannot read format {fmt!r}: {ex}"
                else:
                    table = self._tables[name]
                    columns = (columns_for(parser, table, self._max_row)
                               if self._columnar else None)
                    route = _Route(Mapper(table), parser, keep=name in self._keep,
                                   columns=columns)
            self._routes[(source, fmt)] = route
        return route  # type: ignore[return-value]

    def stream_of(self, source: str, fmt: str) -> str:
        """The stream records of ``source`` in format ``fmt`` are sent to.

        :raises KeyError: No table is defined for them.
        """
        route = self._route(source, fmt)
        if isinstance(route, str):
            raise KeyError(route)
        return route.stream

    def __call__(self, rec: RawRecord) -> Row | ErrorRecord:
        """Map one raw record."""
        res = self._map(rec)
        if type(res) is tuple:
            return Row(res[0], rec.record_id, res[1], rec.obj.partition)
        return self._bounded(rec, res)  # type: ignore[arg-type,return-value]

    def map_batch(self, records: Sequence[RawRecord | ObjectEnd | ObjectStart]
                  ) -> list[Rows | ErrorRecord]:
        """Map a batch of raw records; rows come out bundled per (stream, partition), in order.

        An :class:`~dataflow.core.messages.ObjectStart` comes out as a start marker (an
        empty bundle with :attr:`~dataflow.core.messages.Rows.begin` set) before the rows,
        an :class:`~dataflow.core.messages.ObjectEnd` as an end marker after them."""
        out: list[Rows | ErrorRecord] = []
        groups: dict[tuple[str, str], tuple[list[bytes], list[str], list[dict]]] = {}
        begins: list[Rows] = []
        ends: list[Rows] = []
        i, n = 0, len(records)
        while i < n:
            rec = records[i]
            if type(rec) is ObjectEnd:
                ends.append(Rows("", rec.obj.partition, (), (), end=rec.obj.id))
                i += 1
                continue
            if type(rec) is ObjectStart:
                begins.append(Rows("", rec.obj.partition, (), (), begin=rec.obj.id))
                i += 1
                continue
            assert isinstance(rec, RawRecord)
            if self._columnar:
                end, route, rows = self._run(records, i)
                if rows is None:  # the line path for the whole run
                    for r in records[i:end]:
                        self._one(r, groups, out)  # type: ignore[arg-type]
                    i = end
                    continue
                # The run's rows from the columnar path, b"" where the line path must do it.
                obj = rec.obj
                key = (route.stream, obj.partition)
                prefix = f"{obj.id}-"
                for r, row in zip(records[i:end], rows, strict=True):
                    if row:
                        group = groups.get(key)
                        if group is None:
                            group = groups[key] = ([], [], [])
                        group[0].append(row)
                        group[1].append(prefix + str(r.offset))  # type: ignore[union-attr]
                        if route.keep:
                            group[2].append(orjson.loads(row))
                    else:
                        self._one(r, groups, out)  # type: ignore[arg-type]
                i = end
                continue
            self._one(rec, groups, out)
            i += 1
        for (stream, partition), (rows_, ids, parsed) in groups.items():
            out.append(Rows(stream, partition, tuple(rows_), tuple(ids),
                            tuple(parsed) if parsed else None))
        return begins + out + ends

    def _one(self, rec: RawRecord, groups: dict[tuple[str, str], tuple[list[bytes], list[str],
                                                                      list[dict]]],
             out: list[Rows | ErrorRecord]) -> None:
        """The line path for one record: its row into its group, or its error into ``out``."""
        res = self._map(rec)
        if type(res) is tuple:
            obj = rec.obj
            key = (res[0], obj.partition)
            group = groups.get(key)
            if group is None:
                group = groups[key] = ([], [], [])
            group[0].append(res[1])
            group[1].append(f"{obj.id}-{rec.offset}")
            if len(res) == 3:
                group[2].append(res[2])
        else:
            err = self._bounded(rec, res)  # type: ignore[arg-type]
            if err is not None:
                out.append(err)

    def _run(self, records: Sequence[RawRecord | ObjectEnd | ObjectStart],
             start: int) -> tuple[int, _Route, list[bytes] | None]:
        """The run of records from ``start`` (one object, one header): where it ends, its
        route, and the rows the columnar path gives for it (``b""`` for a line it leaves to
        the line path); None when the run takes the line path (another format, shorter than
        :data:`~operators.columnar.MIN_RUN`, a field list the columnar path does not
        cover)."""
        rec = records[start]
        assert isinstance(rec, RawRecord)
        obj, header = rec.obj, rec.header
        end = start + 1
        while end < len(records):
            nxt = records[end]
            if (type(nxt) is not RawRecord or nxt.obj is not obj
                    or (nxt.header is not header and nxt.header != header)):
                break
            end += 1
        route = self._route(obj.source, obj.format or self._sources[obj.source].format)
        if type(route) is not _Route or route.columns is None or end - start < MIN_RUN:
            return end, route, None  # type: ignore[return-value]
        plan = route.columns.plan_for(route.parser, header)
        if plan is None:
            return end, route, None
        run = cast("list[RawRecord]", records[start:end])
        return end, route, route.columns.map_run([r.data for r in run], plan, f"{obj.id}-",
                                                 [r.offset for r in run])

    def _map(self, rec: RawRecord) -> tuple[str, bytes] | tuple[str, bytes, dict] | ErrorRecord:
        obj = rec.obj
        route = self._route(obj.source, obj.format or self._sources[obj.source].format)
        if type(route) is str:
            return self._error(rec, "map", route, "no_table")
        assert isinstance(route, _Route)
        record_id = f"{obj.id}-{rec.offset}"
        try:
            mapper = route.mapper
            row = (mapper.row_json(rec.data, record_id) if route.parser is None else
                   mapper.row_dict(route.parser.parse(rec.data, rec.header), record_id))
            data = mapper.encode(row)
        except ParseError as ex:
            return self._error(rec, "parse", ex.reason, ex.code)
        except MappingError as ex:
            return self._error(rec, "map", ex.reason, ex.code)
        except RecursionError:  # msgspec's and the parsers' answer to deeply nested input
            reason = ("record nested deeper than the JSON decoder's limit (about 1000 levels); "
                      "it cannot be decoded")
            return self._error(rec, "parse", reason, "too_deep")
        except Exception as ex:  # a bug must not stop the flow or lose the record
            log.exception("%s record %d: unexpected error while mapping", obj.uri, rec.offset)
            return self._error(rec, "map", f"unexpected error: {type(ex).__name__}: {ex}",
                               "internal")
        if len(data) > self._max_row:
            reason = (f"row is {len(data)} bytes, more than fits in one request "
                      f"({self._max_row} bytes)")
            return self._error(rec, "map", reason, "row_too_large")
        return (route.stream, data, row) if route.keep else (route.stream, data)

    def _bounded(self, rec: RawRecord, err: ErrorRecord) -> ErrorRecord | None:
        """``err``, or what stands for it once its object has too many bad records.

        An object of millions of bad lines (a few hundred bytes compressed) must not become
        millions of dead-letter entries. Past the source's ``max_dead_letters_per_object``
        (or ``max_dead_letter_bytes_per_object``) one ``read`` entry stands for the rest of
        the object from this record on: the journals count that range as accounted for, and
        ``s3sentinel replay`` reads it again from S3. Later bad records of the object are
        only counted (``s3sentinel_component_errors_total``).
        """
        obj = rec.obj
        bad = self._bad.get(obj.id)
        if bad is None:
            bad = self._bad[obj.id] = _Bad()
            if len(self._bad) > TRACKED_OBJECTS:
                self._bad.popitem(last=False)
        else:
            self._bad.move_to_end(obj.id)
        if bad.folded:
            return None
        src = self._sources[obj.source]
        if (bad.count < src.max_dead_letters_per_object
                and bad.bytes + len(err.data) <= src.max_dead_letter_bytes_per_object):
            bad.count += 1
            bad.bytes += len(err.data)
            bad.codes[err.code] = bad.codes.get(err.code, 0) + 1
            return err
        bad.folded = True
        codes = ", ".join(f"{c} {n}" for c, n in sorted(bad.codes.items()))
        reason = (f"this object has more bad records than the {bad.count} kept one by one "
                  f"({bad.bytes} bytes; {codes}; this one: {err.code}: {err.reason}); the "
                  f"records from offset "
                  f"{rec.offset} to the end of the object are not kept one by one: fix the "
                  "cause, then `s3sentinel replay` reads them again from S3")
        return failed(obj, rec.offset, "read", reason, "too_many_bad_records",
                      level=logging.ERROR)

    @staticmethod
    def _error(rec: RawRecord, stage: str, reason: str, code: str) -> ErrorRecord:
        return failed(rec.obj, rec.offset, stage, reason, code, rec.data[:ERROR_SAMPLE_BYTES],
                      rec.header)
