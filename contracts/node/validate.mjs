#!/usr/bin/env node
// Validates an AsyncAPI document with the official parser (@asyncapi/parser),
// which checks it against the AsyncAPI JSON schema and the spec's semantic rules.
//
//   node contracts/node/validate.mjs [path/to/asyncapi.yaml] [--strict]
//
// The path defaults to the repository's asyncapi.yaml. Every diagnostic is
// printed. Exit status: 0 valid; 1 at least one error-severity diagnostic
// (or, with --strict, a warning too); 2 the parser could not be loaded or the
// file could not be read.

import { existsSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const strict = args.includes('--strict');
const positional = args.filter((arg) => !arg.startsWith('--'));
const unknown = args.filter((arg) => arg.startsWith('--') && arg !== '--strict');
if (unknown.length > 0 || positional.length > 1) {
  console.error('usage: node validate.mjs [path/to/asyncapi.yaml] [--strict]');
  process.exit(2);
}
const documentPath = resolve(positional[0] ?? resolve(here, '..', '..', 'asyncapi.yaml'));
if (!existsSync(documentPath)) {
  console.error(`error: ${documentPath} does not exist`);
  process.exit(2);
}

let parserModule;
try {
  parserModule = await import('@asyncapi/parser');
} catch (err) {
  console.error(`error: cannot load @asyncapi/parser (${err.message}); run \`npm ci\` in ${relative(process.cwd(), here) || '.'}`);
  process.exit(2);
}
const { Parser, fromFile, DiagnosticSeverity } = parserModule.default ?? parserModule;

const SEVERITY_NAMES = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

const parser = new Parser();
let output;
try {
  output = await fromFile(parser, documentPath).parse();
} catch (err) {
  console.error(`error: cannot parse ${documentPath}: ${err.message}`);
  process.exit(2);
}
const { document, diagnostics } = output;

const shown = relative(process.cwd(), documentPath) || documentPath;
const counts = { error: 0, warning: 0, info: 0, hint: 0 };
for (const diagnostic of diagnostics) {
  const severity = SEVERITY_NAMES[diagnostic.severity] ?? `severity ${diagnostic.severity}`;
  counts[severity] = (counts[severity] ?? 0) + 1;
  const where = diagnostic.path && diagnostic.path.length > 0 ? `#/${diagnostic.path.join('/')}` : '#';
  const line = diagnostic.range ? `:${diagnostic.range.start.line + 1}` : '';
  console.log(`${shown}${line} ${severity} [${diagnostic.code}] ${where}: ${diagnostic.message}`);
}

const failed = counts.error > 0 || document === undefined || (strict && counts.warning > 0);
const version = document ? document.version() : 'unknown version';
const summary = `${counts.error} error(s), ${counts.warning} warning(s), ${counts.info} info, ${counts.hint} hint(s)`;
if (failed) {
  console.log(`${shown}: INVALID AsyncAPI ${version} document (${summary}${strict ? ', --strict' : ''})`);
  process.exit(1);
}
console.log(`${shown}: valid AsyncAPI ${version} document (${summary})`);
