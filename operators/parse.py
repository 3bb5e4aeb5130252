"""Parse and map: raw record bytes to an encoded table row, or an error record with the reason.

One :class:`RecordMapper` serves every source of a flow; it knows each source's
format and table. JSON formats (CloudTrail, NDJSON, JSON arrays) are decoded and
mapped in one pass by the table's :class:`~operators.schema.Mapper`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dataflow import metrics
from dataflow.config import SourceConfig
from dataflow.messages import ErrorRecord, RawRecord, Row, Rows
from operators.schema import Mapper, MappingError, TableDef

__all__ = ["ERROR_SAMPLE_BYTES", "RecordMapper"]

log = logging.getLogger(__name__)

ERROR_SAMPLE_BYTES = 64 * 1024
"""Most bytes of an offending record kept in its error record."""


class RecordMapper:
    """Maps the raw records of configured sources onto their tables' rows.

    :arg sources: The configured sources.
    :arg tables: Table definitions by name (see :func:`operators.schema.load_tables`).
    :arg max_row_bytes: Largest encoded row accepted (one row must fit in one request).
    :raises KeyError: A source names a table that is not defined.
    """

    def __init__(self, sources: list[SourceConfig], tables: Mapping[str, TableDef],
                 max_row_bytes: int) -> None:
        self._mappers: dict[str, tuple[Mapper, str]] = {}
        for src in sources:
            if src.table not in tables:
                msg = (f"source {src.name!r} maps onto table {src.table!r}, which is not defined; "
                       f"defined tables: {', '.join(sorted(tables))}. Declare it under [[tables]] "
                       "or in runtime.tables_dir.")
                raise KeyError(msg)
            table = tables[src.table]
            self._mappers[src.name] = (Mapper(table), table.stream)
        self._max_row = max_row_bytes - 2  # the row plus the array's brackets

    def __call__(self, rec: RawRecord) -> Row | ErrorRecord:
        """Map one raw record."""
        res = self._map(rec)
        if type(res) is bytes:
            return Row(self._mappers[rec.obj.source][1], rec.record_id, res, rec.obj.partition)
        return res

    def map_batch(self, records: list[RawRecord]) -> list[Rows | ErrorRecord]:
        """Map a batch of raw records; rows come out bundled per (stream, partition), in order."""
        out: list[Rows | ErrorRecord] = []
        groups: dict[str, tuple[str, list[bytes], list[str]]] = {}
        for rec in records:
            res = self._map(rec)
            if type(res) is bytes:
                obj = rec.obj
                group = groups.get(obj.partition)
                if group is None:
                    group = groups[obj.partition] = (obj.source, [], [])
                group[1].append(res)
                group[2].append(f"{obj.id}-{rec.offset}")
            else:
                out.append(res)
        for partition, (source, rows, ids) in groups.items():
            out.append(Rows(self._mappers[source][1], partition, tuple(rows), tuple(ids)))
        return out

    def _map(self, rec: RawRecord) -> bytes | ErrorRecord:
        mapper = self._mappers[rec.obj.source][0]
        try:
            data = mapper.map_json(rec.data, f"{rec.obj.id}-{rec.offset}")
        except MappingError as ex:
            return self._error(rec, ex.reason, ex.code)
        except Exception as ex:  # a bug must not stop the flow or lose the record
            log.exception("%s record %d: unexpected error while mapping", rec.obj.uri, rec.offset)
            return self._error(rec, f"unexpected error while mapping: {type(ex).__name__}: {ex}",
                               "internal")
        if len(data) > self._max_row:
            reason = (f"row is {len(data)} bytes, more than fits in one request "
                      f"({self._max_row} bytes)")
            return self._error(rec, reason, "row_too_large")
        return data

    @staticmethod
    def _error(rec: RawRecord, reason: str, code: str) -> ErrorRecord:
        metrics.ERRORS.labels(rec.obj.source, "map", code).inc()
        return ErrorRecord(rec.obj, rec.offset, "map", reason, rec.data[:ERROR_SAMPLE_BYTES])
