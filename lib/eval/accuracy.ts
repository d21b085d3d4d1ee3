/**
 * Free-running task accuracy of KV configurations (ALGORITHMS.md §5, P2): every problem is rendered with the
 * model's chat template, decoded greedily until end-of-generation (or the token cap, or a repetition loop),
 * and its answer — the text after the reasoning — is checked against the reference. Per configuration we
 * report accuracy, mean output length, the fraction that hit the cap, the loop rate, decode speed and the KV
 * bytes each sequence held at its end, so that a saving is always shown next to what it cost.
 *
 * Problem sets: the tiny reasoner's held-out tasks (bundled, exact-match answers) and JSONL files with
 * `question`/`problem` and `answer` fields (GSM8K, MATH-500, AIME, AMC in ../shared/data/eval), whose
 * answers are taken from the last `\boxed{}` and compared after normalization (numbers numerically; no
 * symbolic algebra, so equivalent but differently written expressions count as wrong).
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../binding.js';
import { InvalidOptionsError } from '../errors.js';
import type { Model } from '../Model.js';
import type { EffectiveKv, KvOptions } from '../kv/kv-options.js';

export interface AccuracyProblem {
  /** Task name (e.g. 'add', 'gsm8k'). */
  task: string;
  id: string;
  /** The user message. */
  question: string;
  /** The reference answer. */
  answer: string;
  /** 'exact': the answer text equals `answer` after trimming; 'math': last \boxed{} vs `answer`, normalized. */
  check: 'exact' | 'math';
}

/** The three held-out tasks of the bundled tiny reasoner (tiny/data/test-*.jsonl). */
export const TINY_TASKS = ['add', 'chase', 'cups'] as const;

const MATH_SUFFIX = '\nPlease reason step by step, and put your final answer within \\boxed{}.';

/** Path of a file shipped with the package (tiny/model, tiny/data). */
export function bundledPath(...parts: string[]): string {
  return path.join(packageRoot(), ...parts);
}

export const TINY_MODEL_FILE = 'thinkcache-tiny-reasoner.gguf';

/** The bundled tiny reasoner, or a typed error saying how to get it. */
export function tinyModelPath(): string {
  const p = bundledPath('tiny', 'model', TINY_MODEL_FILE);
  if (!existsSync(p)) {
    throw new InvalidOptionsError(`the bundled tiny reasoner is missing (${p}); train and export it with tiny/finalize.sh (tiny/README.md), or pass --model`);
  }
  return p;
}

function readJsonl(file: string): Record<string, unknown>[] {
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch (e) { throw new InvalidOptionsError(`cannot read problem file ${file}: ${(e as Error).message}`); }
  return text.split('\n').filter((l) => l.trim() !== '').map((l, i) => {
    try { return JSON.parse(l) as Record<string, unknown>; } catch { throw new InvalidOptionsError(`${file}:${i + 1}: not a JSON object`); }
  });
}

/** Held-out problems of one tiny task (the first n of 100). */
export function loadTinyProblems(task: string, n = 100): AccuracyProblem[] {
  if (!(TINY_TASKS as readonly string[]).includes(task)) throw new InvalidOptionsError(`unknown tiny task "${task}" (expected one of ${TINY_TASKS.join(', ')})`);
  return readJsonl(bundledPath('tiny', 'data', `test-${task}.jsonl`)).slice(0, n).map((o) => ({
    task, id: String(o.seed), question: String(o.question), answer: String(o.answer), check: 'exact' as const,
  }));
}

/** GSM8K's reference ("... #### 18"), or a plain answer field. */
function referenceAnswer(o: Record<string, unknown>): string {
  const a = String(o.answer ?? '');
  const m = /####\s*(.+)\s*$/.exec(a);
  return (m ? m[1]! : a).trim();
}

/** Problems of a JSONL file: `question` or `problem`, `answer` (GSM8K's `#### x` form accepted). */
export function loadJsonlProblems(file: string, n = Infinity, task = path.basename(file).replace(/(_test)?\.jsonl$/, '')): AccuracyProblem[] {
  return readJsonl(file).slice(0, n).map((o, i) => {
    const q = o.question ?? o.problem;
    if (typeof q !== 'string' || o.answer === undefined) throw new InvalidOptionsError(`${file}:${i + 1}: expected "question" (or "problem") and "answer" fields`);
    return { task, id: String(o.id ?? o.unique_id ?? i), question: q + MATH_SUFFIX, answer: referenceAnswer(o), check: 'math' as const };
  });
}

/** Content of the last \boxed{...} (balanced braces), or null. */
export function lastBoxed(text: string): string | null {
  const i = Math.max(text.lastIndexOf('\\boxed{'), text.lastIndexOf('\\fbox{'));
  if (i < 0) return null;
  let j = text.indexOf('{', i) + 1;
  const start = j;
  for (let depth = 1; j < text.length; j++) {
    if (text[j] === '{') depth++;
    else if (text[j] === '}' && --depth === 0) return text.slice(start, j);
  }
  return null;
}

/** Normalizes a math answer for comparison: spacing, $, \left/\right, \dfrac, units in \text{}, thousands commas. */
export function normalizeMathAnswer(s: string): string {
  let t = s.trim().replace(/^\$+|\$+$/g, '');
  t = t.replace(/\\(left|right|displaystyle|!|,|;|:)/g, '').replace(/\\[dt]frac/g, '\\frac').replace(/\^\{?\\circ\}?/g, '');
  t = t.replace(/\\text\{\s*([^}]*)\}/g, '$1').replace(/\\mbox\{[^}]*\}/g, '').replace(/\s+/g, '');
  if (/^-?\d{1,3}(,\d{3})+(\.\d+)?$/.test(t)) t = t.replace(/,/g, '');
  t = t.replace(/\.$/, '');
  return t;
}

function asNumber(s: string): number | null {
  const frac = /^(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$/.exec(s);
  if (frac) return (frac[1] ? -1 : 1) * Number(frac[2]) / Number(frac[3]);
  const simple = /^(-?\d+)\/(\d+)$/.exec(s);
  if (simple) return Number(simple[1]) / Number(simple[2]);
  if (/^-?(\d+(\.\d*)?|\.\d+)(e-?\d+)?%?$/.test(s)) return Number(s.replace(/%$/, ''));
  return null;
}

/** Whether a model's math answer equals the reference (numerically when both are numbers). */
export function mathAnswersEqual(got: string, want: string): boolean {
  const a = normalizeMathAnswer(got);
  const b = normalizeMathAnswer(want);
  if (a === b) return true;
  const x = asNumber(a), y = asNumber(b);
  return x !== null && y !== null && Math.abs(x - y) <= 1e-6 * Math.max(1, Math.abs(y));
}

/** The answer a completion gives: after the reasoning (exact tasks), or the last \boxed{} (math). */
export function extractAnswer(problem: AccuracyProblem, answerText: string, fullText: string): string | null {
  if (problem.check === 'exact') return answerText.trim();
  return lastBoxed(answerText) ?? lastBoxed(fullText);
}

export interface AccuracyOptions {
  /** Configurations; give `{ label: 'full', kv: {} }` to include the full cache (ratios are taken against it). */
  configs: { label: string; kv: KvOptions }[];
  problems: AccuracyProblem[];
  /** Generated-token cap per problem. */
  maxTokens: number;
  contextSize?: number;
  threads?: number;
  /**
   * RLKV's loop guard: every `window` generated tokens, stop when the last `window` hold fewer than
   * `minDistinct` distinct ids (counted as a loop). Off by default: character-level models such as the
   * tiny reasoner legitimately use few distinct ids.
   */
  loopGuard?: { window: number; minDistinct: number } | false;
  /** Jinja chat template for models without one (default: the model's). */
  chatTemplate?: string;
  /** Called after every problem of every configuration. */
  onResult?: (row: AccuracyRow) => void;
  signal?: AbortSignal;
}

export interface AccuracyRow {
  config: string;
  task: string;
  id: string;
  correct: boolean;
  answer: string | null;
  expected: string;
  completionTokens: number;
  finishReason: string;
  loop: boolean;
  hitMax: boolean;
  /** KV bytes allocated / resident tokens / logical tokens at the end of the problem. */
  kvBytes: number;
  residentTokens: number;
  logicalTokens: number;
  decodeTokensPerSecond: number;
}

export interface AccuracySummary {
  config: string;
  kv: KvOptions;
  effective: EffectiveKv;
  task: string;
  n: number;
  correct: number;
  accuracy: number;
  meanCompletionTokens: number;
  hitMaxRate: number;
  loopRate: number;
  /** Mean over problems of the KV bytes held at the end of each problem; and the largest. */
  kvBytesMean: number;
  kvBytesMax: number;
  /** kvBytesMean ÷ the 'full' configuration's on the same problems (NaN without a 'full' row). */
  kvFraction: number;
  decodeTokensPerSecond: number;
}

/** Runs every configuration over every problem; one summary per (configuration, task), plus the rows. */
export async function runAccuracy(model: Model, opts: AccuracyOptions): Promise<{ summaries: AccuracySummary[]; rows: AccuracyRow[] }> {
  if (opts.configs.length === 0) throw new InvalidOptionsError('runAccuracy: no configurations');
  if (opts.problems.length === 0) throw new InvalidOptionsError('runAccuracy: no problems');
  const rows: AccuracyRow[] = [];
  const summaries: AccuracySummary[] = [];
  const tasks = [...new Set(opts.problems.map((p) => p.task))];
  const guard = opts.loopGuard || undefined;
  const need = Math.max(...opts.problems.map((p) => model.tokenize(p.question, { addBos: false }).length)) + opts.maxTokens + 64;
  const contextSize = opts.contextSize ?? Math.min(Math.max(need, 256), model.info.nCtxTrain || need);
  for (const cfg of opts.configs) {
    await using ctx = await model.createContext({ contextSize, ...(opts.threads ? { threads: opts.threads } : {}), kv: cfg.kv });
    const cfgRows: AccuracyRow[] = [];
    for (const p of opts.problems) {
      opts.signal?.throwIfAborted();
      const ac = new AbortController();
      const onOuter = () => ac.abort();
      opts.signal?.addEventListener('abort', onOuter, { once: true });
      const ids: number[] = [];
      let loop = false;
      let finish: { text: string; reasoning: string; tokens: number[]; finishReason: string; kv: { bytesAllocated: number; residentTokens: number; logicalTokens: number }; timings: { decodeTokensPerSecond: number } } | undefined;
      await using seq = ctx.acquireSequence();
      try {
        for await (const ev of seq.generate([{ role: 'user', content: p.question }], { maxTokens: opts.maxTokens, signal: ac.signal, checkpoint: false, ...(opts.chatTemplate ? { chatTemplate: opts.chatTemplate } : {}) })) {
          if (ev.type === 'reasoning-delta' || ev.type === 'text-delta') {
            ids.push(...ev.tokens);
            if (guard && ids.length % guard.window < ev.tokens.length && ids.length >= guard.window && new Set(ids.slice(-guard.window)).size < guard.minDistinct) {
              loop = true;
              ac.abort();
            }
          } else if (ev.type === 'finish') {
            finish = ev;
          }
        }
      } finally {
        opts.signal?.removeEventListener('abort', onOuter);
      }
      opts.signal?.throwIfAborted();
      if (!finish) throw new Error('runAccuracy: generation ended without a finish event');
      const answer = extractAnswer(p, finish.text, `${finish.reasoning}\n${finish.text}`);
      const correct = answer !== null && (p.check === 'exact' ? answer === p.answer : mathAnswersEqual(answer, p.answer));
      const row: AccuracyRow = {
        config: cfg.label, task: p.task, id: p.id, correct, answer, expected: p.answer, completionTokens: finish.tokens.length,
        finishReason: loop ? 'loop' : finish.finishReason, loop, hitMax: !loop && (finish.finishReason === 'length' || finish.finishReason === 'context-full'),
        kvBytes: finish.kv.bytesAllocated, residentTokens: finish.kv.residentTokens, logicalTokens: finish.kv.logicalTokens,
        decodeTokensPerSecond: finish.timings.decodeTokensPerSecond,
      };
      rows.push(row);
      cfgRows.push(row);
      opts.onResult?.(row);
    }
    for (const task of tasks) {
      const rs = cfgRows.filter((r) => r.task === task);
      const mean = (f: (r: AccuracyRow) => number) => rs.reduce((s, r) => s + f(r), 0) / rs.length;
      const correct = rs.filter((r) => r.correct).length;
      summaries.push({
        config: cfg.label, kv: cfg.kv, effective: ctx.effective.kv, task, n: rs.length, correct, accuracy: correct / rs.length,
        meanCompletionTokens: mean((r) => r.completionTokens), hitMaxRate: mean((r) => (r.hitMax ? 1 : 0)), loopRate: mean((r) => (r.loop ? 1 : 0)),
        kvBytesMean: mean((r) => r.kvBytes), kvBytesMax: Math.max(...rs.map((r) => r.kvBytes)), kvFraction: NaN,
        decodeTokensPerSecond: mean((r) => r.decodeTokensPerSecond),
      });
    }
  }
  for (const s of summaries) {
    const full = summaries.find((f) => f.config === 'full' && f.task === s.task);
    if (full && full.kvBytesMean > 0) s.kvFraction = s.kvBytesMean / full.kvBytesMean;
  }
  return { summaries, rows };
}

/** KiB/MiB for KV tables (shared by eval, demo and this module). */
export function kib(n: number): string { return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`; }

/** A readable table of summaries (one line per configuration and task). */
export function formatAccuracyTable(ss: AccuracySummary[]): string {
  const head = ['config', 'task', 'n', 'accuracy', 'mean tokens', 'hit max', 'loops', 'KV at end (mean)', 'of full', 'decode tok/s'];
  const rows = ss.map((s) => [s.config, s.task, String(s.n), `${(100 * s.accuracy).toFixed(1)}%`, s.meanCompletionTokens.toFixed(0),
    `${(100 * s.hitMaxRate).toFixed(0)}%`, `${(100 * s.loopRate).toFixed(0)}%`, kib(s.kvBytesMean),
    Number.isNaN(s.kvFraction) ? '-' : `${(100 * s.kvFraction).toFixed(1)}%`, s.decodeTokensPerSecond.toFixed(0)]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i <= 1 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}
