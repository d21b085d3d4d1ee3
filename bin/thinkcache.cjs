#!/usr/bin/env node
// CLI entry: loads the built CLI (dist/cli.cjs). Run `npm run build:ts` after editing lib/.
// `thinkcache ... | head` closes the pipe early: that is not an error
process.stdout.on('error', (err) => { if (err && err.code === 'EPIPE') process.exit(process.exitCode ?? 0); throw err; });
require('../dist/cli.cjs').main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code ?? 0; },
  (err) => { console.error(err && err.message ? err.message : err); process.exitCode = 1; },
);
