// The package as a user gets it: `npm pack` (with the linux-x64 prebuild staged from build/Release, as
// `npm run build:prebuild` would make it), installed into an empty project with install scripts disabled
// (npm's allowScripts policy can block them), then used from CommonJS, from ESM, through require(esm) (which
// fails on top-level await), through the `thinkcache` bin, and without any binary (the error must say how to build).
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { repoRoot } from '../helpers/shared-data.js';

const platform = `${process.platform}-${process.arch}`;
// the binary to ship: the one the in-repo tests load (THINKCACHE_BINDING overrides build/Release, see lib/binding.ts)
const binary = process.env.THINKCACHE_BINDING ?? join(repoRoot, 'build', 'Release', 'thinkcache.node');
const haveBinary = existsSync(binary);
if (!haveBinary) console.warn(`skipping the packaging test: ${binary} not built (npm install builds it)`);
const runOn = process.platform === 'linux' && process.arch === 'x64' && haveBinary;

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete childEnv.THINKCACHE_BINDING; // the consumer must load the packaged prebuild
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 240_000, env: childEnv });
  if (r.error) throw r.error;
  return r;
}
const ok = (r: SpawnSyncReturns<string>, what: string) => {
  if (r.status !== 0) throw new Error(`${what} failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
};

const CJS = `
const assert = require('node:assert');
const tc = require('thinkcache');
assert.equal(typeof tc.loadModel, 'function');
assert.equal(typeof tc.InvalidOptionsError, 'function');
const native = () => Object.keys(require.cache).filter((k) => k.endsWith('.node'));
assert.deepEqual(native(), [], 'the addon must not load on require()');
(async () => {
  const model = await tc.loadModel({ path: process.env.MODEL });
  const ctx = await model.createContext({ contextSize: 64, threads: 1 });
  const seq = ctx.acquireSequence();
  let fin;
  for await (const ev of seq.generate('Once upon a time', { maxTokens: 4, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
  await model.dispose();
  console.log(JSON.stringify({ tokens: fin.tokens, addon: native(), entry: require.resolve('thinkcache') }));
})().catch((e) => { console.error(e.stack); process.exit(1); });
`;

const ESM = `
import assert from 'node:assert';
import { createRequire } from 'node:module';
import { loadModel, Sequence } from 'thinkcache';
const cache = createRequire(import.meta.url).cache;
const native = () => Object.keys(cache).filter((k) => k.endsWith('.node'));
assert.equal(typeof Sequence, 'function');
assert.deepEqual(native(), [], 'the addon must not load on import');
const model = await loadModel({ path: process.env.MODEL });
const ctx = await model.createContext({ contextSize: 64, threads: 1 });
let fin;
for await (const ev of ctx.acquireSequence().generate('Once upon a time', { maxTokens: 4, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
await model.dispose();
console.log(JSON.stringify({ tokens: fin.tokens, addon: native(), entry: import.meta.resolve('thinkcache') }));
`;

describe.skipIf(!runOn)('npm pack → install into an empty project → use', () => {
  const model = ensureFixture('llama', 'f32');
  let work = '';
  let project = '';
  let files: string[] = [];
  let expected: number[] = [];

  beforeAll(async () => {
    if (!existsSync(join(repoRoot, 'dist', 'index.cjs'))) throw new Error('dist/ is missing: run `npm run build:ts` first (npm test does)');
    work = mkdtempSync(join(tmpdir(), 'thinkcache-pack-'));
    // staged into the repo only while packing: a stale prebuild left there would load silently once build/ is gone
    const staged = join(repoRoot, 'prebuilds', platform);
    const hadPrebuild = existsSync(staged) && readdirSync(staged).some((f) => f.endsWith('.node'));
    ok(sh(process.execPath, [join(repoRoot, 'scripts', 'stage-prebuild.mjs'), '--from', binary], repoRoot), 'stage-prebuild');
    let pack;
    try {
      pack = JSON.parse(ok(sh('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], repoRoot), 'npm pack'));
    } finally {
      if (!hadPrebuild) rmSync(join(repoRoot, 'prebuilds'), { recursive: true, force: true });
    }
    files = (pack[0].files as Array<{ path: string }>).map((f) => f.path);
    project = join(work, 'consumer');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
    ok(sh('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', join(work, pack[0].filename)], project), 'npm install of the tarball');
    writeFileSync(join(project, 'use.cjs'), CJS);
    writeFileSync(join(project, 'use.mjs'), ESM);
    await using m = await loadModel({ path: model });
    await using ctx = await m.createContext({ contextSize: 64, threads: 1 });
    for await (const ev of ctx.acquireSequence().generate('Once upon a time', { maxTokens: 4, stopAtEog: false })) if (ev.type === 'finish') expected = ev.tokens;
  });
  afterAll(() => { if (work) rmSync(work, { recursive: true, force: true }); });

  it('the tarball ships dist (ESM + CJS + types), the bin and the prebuilt binary, and no build output', () => {
    for (const f of ['dist/index.js', 'dist/index.cjs', 'dist/index.d.ts', 'dist/index.d.cts', 'dist/cli.cjs', 'bin/thinkcache.cjs', 'binding.gyp']) expect(files).toContain(f);
    expect(files).toContain(`prebuilds/${platform}/thinkcache.napi.glibc.node`);
    expect(files.filter((f) => f.startsWith('build/') || f.startsWith('test/') || f.endsWith('.o'))).toEqual([]);
    // no install-time build happened (scripts were ignored), so the prebuild is all there is
    expect(existsSync(join(project, 'node_modules', 'thinkcache', 'build'))).toBe(false);
  });

  it('CommonJS: require() is lazy, the prebuild loads, tokens equal the in-repo build', () => {
    const out = JSON.parse(ok(sh(process.execPath, ['use.cjs'], project, { MODEL: model }), 'use.cjs'));
    expect(out.entry).toMatch(/node_modules\/thinkcache\/dist\/index\.cjs$/);
    expect(out.addon).toHaveLength(1);
    expect(out.addon[0]).toMatch(new RegExp(`node_modules/thinkcache/prebuilds/${platform}/thinkcache\\.napi\\.glibc\\.node$`));
    expect(out.tokens).toEqual(expected);
  });

  it('ESM: import is lazy, same tokens', () => {
    const out = JSON.parse(ok(sh(process.execPath, ['use.mjs'], project, { MODEL: model }), 'use.mjs'));
    expect(out.entry).toMatch(/node_modules\/thinkcache\/dist\/index\.js$/);
    expect(out.addon[0]).toMatch(/prebuilds/);
    expect(out.tokens).toEqual(expected);
  });

  it('no top-level await: the ESM build loads through require(esm)', () => {
    const r = sh(process.execPath, ['--experimental-require-module', '--no-warnings', '-e',
      "const m = require('./node_modules/thinkcache/dist/index.js'); if (typeof m.loadModel !== 'function') process.exit(3)"], project);
    expect(r.stderr).not.toMatch(/ERR_REQUIRE_ASYNC_MODULE/);
    expect(r.status).toBe(0);
  });

  it('the bin runs: npx thinkcache run --json prints one JSON object', () => {
    const r = sh('npx', ['--no-install', 'thinkcache', 'run', '--model', model, '--prompt', 'Once upon a time', '--max-tokens', '4', '--threads', '1', '--json'], project);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout.trim()).tokens).toEqual(expected);
  });

  it('the tarball ships the tiny reasoner, and `npx thinkcache demo` runs from the installed package', () => {
    for (const f of ['tiny/model/thinkcache-tiny-reasoner.gguf', 'tiny/model/thinkcache-tiny-reasoner.heads.tsv', 'tiny/data/test-add.jsonl', 'tiny/README.md']) expect(files).toContain(f);
    expect(files.filter((f) => f.startsWith('tiny/checkpoints') || f.endsWith('.py'))).toEqual([]);
    const r = sh('npx', ['--no-install', 'thinkcache', 'demo', '--task', 'add', '--kv', 'full', '--threads', '1', '--no-table'], project);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\(expected \d+\)/);
  });

  it('without any binary, the error names what was tried and how to build one', () => {
    const prebuilds = join(project, 'node_modules', 'thinkcache', 'prebuilds');
    renameSync(prebuilds, `${prebuilds}.off`);
    try {
      const r = sh(process.execPath, ['-e', `require('thinkcache').loadModel({ path: ${JSON.stringify(model)} }).catch((e) => { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); })`], project);
      const err = JSON.parse(r.stdout.trim());
      expect(err.name).toBe('BindingError');
      expect(err.code).toBe('ERR_BINDING');
      const root = join(project, 'node_modules', 'thinkcache');
      expect(err.message).toContain(`Looked in: ${join(root, 'prebuilds', platform)} (prebuilt) and ${join(root, 'build', 'Release')}`);
      expect(err.message).toContain('Prebuilt binaries in this package: none.');
      expect(err.message).toContain(`cd ${root} && npx node-gyp rebuild`);
      expect(err.message).toContain('npm rebuild thinkcache --foreground-scripts');
    } finally {
      renameSync(`${prebuilds}.off`, prebuilds);
    }
    expect(readdirSync(prebuilds)).toEqual([platform]);
  });
});
