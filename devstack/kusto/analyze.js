#!/usr/bin/env node
// Offline semantic analysis of KQL with Microsoft's Kusto language service
// (@kusto/language-service-next, pinned in package.json). devstack/kusto/__init__.py drives it.
//
// stdin, one JSON document:
//   {"tables": {"T": [["Col", "string"], ...]},
//    "functions": {"F": "T | take 1" or "(n:int) { T | take n }"},       (optional)
//    "queries": [{"id": "q1", "query": "T | count",
//                 "source": [["Col", "string"], ...]}]}                   (source optional)
// A query with `source` also sees a table named `source` with those columns, as a DCR
// transformKql does.
//
// stdout, one JSON document, one entry per query, in order:
//   [{"id": "q1", "diagnostics": [...errors...], "warnings": [...],
//     "columns": [["Count", "long"]] or null}]
// each diagnostic {"severity", "code", "message", "start", "end"} (character offsets into the
// query). `columns` is the result schema when the query's result is tabular, else null.
//
// Bad input (an unknown type name, a malformed function) or a failure exits 2, message on stderr.
'use strict';

const fs = require('fs');

require('@kusto/language-service-next/bridge.js');
require('@kusto/language-service-next/Kusto.Language.Bridge.js');

/* global Bridge, Kusto */
const S = Kusto.Language.Symbols;

class InputError extends Error {}

function scalarType(name, where) {
  // GetSymbol knows the Kusto names and their aliases (boolean -> bool, double -> real, ...);
  // Log Analytics spells some in camel case (dateTime).
  const type = typeof name === 'string' ? S.ScalarTypes.GetSymbol(name.toLowerCase()) : null;
  if (!type) throw new InputError(`${where}: unknown Kusto type ${JSON.stringify(name)}`);
  return type;
}

function table(name, columns) {
  const symbols = columns.map(
    ([column, type]) => new S.ColumnSymbol.ctor(column, scalarType(type, `${name}.${column}`)));
  return new S.TableSymbol.$ctor4(name, symbols);
}

function func(name, text) {
  // "(params) { body }" or a bare body (no parameters).
  let params = '()';
  let body = text.trim();
  if (body.startsWith('(')) {
    let depth = 0;
    let end = 0;
    for (; end < body.length; end++) {
      if (body[end] === '(') depth++;
      else if (body[end] === ')' && --depth === 0) break;
    }
    params = body.slice(0, end + 1);
    body = body.slice(end + 1).trim();
    if (depth !== 0 || !body.startsWith('{') || !body.endsWith('}')) {
      throw new InputError(`function ${name}: expected "(params) { body }"`);
    }
  }
  return new S.FunctionSymbol.$ctor16(name, params, body, null);
}

function globalsWith(symbols) {
  const db = new S.DatabaseSymbol.$ctor1('workspace', symbols);
  return Kusto.Language.GlobalState.Default.WithDatabase(db);
}

function items(list) {
  const out = [];
  for (let i = 0; i < (list ? list.Count : 0); i++) out.push(list.getItem(i));
  return out;
}

function diagnostic(d) {
  return { severity: d.Severity, code: d.Code, message: d.Message, start: d.Start, end: d.End };
}

function analyze(code) {
  const found = items(code.GetDiagnostics());
  // Warnings such as "join without kind" come from the analyzers, not from GetDiagnostics.
  found.push(...items(new Kusto.Language.Editor.KustoCodeService.ctor(code).GetAnalyzerDiagnostics(true)));
  const result = code.ResultType;
  return {
    diagnostics: found.filter((d) => d.Severity === 'Error').map(diagnostic),
    warnings: found.filter((d) => d.Severity === 'Warning').map(diagnostic),
    // The result of the last statement; a TableSymbol when the query is tabular.
    columns: Bridge.is(result, S.TableSymbol)
      ? items(result.Columns).map((c) => [c.Name, c.Type.Name])
      : null,
  };
}

function main() {
  const input = JSON.parse(fs.readFileSync(0, 'utf8'));
  const shared = [
    ...Object.entries(input.tables || {}).map(([name, columns]) => table(name, columns)),
    ...Object.entries(input.functions || {}).map(([name, text]) => func(name, text)),
  ];
  const globals = globalsWith(shared);
  const results = (input.queries || []).map((q) => {
    const scope = q.source ? globalsWith([...shared, table('source', q.source)]) : globals;
    return { id: q.id, ...analyze(Kusto.Language.KustoCode.ParseAndAnalyze(q.query, scope)) };
  });
  process.stdout.write(JSON.stringify(results));
}

try {
  main();
} catch (error) {
  process.stderr.write(`analyze.js: ${error instanceof InputError ? error.message : error.stack}\n`);
  process.exitCode = 2;
}
