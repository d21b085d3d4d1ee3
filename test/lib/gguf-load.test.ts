// Loading bad files through the public API: hundreds of truncated and byte-flipped fixture files never
// crash the process or hang; each load either succeeds or rejects with a typed LlmError. Plus the
// specific errors a user meets: missing file, not a GGUF, unsupported architecture.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileAccessError, GgufFormatError, LlmError, loadModel, readGgufInfo, UnsupportedModelError } from '../../lib/index.js';
import { ensureFixture, tinyGgufSpec } from '../fixtures/make-tiny-gguf.js';
import { gv, writeGgufSync, type GgufValue } from '../fixtures/gguf-writer.js';
import { getAddon } from '../../lib/binding.js';
import { haveSharedFile, sharedData, stories260K } from '../helpers/shared-data.js';

const dir = mkdtempSync(join(tmpdir(), 'thinkcache-gguf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('loading malformed GGUF files', () => {
  it('400 truncations and byte flips: always a clean load or a typed error', async () => {
    const base = readFileSync(ensureFixture('llama', 'q8_0'));
    const info = await readGgufInfo(ensureFixture('llama', 'q8_0'));
    const headerEnd = info.dataOffset; // metadata + tensor table: where the counts and offsets live
    const rand = rng(99);
    const outcomes: Record<string, number> = {};
    for (let i = 0; i < 400; i++) {
      let buf = Buffer.from(base);
      const kind = i % 4;
      if (kind === 0) {
        buf = buf.subarray(0, Math.floor(rand() * buf.length));
      } else {
        const flips = 1 + Math.floor(rand() * 6);
        for (let k = 0; k < flips; k++) {
          const at = Math.floor(rand() * (kind === 3 ? buf.length : headerEnd));
          buf[at] = kind === 2 ? 0xff : buf[at]! ^ (1 << Math.floor(rand() * 8));
        }
      }
      const path = join(dir, `m${i}.gguf`);
      writeFileSync(path, buf);
      try {
        const model = await loadModel({ path });
        outcomes.loaded = (outcomes.loaded ?? 0) + 1;
        await model.dispose();
      } catch (err) {
        if (!(err instanceof LlmError)) throw new Error(`case ${i}: untyped error ${String(err)}`, { cause: err });
        expect(err.message.length).toBeGreaterThan(10);
        outcomes[err.code] = (outcomes[err.code] ?? 0) + 1;
      }
      rmSync(path);
    }
    console.log('malformed GGUF outcomes:', outcomes);
    expect(outcomes.ERR_GGUF_FORMAT).toBeGreaterThan(100);
  });

  // Files whose structure is sound but whose values are not: every metadata value the loaders read (hyperparameters,
  // token ids, vocabulary arrays, tokenizer model) and the tensor table (shapes, types, missing and renamed
  // tensors), one or two at a time. Each file either loads and then tokenizes and generates, or is refused with a
  // typed error, at whichever step; nothing crashes or throws untyped.
  // (THINKCACHE_FUZZ_N=20000 for a longer run)
  const nAltered = Number(process.env.THINKCACHE_FUZZ_N ?? 1200);
  it(`${nAltered} files with altered metadata values and tensor tables: load, tokenize and generate, or a typed error`, async () => {
    const rand = rng(2026);
    const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const bases = [tinyGgufSpec({ arch: 'llama', type: 'f32', seed: 5 }), tinyGgufSpec({ arch: 'llama', type: 'q8_0', seed: 6, nHeadKv: 4 })];  // (SPM vocabularies: the Qwen one is 151k tokens)
    const INTS = [0, 1, 2, 3, 7, 63, 64, 65, 511, 4096, 65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff];
    const FLOATS = [0, -1, 1e-30, 1e30, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 0.5];
    const outcomes: Record<string, number> = {};
    const steps: Record<string, number> = {};
    for (let i = 0; i < nAltered; i++) {
      const { spec: base, nVocab } = bases[i % bases.length]!;
      const md = base.metadata.map(([k, v]) => [k, v] as [string, GgufValue]);
      const tensors = base.tensors.map((t) => ({ ...t }));
      const what: string[] = [];
      for (let m = 1 + Math.floor(rand() * 2); m > 0; m--) {
        if (rand() < 0.75) {
          const at = Math.floor(rand() * md.length);
          const [key, v] = md[at]!;
          if (key === 'general.architecture' && rand() < 0.7) continue;  // (most files keep a known architecture)
          if (rand() < 0.1) { md.splice(at, 1); what.push(`-${key}`); continue; }
          let nv: GgufValue;
          if (v.type === 'STRING') nv = gv.str(pick(['', 'llama', 'qwen2', 'qwen3', 'gpt2', 'bpe', 'spm', 'x'.repeat(300)]));
          else if (v.type === 'BOOL') nv = gv.bool(!v.value);
          else if (v.type === 'FLOAT32' || v.type === 'FLOAT64') nv = gv.f32(pick(FLOATS));
          else if (v.type === 'ARRAY') {
            const items = Array.from(v.items as ArrayLike<unknown>);
            const r = rand();
            const cut = r < 0.3 ? [] : r < 0.6 ? items.slice(0, Math.floor(items.length * rand())) : v.itemType === 'STRING'
              ? items.map((x) => (rand() < 0.05 ? pick(['', '<0xZZ>', '▁', '\u0000', 'x'.repeat(200)]) : x))
              : items.map((x) => (rand() < 0.05 ? pick([-1, 99, 1e9, Number.NaN]) : x));
            nv = { ...v, items: cut } as GgufValue;
          } else if (/token_id$/.test(key)) nv = { ...v, value: pick([0, nVocab - 1, nVocab, nVocab + 100, 0xffffffff]) } as GgufValue;
          else nv = { ...v, value: pick(INTS) } as GgufValue;
          md[at] = [key, nv];
          what.push(key);
        } else {
          const at = Math.floor(rand() * tensors.length);
          const t = tensors[at]!;
          const r = rand();
          if (r < 0.2) { tensors.splice(at, 1); what.push(`-${t.name}`); continue; }
          if (r < 0.35) { tensors[at] = { ...t, name: `${t.name}.x` }; what.push(`rename ${t.name}`); continue; }
          if (r < 0.5) { tensors[at] = { ...t, type: pick(['F32', 'F16', 'Q8_0', 'BF16'] as const) }; what.push(`type ${t.name}`); continue; }
          // another shape, with data to match
          const ne = t.ne.map((x) => x);
          const d = Math.floor(rand() * ne.length);
          ne[d] = pick([1, Math.max(1, ne[d]! - 1), ne[d]! + 1, ne[d]! * 2]);
          if (rand() < 0.3) ne.push(2);
          tensors[at] = { ...t, ne, data: new Float32Array(ne.reduce((a, b) => a * b, 1)).fill(0.01) };
          what.push(`shape ${t.name} [${ne.join(',')}]`);
        }
      }
      const path = join(dir, `s${i}.gguf`);
      try {
        writeGgufSync(path, { ...base, metadata: md, tensors });
      } catch {
        outcomes.unwritable = (outcomes.unwritable ?? 0) + 1;  // (a block type the new shape cannot hold)
        continue;
      }
      let step = 'load';
      try {
        await using model = await loadModel({ path });
        step = 'context';
        await using ctx = await model.createContext({ contextSize: 64, threads: 1, batchSize: 16 });
        step = 'tokenize';
        const toks = model.tokenize('Once upon a time, 12 dogs ran.');
        step = 'generate';
        const seq = ctx.acquireSequence();
        for await (const ev of seq.generate(toks.length > 0 ? toks : [0], { maxTokens: 3, stopAtEog: false })) if (ev.type === 'finish') model.detokenize(ev.tokens);
        outcomes.ok = (outcomes.ok ?? 0) + 1;
      } catch (err) {
        if (!(err instanceof LlmError)) throw new Error(`case ${i} (${what.join('; ')}), ${step}: untyped error ${String(err)}`, { cause: err });
        // (an exception the native side caught and wrapped is a missing check, not a refusal)
        if (err.code === 'ERR_INTERNAL') throw new Error(`case ${i} (${what.join('; ')}), ${step}: ${err.message}`, { cause: err });
        expect(err.message.length).toBeGreaterThan(10);
        outcomes[err.code] = (outcomes[err.code] ?? 0) + 1;
        steps[step] = (steps[step] ?? 0) + 1;
      }
      rmSync(path);
    }
    console.log('altered GGUF outcomes:', outcomes, 'refused at:', steps);
    expect(outcomes.ok).toBeGreaterThan(nAltered / 10);
    expect(Object.keys(outcomes).length).toBeGreaterThan(2);
  });

  it('a missing file is a FileAccessError naming the path', async () => {
    await expect(loadModel({ path: join(dir, 'nope.gguf') })).rejects.toSatisfy((e: unknown) => e instanceof FileAccessError && /nope\.gguf/.test((e as Error).message));
  });

  it('a non-GGUF file is a GgufFormatError about the magic', async () => {
    const p = join(dir, 'text.gguf');
    writeFileSync(p, 'this is not a gguf file at all, just some text');
    await expect(loadModel({ path: p })).rejects.toSatisfy((e: unknown) => e instanceof GgufFormatError && /magic/.test((e as Error).message));
  });

  it('an unsupported architecture lists the supported ones', async () => {
    const p = join(dir, 'gpt2.gguf');
    writeGgufSync(p, { metadata: [['general.architecture', gv.str('gpt2')]], tensors: [] });
    await expect(loadModel({ path: p })).rejects.toSatisfy(
      (e: unknown) => e instanceof UnsupportedModelError && /gpt2/.test((e as Error).message) && /llama, qwen2, qwen3/.test((e as Error).message),
    );
  });

  it('string arrays cross the boundary packed: the same strings as one by one, invalid UTF-8 included', async () => {
    const addon = getAddon();
    const texts = ['', 'a', 'Ġhello', 'é', '中文', '🦙', 'x🦙y', 'x'.repeat(1000), '\u2581▁', 'BAD1', 'tail'];
    const p = join(dir, 'strings.gguf');
    writeGgufSync(p, {
      metadata: [
        ['general.architecture', gv.str('llama')],
        ['valid', gv.arr('STRING', texts)],
        ['broken', gv.arr('STRING', texts.map((t) => t.replace('BAD1', 'BAD2')))],
        ['__proto__', gv.arr('STRING', ['not', 'a prototype'])],
      ],
      tensors: [],
    });
    // 'BAD2' becomes 0xC3 '(' 'D' '2': a lead byte without its continuation byte, in the second array only
    const bytes = readFileSync(p);
    const at = bytes.indexOf(Buffer.from('BAD2'));
    bytes[at] = 0xc3; bytes[at + 1] = 0x28;
    writeFileSync(p, bytes);
    const raw = (await addon.readGgufMetadata(p, true, true)).metadata!;
    expect(raw['valid']).toHaveProperty('packedStrings');           // one string + offsets
    expect(Array.isArray(raw['broken'])).toBe(true);                // invalid UTF-8: one by one, V8 decodes it
    const plain = (await addon.readGgufMetadata(p, true, false)).metadata!;
    const md = (await readGgufInfo(p)).metadata;                    // (packed, then unpacked)
    expect(md['valid']).toEqual(texts);
    expect(md['broken']).toEqual(plain['broken']);
    expect((md['broken'] as string[])[9]).toBe('\uFFFD(D2');
    expect(Object.getPrototypeOf(md)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(md, '__proto__')?.value).toEqual(['not', 'a prototype']);
    // every GGUF at hand: fixtures, and the real vocabularies and model when ../shared/data is there
    const files = [ensureFixture('llama', 'q8_0'), ensureFixture('qwen2', 'f16'), ensureFixture('qwen3', 'f32')];
    const vocabDir = join(sharedData, 'tokenizers', 'llama.cpp-vocab');
    if (existsSync(vocabDir)) files.push(...readdirSync(vocabDir).filter((f) => f.endsWith('.gguf')).map((f) => join(vocabDir, f)));
    if (haveSharedFile(stories260K, 'stories260K in the packed-metadata check')) files.push(stories260K);
    for (const f of files) expect((await readGgufInfo(f)).metadata, f).toEqual((await addon.readGgufMetadata(f, true, false)).metadata);
    const model = await loadModel({ path: ensureFixture('qwen2', 'f16') });
    expect(model.metadata).toEqual((await addon.readGgufMetadata(ensureFixture('qwen2', 'f16'), true, false)).metadata);
    await model.dispose();
  });

  it('a "__proto__" metadata key is an own key, not the metadata object\'s prototype', async () => {
    const p = join(dir, 'proto.gguf');
    writeGgufSync(p, { metadata: [['general.architecture', gv.str('gpt2')], ['__proto__', gv.str('not a prototype')], ['constructor', gv.u32(7)]], tensors: [] });
    const md = (await readGgufInfo(p)).metadata;
    expect(Object.getPrototypeOf(md)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(md, '__proto__')?.value).toBe('not a prototype');
    expect(md['constructor']).toBe(7);
    expect(md['general.architecture']).toBe('gpt2');
  });

    it('the error keeps the caller\'s stack', async () => {
    const err = (await loadModel({ path: join(dir, 'nope.gguf') }).catch((e: Error) => e)) as Error;
    expect(err.stack).toMatch(/gguf-load\.test\.ts/);
  });
});
