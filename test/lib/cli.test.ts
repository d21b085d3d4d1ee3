// The `thinkcache` binary as a user runs it (bin/thinkcache.cjs → dist/cli.cjs, built by `npm run build:ts`).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cudaInfo, resolveBackend } from '../../lib/backend.js';
import { getAddon } from '../../lib/binding.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { haveSharedFile, repoRoot, stories260K } from '../helpers/shared-data.js';

const bin = join(repoRoot, 'bin', 'thinkcache.cjs');
const cli = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: repoRoot, timeout: 120_000 });

describe('thinkcache CLI', () => {
  it('run --json prints one JSON object with tokens, text, usage and stats', () => {
    const model = ensureFixture('llama', 'q8_0');
    const r = cli('run', '--model', model, '--prompt', 'Once upon a time', '--max-tokens', '12', '--threads', '1', '--json');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!);
    expect(out.tokens).toHaveLength(12);
    expect(typeof out.text).toBe('string');
    expect(out.usage.completionTokens).toBe(12);
    expect(out.stats.prefillTokensPerSecond).toBeGreaterThan(0);
    expect(out.stats.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(out.stats.backend).toBe(resolveBackend('auto', cudaInfo(getAddon())));
  });

  it('--backend: cpu runs, a bad name is refused before loading, cuda without a usable device is a typed error', () => {
    const model = ensureFixture('llama', 'q8_0');
    const cpu = cli('run', '--model', model, '--prompt', 'Once', '--max-tokens', '2', '--threads', '1', '--backend', 'cpu', '--json');
    expect(cpu.status).toBe(0);
    expect(JSON.parse(cpu.stdout).stats.backend).toBe('cpu');
    const bad = cli('run', '--model', '/x.gguf', '--prompt', 'x', '--backend', 'gpu');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--backend: expected cpu, cuda or auto, received "gpu"/);
    const info = cudaInfo(getAddon());
    if (!(info.built && info.deviceCount > 0)) {
      const cuda = cli('eval', '--model', model, '--kv', 'rot2', '--traces', '1', '--max-tokens', '4', '--backend', 'cuda');
      expect(cuda.status).toBe(1);
      expect(cuda.stderr).toMatch(/backend "cuda" is not available/);
    }
  });

  it.skipIf(!haveSharedFile(stories260K, 'CLI stories260K run'))('run streams the same text as the API (stories260K)', () => {
    const r = cli('run', '--model', stories260K, '--prompt', 'Once upon a time', '--max-tokens', '16', '--threads', '1');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^, there was a little girl named Lily/);
    expect(r.stderr).toMatch(/tok\/s decode/);
  });

  it('inspect prints metadata and a memory estimate', () => {
    const r = cli('inspect', '--model', ensureFixture('qwen3', 'bf16'));
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/architecture\s+qwen3/);
    expect(r.stdout).toMatch(/memory\s+weights/);
    const j = JSON.parse(cli('inspect', '--model', ensureFixture('qwen3', 'bf16'), '--json').stdout);
    expect(j.hparams.headDim).toBe(32);
    expect(j.memoryEstimate.kvBytesPerToken).toBeGreaterThan(0);
  });

  it('fails cleanly: missing model, bad number, unknown command', () => {
    const missing = cli('run', '--model', '/nonexistent.gguf', '--prompt', 'x');
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/\[ERR_IO\].*nonexistent\.gguf/);
    const bad = cli('run', '--model', '/x.gguf', '--prompt', 'x', '--max-tokens', 'lots');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--max-tokens: expected an integer, received "lots"/);
    const unknown = cli('frobnicate');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"/);
  });
  it('demo: bad options are typed errors before any model loads; the bundled model is found or named', () => {
    const bad = cli('demo', '--n', '0');
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/--n: expected an integer in 1\.\.100/);
    const task = cli('demo', '--task', 'sort');
    expect(task.status).not.toBe(0);
    expect(task.stderr).toMatch(/unknown tiny task "sort"/);
    const preset = cli('demo', '--kv', 'rot9');
    expect(preset.status).not.toBe(0);
    expect(preset.stderr).toMatch(/unknown preset "rot9"/);
  });

  it('eval --accuracy on a fixture: one JSON line per problem and per summary, full cache first', () => {
    const model = ensureFixture('qwen3', 'f16');
    const r = cli('eval', '--accuracy', '--model', model, '--tasks', 'add', '--n', '2', '--kv', 'lazy-50', '--max-tokens', '24', '--threads', '1', '--json');
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.type === 'problem').map((l) => l.config)).toEqual(['full', 'full', 'lazy-50', 'lazy-50']);
    const sums = lines.filter((l) => l.type === 'summary');
    expect(sums.map((l) => l.config)).toEqual(['full', 'lazy-50']);
    expect(sums[0].n).toBe(2);
    expect(r.stderr).toMatch(/accuracy/);
  });

  it('bench on a fixture: one JSON row per configuration and context, KV bytes from the memory report', () => {
    const model = ensureFixture('llama', 'f32', { nLayer: 4 });
    const r = cli('bench', '--model', model, '--kv', 'full', '--kv', 'rot2', '--contexts', '128,64', '--decode', '4', '--threads', '1', '--json');
    expect(r.status, r.stderr).toBe(0);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(rows.map((x) => [x.config, x.context])).toEqual([['full', 64], ['full', 128], ['rot2', 64], ['rot2', 128]]);
    for (const x of rows) {
      expect(x.decodeTokensPerSecond).toBeGreaterThan(0);
      expect(x.logicalTokens).toBe(x.context + 4 + 4); // filled to the context, 4 warm-up and 4 timed steps
      expect(x.kvBytesAllocated).toBeGreaterThanOrEqual(x.kvBytesUsed);
    }
    expect(rows[3].kvBytesUsed).toBeLessThan(rows[1].kvBytesUsed); // rot2 holds fewer bytes than f16 at 128
    const bad = cli('bench', '--model', model, '--contexts', '0');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--contexts: expected a positive integer/);
  });
});
