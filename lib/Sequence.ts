/**
 * A sequence: one stream of tokens with its own KV cache. `generate()` is a pull-based async
 * generator: each step awaits one native eval (off the event loop), so a slow consumer throttles
 * decoding; `break`, an AbortSignal or dispose() stop it promptly (the native side checks an abort
 * flag between layers, so even a long prefill chunk stops within one layer).
 */
import type { AddonKvMemory, AddonSequence } from './addon-types.js';
import type { Context } from './Context.js';
import { AbortError, BusyError, callNative, ContextFullError, DisposedError, LlmError } from './errors.js';
import { GenerateOptionsSchema, parseOptions, type GenerateOptions } from './options.js';

const EMPTY_KV_MEMORY: AddonKvMemory = {
  logicalTokens: 0, residentTokens: 0, bytesUsed: 0, bytesAllocated: 0,
  breakdown: { keys: 0, values: 0, positions: 0, metadata: 0, poolSlack: 0 },
};

export type FinishReason = 'eos' | 'length' | 'aborted' | 'context-full';

export interface Usage {
  promptTokens: number;
  /** Prompt tokens served from the cache of the previous call (common prefix), not recomputed. */
  cachedPromptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

export interface Timings {
  /** Milliseconds spent evaluating the (uncached) prompt, including the first sampled token. */
  prefillMs: number;
  decodeMs: number;
  timeToFirstTokenMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
}

export type GenerateEvent =
  | { type: 'start'; promptTokens: number; cachedPromptTokens: number }
  | { type: 'prefill-progress'; processed: number; total: number }
  | { type: 'text-delta'; text: string; tokens: number[] }
  | {
      type: 'finish';
      finishReason: FinishReason;
      text: string;
      tokens: number[];
      usage: Usage;
      timings: Timings;
      kv: AddonKvMemory;
    };

export class Sequence {
  readonly context: Context;
  /** @internal */
  readonly _native: AddonSequence;
  private _disposed = false;
  private _busy = false;
  private _tokens: number[] = []; // tokens evaluated into the KV cache, in order
  private readonly _onDispose: () => void;

  /** @internal */
  constructor(context: Context, native: AddonSequence, onDispose: () => void) {
    this.context = context;
    this._native = native;
    this._onDispose = onDispose;
  }

  get disposed(): boolean { return this._disposed; }
  /** Tokens currently held in this sequence's KV cache. */
  get tokens(): readonly number[] { return this._tokens; }

  private _ensureUsable(): void {
    if (this._disposed) throw new DisposedError('The sequence has been disposed');
    if (this.context.disposed || this.context.model.disposed) throw new DisposedError('The context or model of this sequence has been disposed');
  }

  /**
   * KV cache memory of this sequence: logical vs resident tokens, bytes used vs allocated, a breakdown
   * (keys, values, positions, metadata, pool slack) and, with `{ detail: 'heads' }`, per-(layer, KV
   * head) typed arrays (row-major: index = layer * nHeadKv + head).
   */
  memory(options: { detail?: 'summary' | 'heads' } = {}): AddonKvMemory {
    this._ensureUsable();
    return this._native.memory(options.detail === 'heads');
  }

  /** Empties the KV cache. */
  clear(): void {
    this._ensureUsable();
    if (this._busy) throw new BusyError('clear: the sequence is busy generating');
    this._native.removeFrom(0);
    this._tokens = [];
  }

  /**
   * Generates a continuation of `prompt` (text, or token ids used as is). The KV cache keeps the common
   * prefix with the previous call, so multi-turn use re-evaluates only what changed.
   */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GenerateEvent, void, void> {
    this._ensureUsable();
    const opts = parseOptions(GenerateOptionsSchema, options, 'generate');
    if (this._busy) throw new BusyError('generate: another generation is in progress on this sequence');
    const model = this.context.model;
    const tokenizer = model.tokenizer;
    const promptTokens = typeof prompt === 'string' ? tokenizer.encode(prompt, { addBos: opts.addBos }) : [...prompt];
    if (promptTokens.length === 0) throw new LlmError('generate: the prompt is empty (no tokens)', 'ERR_INVALID_OPTIONS');
    for (const t of promptTokens) {
      if (!Number.isInteger(t) || t < 0 || t >= model.info.nVocab) {
        throw new LlmError(`generate: prompt token ${String(t)} is not a valid id in [0, ${model.info.nVocab})`, 'ERR_INVALID_OPTIONS');
      }
    }
    const signal = opts.signal;
    if (signal?.aborted) throw new AbortError('generate: the signal was already aborted');

    this._busy = true;
    const onAbort = () => this._native.abort();
    signal?.addEventListener('abort', onAbort);
    const started = performance.now();
    const generated: number[] = [];
    let text = '';
    let finishReason: FinishReason = 'length';
    let prefillMs = 0;
    let ttft = 0;
    let decodeStart = 0;
    let cached = 0;
    try {
      this._native.setSampler(opts.sampling);
      // reuse the common prefix; always re-evaluate at least the last prompt token to get logits
      while (cached < this._tokens.length && cached < promptTokens.length - 1 && this._tokens[cached] === promptTokens[cached]) cached++;
      cached = this._native.removeFrom(cached);  // fewer when STREAM heads already dropped tokens past it
      this._tokens.length = cached;
      yield { type: 'start', promptTokens: promptTokens.length, cachedPromptTokens: cached };

      const batch = this.context.info.batchSize;
      let next: number | undefined;
      const todo = promptTokens.slice(cached);
      if (promptTokens.length + 1 > this.context.contextSize) {
        throw new ContextFullError(`generate: the prompt has ${promptTokens.length} tokens, the context holds ${this.context.contextSize}`);
      }
      for (let i = 0; i < todo.length; i += batch) {
        const chunk = todo.slice(i, i + batch);
        const last = i + batch >= todo.length;
        next = await this._eval(chunk, last);
        this._tokens.push(...chunk);
        if (!last) yield { type: 'prefill-progress', processed: cached + i + chunk.length, total: promptTokens.length };
      }
      prefillMs = performance.now() - started;
      ttft = prefillMs;
      decodeStart = performance.now();

      const decoder = tokenizer.createDecoder();
      while (next !== undefined) {
        const token = next;
        generated.push(token);
        if (opts.stopAtEog && tokenizer.isEog(token)) { finishReason = 'eos'; break; }
        const piece = decoder.push(token);
        if (piece) text += piece;
        yield { type: 'text-delta', text: piece, tokens: [token] };
        if (generated.length >= opts.maxTokens) { finishReason = 'length'; break; }
        if (this._tokens.length + 1 >= this.context.contextSize) { finishReason = 'context-full'; break; }
        next = await this._eval([token], true);
        this._tokens.push(token);
      }
      const tail = decoder.flush();
      if (tail) {
        text += tail;
        yield { type: 'text-delta', text: tail, tokens: [] };
      }
    } catch (err) {
      if (err instanceof AbortError || (signal?.aborted && err instanceof LlmError && err.code === 'ERR_ABORTED')) {
        finishReason = 'aborted';
      } else {
        throw err;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this._busy = false;
    }
    const decodeMs = decodeStart ? performance.now() - decodeStart : 0;
    const decodedSteps = Math.max(0, generated.length - 1); // the first token comes from the prefill
    yield {
      type: 'finish',
      finishReason,
      text,
      tokens: generated,
      usage: {
        promptTokens: promptTokens.length,
        cachedPromptTokens: cached,
        completionTokens: generated.length,
        totalTokens: promptTokens.length + generated.length,
      },
      timings: {
        prefillMs,
        decodeMs,
        timeToFirstTokenMs: ttft,
        prefillTokensPerSecond: prefillMs > 0 ? ((promptTokens.length - cached) / prefillMs) * 1000 : 0,
        decodeTokensPerSecond: decodeMs > 0 && decodedSteps > 0 ? (decodedSteps / decodeMs) * 1000 : 0,
      },
      kv: this._disposed ? EMPTY_KV_MEMORY : this._native.memory(),
    };
  }

  private async _eval(tokens: number[], sample: boolean): Promise<number | undefined> {
    if (this._disposed) throw new AbortError('generate: the sequence was disposed');
    return callNative(() => this._native.eval(Int32Array.from(tokens), { sample }));
  }

  /** Stops a generation in progress (it finishes with finishReason 'aborted'). */
  abort(): void {
    if (!this._disposed) this._native.abort();
  }

  async dispose(): Promise<void> {
    if (this._disposed) return;
    this._disposed = true;
    this._native.dispose();
    this._onDispose();
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.dispose(); }
}
