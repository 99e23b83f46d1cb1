// Parse AsyncAPI documents with the official parser and print their diagnostics as JSON:
//   node parse.cjs <folder holding node_modules/@asyncapi/parser> <document>...
// prints {"<document>": {"parsed": true|false, "diagnostics": [{severity, code, message, path}]}}.
const path = require('node:path');

const [installed, ...documents] = process.argv.slice(2);
const { Parser, fromFile } = require(require.resolve('@asyncapi/parser', { paths: [path.resolve(installed)] }));
const SEVERITIES = ['error', 'warning', 'information', 'hint'];

(async () => {
  const parser = new Parser();
  const results = {};
  for (const document of documents) {
    const { document: parsed, diagnostics } = await fromFile(parser, document).parse();
    results[document] = {
      parsed: Boolean(parsed),
      diagnostics: diagnostics.map((d) => ({
        severity: SEVERITIES[d.severity],
        code: d.code,
        message: d.message,
        path: d.path.join('/'),
      })),
    };
  }
  process.stdout.write(`${JSON.stringify(results, null, 1)}\n`);
})();
