// `thinkcache quantize` and quantizeGguf(): per-tensor types as llama-quantize chooses them, metadata carried
// over, and Q8_0 bytes identical to the TypeScript reference codec (test/fixtures/quantize.ts).
import { spawnSync } from 'node:child_process';
import { copyFileSync, linkSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { quantizeGguf, readGgufInfo } from '../../lib/gguf.js';
import { InvalidOptionsError } from '../../lib/errors.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { ensureQuantBaseFixture } from '../fixtures/quant-fixtures.js';
import { repoRoot } from '../helpers/shared-data.js';

const bin = join(repoRoot, 'bin', 'thinkcache.cjs');
const cli = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: repoRoot, timeout: 120_000 });
const dir = mkdtempSync(join(tmpdir(), 'thinkcache-quantize-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function tensorBytes(path: string): Promise<Map<string, { type: string; bytes: Buffer }>> {
  const info = await readGgufInfo(path);
  const file = readFileSync(path);
  return new Map(info.tensors.map((t) => [t.name, { type: t.typeName, bytes: file.subarray(info.dataOffset + t.offset, info.dataOffset + t.offset + t.bytes) }]));
}

describe('quantize', () => {
  it('CLI: f32 -> q8_0 writes the same tensor bytes as the reference fixture codec, metadata carried over', async () => {
    const out = join(dir, 'llama-q8_0.gguf');
    const r = cli('quantize', ensureFixture('llama', 'f32'), out, '--type', 'q8_0', '--threads', '2');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/q8_0 \(general\.file_type 7\)/);
    const ours = await tensorBytes(out);
    const ref = await tensorBytes(ensureFixture('llama', 'q8_0'));
    expect([...ours.keys()]).toEqual([...ref.keys()]);
    for (const [name, t] of ours) {
      expect(t.type, name).toBe(ref.get(name)!.type);
      expect(t.bytes.equals(ref.get(name)!.bytes), name).toBe(true);
    }
    const a = (await readGgufInfo(out)).metadata, b = (await readGgufInfo(ensureFixture('llama', 'f32'))).metadata;
    expect(a['general.file_type']).toBe(7);
    expect(a['general.quantization_version']).toBe(2);
    for (const k of Object.keys(b)) if (k !== 'general.file_type') expect(a[k], k).toEqual(b[k]);
  });

  it('q4_k_m: Q6_K on the more-bits attn_v / ffn_down layers and the output, Q4_K elsewhere, norms F32', async () => {
    const out = join(dir, 'q4_k_m.gguf');
    const r = await quantizeGguf(ensureQuantBaseFixture(), out, { type: 'q4_k_m' });
    expect(r.fileType).toBe(15);
    const to = Object.fromEntries(r.tensors.map((t) => [t.name, t.to]));
    // 2 layers: use_more_bits(i, 2) is true for layer 1 only
    expect(to['blk.0.attn_v.weight']).toBe('q4_K');
    expect(to['blk.1.attn_v.weight']).toBe('q6_K');
    expect(to['blk.0.ffn_down.weight']).toBe('q4_K');
    expect(to['blk.1.ffn_down.weight']).toBe('q6_K');
    expect(to['output.weight']).toBe('q6_K');
    expect(to['blk.0.attn_q.weight']).toBe('q4_K');
    expect(to['blk.0.attn_norm.weight']).toBe('f32');
  });

  it('K-quants fall back on rows that are not a multiple of 256, as llama-quantize does', async () => {
    const r = await quantizeGguf(ensureFixture('llama', 'f32'), join(dir, 'fallback.gguf'), { type: 'q4_k_m' });
    const to = new Set(r.tensors.map((t) => t.to));
    expect(to.has('q4_K')).toBe(false);
    expect(to.has('q5_0')).toBe(true); // Q4_K -> Q5_0 on 64-wide rows
  });

  it('refuses to write over its input, also through a link or the temporary file; bad thread counts are typed errors', async () => {
    const src = join(dir, 'self.gguf');
    copyFileSync(ensureFixture('llama', 'f32'), src);
    const size = statSync(src).size;
    await expect(quantizeGguf(src, src, { type: 'q8_0' })).rejects.toThrow(/must be another file than the input/);
    linkSync(src, join(dir, 'self-link.gguf'));
    await expect(quantizeGguf(src, join(dir, 'self-link.gguf'), { type: 'q8_0' })).rejects.toThrow(/must be another file/);
    // the output is written through OUT.tmp: an input named OUT.tmp would be truncated while it is read
    copyFileSync(src, join(dir, 'victim.gguf.tmp'));
    await expect(quantizeGguf(join(dir, 'victim.gguf.tmp'), join(dir, 'victim.gguf'), { type: 'q8_0' })).rejects.toBeInstanceOf(InvalidOptionsError);
    expect(statSync(src).size).toBe(size);
    expect(statSync(join(dir, 'victim.gguf.tmp')).size).toBe(size);
    await expect(quantizeGguf(src, join(dir, 'x.gguf'), { type: 'q8_0', threads: 1e6 })).rejects.toBeInstanceOf(InvalidOptionsError);
  });

    it('rejects an unknown type with the supported list', () => {
    const r = cli('quantize', ensureFixture('llama', 'f32'), join(dir, 'x.gguf'), '--type', 'q9_9');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--type: expected one of q8_0, q4_0/);
  });
});
