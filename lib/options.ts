/**
 * Option schemas (zod). Every public entry point parses its options here, before anything reaches
 * native code; a bad option becomes an InvalidOptionsError naming the option, what was expected and
 * what was given (with a "did you mean" hint for misspelled keys).
 */
import { z } from 'zod';
import { InvalidOptionsError } from './errors.js';
import { KvOptionsSchema } from './kv/kv-options.js';

const positiveInt = z.number().int().positive();

export const LoadModelOptionsSchema = z.strictObject({
  /** Path of the GGUF file. */
  path: z.string().min(1),
  /** "cpu", "cuda" (typed error when this build or machine cannot run it; never a silent fallback) or "auto" (CUDA when usable, else CPU). */
  backend: z.enum(['cpu', 'auto', 'cuda']).default('auto'),
  /** Compute threads of this model's contexts unless createContext({ threads }) says otherwise. Default: physical cores. */
  threads: positiveInt.max(1024).optional(),
});
export type LoadModelOptions = z.input<typeof LoadModelOptionsSchema>;

export const ContextOptionsSchema = z.strictObject({
  /** Maximum tokens per sequence (prompt + generated). Default: min(training context, 4096). */
  contextSize: positiveInt.max(1 << 24).optional(),
  /** Number of sequences that can be acquired from this context. */
  sequences: positiveInt.max(256).default(1),
  /** Compute threads. Default: physical cores. */
  threads: positiveInt.max(1024).optional(),
  /** Prefill chunk size in tokens. */
  batchSize: positiveInt.max(1 << 16).default(512),
  /** KV cache configuration: head-selective retention (RLKV), later eviction and storage codecs. */
  kv: KvOptionsSchema.optional(),
  /**
   * Where this context computes: 'model' (where the model was loaded) or 'cpu' (the CPU, also for a model
   * loaded on CUDA: its weights stay mapped on the host; calibration runs there).
   */
  backend: z.enum(['model', 'cpu']).default('model'),
});
export type ContextOptions = z.input<typeof ContextOptionsSchema>;

export const SamplingOptionsSchema = z.strictObject({
  /** 0 = greedy. */
  temperature: z.number().min(0).max(100).default(0),
  topK: z.number().int().min(0).default(40),
  topP: z.number().gt(0).max(1).default(0.95),
  minP: z.number().min(0).max(1).default(0.05),
  repeatPenalty: z.number().gt(0).default(1),
  presencePenalty: z.number().default(0),
  frequencyPenalty: z.number().default(0),
  penaltyLastN: z.number().int().min(-1).default(64),
  /** Seed of the sampler's RNG (same seed, same tokens). */
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
});
export type SamplingOptions = z.input<typeof SamplingOptionsSchema>;

export const ReasoningOptionsSchema = z.strictObject({
  /**
   * Maximum reasoning tokens the model samples (its own open tag included; none when the prompt opened the
   * reasoning). When reached, the next sampled token is dropped and `budgetMessage` + the close tag are
   * evaluated as tokens instead; they count as reasoning tokens. 0 closes the reasoning at once.
   */
  budget: z.number().int().min(0).optional(),
  /** Text injected before the close tag when the budget is reached (e.g. "\nTime is up, answering now.\n"). */
  budgetMessage: z.string().optional(),
  /** Split reasoning from the answer (reasoning-* events). false: everything is text-delta. Default true. */
  separate: z.boolean().default(true),
});
export type ReasoningOptions = z.input<typeof ReasoningOptionsSchema>;

export const GenerateOptionsSchema = z.strictObject({
  /** Maximum number of generated tokens. */
  maxTokens: positiveInt.default(256),
  sampling: SamplingOptionsSchema.default(SamplingOptionsSchema.parse({})),
  /** Add the BOS token when the model asks for it (as llama.cpp does). Only for string prompts. */
  addBos: z.boolean().optional(),
  /** Stop at end-of-generation tokens (EOS/EOT). */
  stopAtEog: z.boolean().default(true),
  signal: z.custom<AbortSignal>((v) => v === undefined || (typeof v === 'object' && v !== null && 'aborted' in v), {
    message: 'expected an AbortSignal',
  }).optional(),
  /** Strings that end the answer (not emitted); finish reason 'stop'. */
  stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(32)]).optional(),
  reasoning: ReasoningOptionsSchema.optional(),
  /** Jinja chat template for message prompts; default: the model's `tokenizer.chat_template`. */
  chatTemplate: z.string().min(1).optional(),
  /** Message prompts: end with the assistant header so the model answers. */
  addGenerationPrompt: z.boolean().default(true),
  /** Message prompts: extra template variables, e.g. `{ enable_thinking: false }` (Qwen3). */
  templateKwargs: z.record(z.string(), z.unknown()).optional(),
  /** A `stats` event (decode speed over the interval, KV memory) every this many generated tokens; 0: none. */
  statsInterval: z.number().int().min(0).default(0),
  /**
   * Keep a copy of the cache's lossy heads (stream and evicting heads, the f16 part of quantized ones) at the end
   * of the prompt, so that the next generate() whose prompt starts with this one (a chat's next turn) resumes
   * there instead of re-evaluating from the start: a compressed cache cannot rewind into tokens it dropped or
   * quantized while decoding. Costs the memory of that copy (`memory().breakdown.checkpoint`, in
   * bytesAllocated). 'auto' (default): unless an evicting head then holds more than the policy's capacity (a
   * prompt longer than the capacity: its copy would keep the whole prompt's cache alive while decoding); true:
   * always; false: never. Either backend (on CUDA the copy is in device memory); plain f16 caches rewind exactly and keep none.
   */
  checkpoint: z.union([z.boolean(), z.literal('auto')]).default('auto'),
});
export type GenerateOptions = z.input<typeof GenerateOptionsSchema>;

function levenshtein(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

function describe(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (v === null) return 'null';
  if (typeof v === 'string') return `${JSON.stringify(v)} (string)`;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return `${String(v)} (${typeof v})`;
  if (Array.isArray(v)) return 'an array';
  return `a value of type ${typeof v}`;
}

function getAt(root: unknown, path: PropertyKey[]): unknown {
  let cur = root;
  for (const k of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

function shapeKeys(schema: z.ZodType, path: PropertyKey[]): string[] {
  let s: unknown = schema;
  for (const k of path) {
    const inner = unwrap(s);
    const shape = (inner as { shape?: Record<string, unknown> } | undefined)?.shape;
    if (!shape) return [];
    s = shape[String(k)];
  }
  const inner = unwrap(s);
  return Object.keys((inner as { shape?: Record<string, unknown> } | undefined)?.shape ?? {});
}

function unwrap(s: unknown): unknown {
  let cur = s as { unwrap?: () => unknown; def?: { innerType?: unknown } } | undefined;
  for (let i = 0; i < 5 && cur; i++) {
    if (typeof cur.unwrap === 'function') cur = cur.unwrap() as typeof cur;
    else if (cur.def?.innerType) cur = cur.def.innerType as typeof cur;
    else break;
  }
  return cur;
}

/** Parses options with a schema; throws InvalidOptionsError with a precise message. */
export function parseOptions<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  const lines = r.error.issues.map((issue) => {
    const where = [what, ...issue.path.map(String)].join('.');
    if (issue.code === 'unrecognized_keys') {
      const known = shapeKeys(schema, issue.path);
      return issue.keys
        .map((k) => {
          const best = known.map((c) => [c, levenshtein(k.toLowerCase(), c.toLowerCase())] as const).sort((a, b) => a[1] - b[1])[0];
          const hint = best && best[1] <= Math.max(2, Math.floor(k.length / 3)) ? ` (did you mean "${best[0]}"?)` : '';
          return `${what}${issue.path.length ? '.' + issue.path.join('.') : ''}: unknown option "${k}"${hint}`;
        })
        .join('; ');
    }
    const received = describe(getAt(value, issue.path));
    return `${where}: ${issue.message.replace(/^Invalid input: /, '')}, but received ${received}`;
  });
  throw new InvalidOptionsError(`Invalid options: ${lines.join('; ')}`, 'ERR_INVALID_OPTIONS', r.error.issues);
}
