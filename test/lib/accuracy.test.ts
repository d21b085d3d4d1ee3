// Free-running accuracy harness (ALGORITHMS.md §5 P2): answer extraction and checking, problem loaders, and
// runAccuracy on a seeded fixture (the fixture cannot solve anything; what is checked is the bookkeeping:
// every problem runs under every configuration, KV bytes are measured per sequence, and a compressing
// configuration holds fewer bytes than the full cache on the same problems).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../lib/index.js';
import {
  extractAnswer, lastBoxed, loadJsonlProblems, loadTinyProblems, mathAnswersEqual, normalizeMathAnswer, runAccuracy, TINY_TASKS,
  type AccuracyProblem,
} from '../../lib/eval/accuracy.js';
import { parseKvConfigs } from '../../lib/cli/eval.js';
import { KV_PRESETS } from '../../lib/kv/presets.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { haveSharedFile, sharedData } from '../helpers/shared-data.js';

const dir = mkdtempSync(join(tmpdir(), 'thinkcache-acc-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('answer extraction and checking', () => {
  it('takes the last \\boxed{} with nested braces', () => {
    expect(lastBoxed('x \\boxed{1} then \\boxed{\\frac{1}{2}} end')).toBe('\\frac{1}{2}');
    expect(lastBoxed('no box')).toBeNull();
    expect(lastBoxed('\\boxed{unclosed')).toBeNull();
  });
  it('normalizes and compares math answers', () => {
    expect(normalizeMathAnswer(' $1,234$ ')).toBe('1234');
    expect(normalizeMathAnswer('\\left( 3, \\dfrac{\\pi}{2} \\right)')).toBe('(3,\\frac{\\pi}{2})');
    expect(mathAnswersEqual('27', '27.0')).toBe(true);
    expect(mathAnswersEqual('\\frac{1}{2}', '0.5')).toBe(true);
    expect(mathAnswersEqual('1/4', '0.25')).toBe(true);
    expect(mathAnswersEqual('\\text{ 18 }', '18')).toBe(true);
    expect(mathAnswersEqual('19', '18')).toBe(false);
    expect(mathAnswersEqual('x+1', 'x + 1')).toBe(true);
    expect(mathAnswersEqual('x+1', '1+x')).toBe(false); // no symbolic algebra: documented
  });
  it('exact tasks take the answer text, math tasks the last box', () => {
    const exact: AccuracyProblem = { task: 'add', id: '1', question: 'q', answer: '42', check: 'exact' };
    const math: AccuracyProblem = { ...exact, check: 'math' };
    expect(extractAnswer(exact, ' 42\n', 'ignored')).toBe('42');
    expect(extractAnswer(math, 'so \\boxed{42}.', '')).toBe('42');
    expect(extractAnswer(math, 'no box', 'thinking \\boxed{7}\nno box')).toBe('7');
  });
});

describe('problem loaders', () => {
  it('bundled tiny tasks: 100 held-out problems each with exact answers', () => {
    for (const t of TINY_TASKS) {
      const ps = loadTinyProblems(t);
      expect(ps).toHaveLength(100);
      expect(new Set(ps.map((p) => p.id)).size).toBe(100);
      for (const p of ps.slice(0, 5)) expect(p.answer.length).toBeGreaterThan(0);
    }
    expect(() => loadTinyProblems('sort')).toThrow(/unknown tiny task "sort"/);
  });
  it('JSONL: GSM8K "#### x" references, problem/question fields, errors with line numbers', () => {
    const f = join(dir, 'p.jsonl');
    writeFileSync(f, [JSON.stringify({ question: 'How many?', answer: 'She has 3 + 4 = <<3+4=7>>7.\n#### 7' }), JSON.stringify({ problem: 'Find x.', answer: '\\frac{1}{2}' })].join('\n'));
    const ps = loadJsonlProblems(f);
    expect(ps.map((p) => p.answer)).toEqual(['7', '\\frac{1}{2}']);
    expect(ps[0]!.question).toMatch(/^How many\?\nPlease reason step by step/);
    writeFileSync(f, '{"question":"x"}\n');
    expect(() => loadJsonlProblems(f)).toThrow(/p\.jsonl:1: expected "question"/);
  });
  const gsm = join(sharedData, 'eval', 'gsm8k_test.jsonl');
  it.skipIf(!haveSharedFile(gsm, 'GSM8K/MATH-500 loader test'))('the shared GSM8K and MATH-500 files load with numeric / LaTeX references', () => {
    const g = loadJsonlProblems(gsm, 50);
    expect(g).toHaveLength(50);
    for (const p of g) expect(p.answer).toMatch(/^-?[\d,.]+$/);
    const m = loadJsonlProblems(join(sharedData, 'eval', 'math500_test.jsonl'), 20);
    expect(m.every((p) => p.answer.length > 0)).toBe(true);
  });
});

describe('runAccuracy', () => {
  const TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}";
  const problems: AccuracyProblem[] = [
    { task: 'a', id: '1', question: 'Once upon a time', answer: 'never', check: 'exact' },
    { task: 'a', id: '2', question: 'The cat sat', answer: 'never', check: 'exact' },
    { task: 'b', id: '3', question: 'A dog', answer: '\\boxed{1}', check: 'math' },
  ];
  it('runs every problem under every configuration and measures KV bytes per sequence', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32', { nLayer: 2 }) });
    const seen: string[] = [];
    const { summaries, rows } = await runAccuracy(model, {
      configs: [{ label: 'full', kv: {} }, { label: 'stream', kv: { heads: { layers: { '0': 'stream', '1': 'stream' }, stream: { sinks: 2, recent: 8 } } } }],
      problems, maxTokens: 200, threads: 1, chatTemplate: TEMPLATE, onResult: (r) => seen.push(`${r.config}:${r.id}`),
    });
    expect(seen).toEqual(['full:1', 'full:2', 'full:3', 'stream:1', 'stream:2', 'stream:3']);
    expect(rows).toHaveLength(6);
    expect(summaries.map((s) => `${s.config}/${s.task}/${s.n}`)).toEqual(['full/a/2', 'full/b/1', 'stream/a/2', 'stream/b/1']);
    for (const r of rows) {
      expect(r.correct).toBe(false);
      expect(r.completionTokens).toBeGreaterThan(0);
      expect(r.kvBytes).toBeGreaterThan(0);
      expect(r.logicalTokens).toBeGreaterThan(r.completionTokens);
    }
    const full = summaries.filter((s) => s.config === 'full');
    const stream = summaries.filter((s) => s.config === 'stream');
    for (const s of full) expect(s.kvFraction).toBe(1);
    // the fixture never emits EOS within 200 tokens: every stream run holds 2 + 8 tokens per head
    for (const r of rows.filter((x) => x.config === 'stream')) expect(r.residentTokens).toBe(2 * model.info.nHeadKv * 10);
    for (const s of stream) expect(s.kvFraction).toBeLessThan(0.5); // one 64-token page per head against four
  });
  it('the loop guard stops a run whose window has too few distinct tokens', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32', { nLayer: 2 }) });
    const { rows } = await runAccuracy(model, {
      configs: [{ label: 'full', kv: {} }], problems: problems.slice(0, 1), maxTokens: 60, threads: 1, chatTemplate: TEMPLATE,
      loopGuard: { window: 20, minDistinct: 1000 },
    });
    expect(rows[0]!.loop).toBe(true);
    expect(rows[0]!.finishReason).toBe('loop');
    expect(rows[0]!.completionTokens).toBeLessThan(60);
    expect(rows[0]!.hitMax).toBe(false);
  });
  it('rejects empty inputs and an aborted signal with typed errors', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32', { nLayer: 2 }) });
    await expect(runAccuracy(model, { configs: [], problems, maxTokens: 4 })).rejects.toThrow(/no configurations/);
    await expect(runAccuracy(model, { configs: [{ label: 'full', kv: {} }], problems: [], maxTokens: 4 })).rejects.toThrow(/no problems/);
    const ac = new AbortController();
    ac.abort();
    await expect(runAccuracy(model, { configs: [{ label: 'full', kv: {} }], problems, maxTokens: 4, chatTemplate: TEMPLATE, signal: ac.signal })).rejects.toThrow();
  });
});

describe('KV presets', () => {
  it('every preset is a valid kv option object; profile presets demand a profile', () => {
    for (const p of KV_PRESETS) {
      const [c] = parseKvConfigs([p.name], p.needsProfile ? '/some/profile.tsv' : undefined);
      expect(c!.label).toBe(p.name);
      if (p.needsProfile) expect(() => parseKvConfigs([p.name], undefined)).toThrow(/needs a head profile/);
    }
    expect(() => parseKvConfigs(['rot9'], undefined)).toThrow(/preset name \(full, rlkv-50/);
  });
});
