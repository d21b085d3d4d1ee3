/**
 * A sequence: one stream of tokens with its own KV cache. `generate()` is a pull-based async
 * generator: each step awaits one native eval (off the event loop), so a slow consumer throttles
 * decoding; `break`, an AbortSignal or dispose() stop it promptly (the native side checks an abort
 * flag between layers, so even a long prefill chunk stops within one layer).
 * The prompt is text, token ids, or chat messages rendered with the model's template (lib/chat/). Output
 * goes through the reasoning parser (lib/chat/ReasoningStreamParser.ts), which splits reasoning from the
 * answer and applies stop strings; a reasoning budget injects the close tag as tokens.
 */
import type { AddonKvMemory, AddonSequence } from './addon-types.js';
import { type ChatMessage } from './chat/chat-template.js';
import { detectReasoningTags, promptOpensReasoning } from './chat/reasoning-tags.js';
import { ReasoningStreamParser, type ReasoningClosedBy, type ReasoningStreamPart } from './chat/ReasoningStreamParser.js';
import type { Context } from './Context.js';
import { AbortError, BusyError, callNative, callNativeSync, ContextFullError, DisposedError, InvalidOptionsError, LlmError } from './errors.js';
import { GenerateOptionsSchema, parseOptions, type GenerateOptions } from './options.js';

// Longer prompt texts are tokenized with turns for the event loop (tokenizer.test.ts prints ~12 ms per 10k
// characters of qwen2 BPE on the CI machine, so this is ~15 ms at once at most).
const ASYNC_TOKENIZE_CHARS = 12_000;

const EMPTY_KV_MEMORY: AddonKvMemory = {
  logicalTokens: 0, residentTokens: 0, bytesUsed: 0, bytesAllocated: 0,
  breakdown: { keys: 0, values: 0, positions: 0, metadata: 0, poolSlack: 0, checkpoint: 0 },
  evictedTokens: 0, compactions: 0, compactionMs: 0,
};

/**
 * Why a generation ended: 'eos' an end-of-generation token, 'stop' a stop string, 'length' maxTokens,
 * 'reasoning-budget' the reasoning budget closed the reasoning (and the answer then ended by eos or stop),
 * 'context-full' no room left in the context, 'aborted' signal, break or dispose.
 */
export type FinishReason = 'eos' | 'stop' | 'length' | 'reasoning-budget' | 'aborted' | 'context-full';

export interface Usage {
  promptTokens: number;
  /** Prompt tokens served from the cache of the previous call (common prefix), not recomputed. */
  cachedPromptTokens: number;
  /** Every generated token: reasoning + answer (injected budget tokens and the EOG token included). */
  completionTokens: number;
  /** Tokens of the reasoning, its tags included. */
  reasoningTokens: number;
  /** completionTokens - reasoningTokens. */
  answerTokens: number;
  totalTokens: number;
}

export interface Timings {
  /** Milliseconds the engine spent evaluating the (uncached) prompt, including the first sampled token. */
  prefillMs: number;
  /** Milliseconds the engine spent on decode steps (not the time the consumer took between events). */
  decodeMs: number;
  /** Wall time from the call to the first sampled token (tokenization and the prefill included). */
  timeToFirstTokenMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /** Milliseconds the KV cache spent scoring and compacting (eviction policies) during this call. */
  compactionMs: number;
}

/**
 * Events of `generate()`. Every generated token id appears in exactly one reasoning-start / reasoning-delta /
 * reasoning-end / text-delta event, in order, except the tokens of a matched stop string. Text is always whole
 * characters and never contains part of a tag or of a stop string.
 */
export type GenerateEvent =
  | { type: 'start'; promptTokens: number; cachedPromptTokens: number; reasoningOpenInPrompt: boolean }
  | { type: 'prefill-progress'; processed: number; total: number }
  | { type: 'reasoning-start'; tokens: number[] }
  | { type: 'reasoning-delta'; text: string; tokens: number[] }
  | { type: 'reasoning-end'; tokens: number[]; reasoningTokens: number; closedBy: ReasoningClosedBy }
  | { type: 'text-delta'; text: string; tokens: number[] }
  | {
      /** The KV cache dropped tokens (eviction policy or stream window) during the last step. */
      type: 'kv-compaction';
      evictedTokens: number;
      residentTokens: number;
      logicalTokens: number;
      bytesFreed: number;
      compactionMs: number;
    }
  | {
      /** Every `statsInterval` generated tokens: progress of a long generation (a UI's meter, a benchmark's curve). */
      type: 'stats';
      generatedTokens: number;
      /** Engine decode speed over the tokens since the previous stats event (or the first token). */
      decodeTokensPerSecond: number;
      kv: AddonKvMemory;
    }
  | {
      type: 'finish';
      finishReason: FinishReason;
      /** The answer (reasoning excluded). */
      text: string;
      /** The reasoning, without its tags. */
      reasoning: string;
      /** Every generated token, injected ones included. */
      tokens: number[];
      /** Set when finishReason is 'stop' (or 'reasoning-budget' ended by a stop string). */
      stopString?: string;
      usage: Usage;
      timings: Timings;
      kv: AddonKvMemory;
    };

export type GeneratePrompt = string | readonly number[] | readonly ChatMessage[];

/** Turns changes of the native eviction counters into kv-compaction events (only for compressing caches). */
class KvWatch {
  private evicted: number;
  private ms: number;
  private allocated: number;
  private readonly startMs: number;
  constructor(private readonly read: () => AddonKvMemory | undefined) {
    const m = read() ?? EMPTY_KV_MEMORY;
    this.evicted = m.evictedTokens;
    this.ms = this.startMs = m.compactionMs;
    this.allocated = m.bytesAllocated;
  }
  get totalMs(): number { return this.ms - this.startMs; }
  step(): Extract<GenerateEvent, { type: 'kv-compaction' }> | undefined {
    const m = this.read();
    if (!m) return undefined;  // (disposed: the generation finishes as aborted)
    const evicted = m.evictedTokens - this.evicted;
    const ev = evicted > 0
      ? { type: 'kv-compaction' as const, evictedTokens: evicted, residentTokens: m.residentTokens, logicalTokens: m.logicalTokens,
          bytesFreed: Math.max(0, this.allocated - m.bytesAllocated), compactionMs: m.compactionMs - this.ms }
      : undefined;
    this.evicted = m.evictedTokens;
    this.ms = m.compactionMs;
    this.allocated = m.bytesAllocated;
    return ev;
  }
}

export class Sequence {
  readonly context: Context;
  /** @internal */
  readonly _native: AddonSequence;
  private _disposed = false;
  private _busy = false;
  private _abortRequested = false; // abort() during the current generation or evaluation
  private _tokens: number[] = []; // tokens evaluated into the KV cache, in order
  private _clearing: Promise<void> | undefined;  // clear() in flight
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
    this._refuseWhileClearing('memory');
    return callNativeSync(() => this._native.memory(options.detail === 'heads'));
  }

  /**
   * The positions one cache head holds (coded and f16), ascending: which tokens an eviction policy kept.
   * `head` is the KV head (the query head for `perQueryHead` caches).
   */
  heldPositions(layer: number, head: number): Int32Array {
    this._ensureUsable();
    this._refuseWhileClearing('heldPositions');
    const info = this.context.model.info;
    const ev = this.context.effective.kv.eviction;
    const heads = ev?.policy === 'lazy' && ev.perQueryHead ? info.nHead : info.nHeadKv;
    if (!Number.isInteger(layer) || layer < 0 || layer >= info.nLayer || !Number.isInteger(head) || head < 0 || head >= heads) {
      throw new InvalidOptionsError(`heldPositions: (layer ${String(layer)}, head ${String(head)}) is outside the cache: layer must be an integer in [0, ${info.nLayer}) and head in [0, ${heads})`);
    }
    return callNativeSync(() => this._native.heldPositions(layer, head));
  }

  /**
   * Empties the KV cache and frees its pages. `tokens` is empty at once; the native rewind runs off the
   * event loop (on a CUDA context it waits for the device, which another sequence may be using). A
   * `generate()` or `evaluate()` called meanwhile waits for it; `memory()` and `heldPositions()` throw a
   * `BusyError` until the promise settles.
   */
  async clear(): Promise<void> {
    if (this._clearing) await this._afterClear();  // (only then: a call otherwise takes the sequence before it returns)
    this._ensureUsable();
    if (this._busy) throw new BusyError('clear: the sequence is busy generating');
    this._busy = true;
    this._tokens = [];
    const done = (async () => {
      try {
        await callNative(() => this._native.removeFromAsync(0));
      } catch (e) {
        if (this._live()) throw e;  // (disposed meanwhile: nothing left to clear)
      } finally {
        this._busy = false;
        this._clearing = undefined;
      }
    })();
    this._clearing = done;
    await done;
  }

  private _refuseWhileClearing(what: string): void {
    if (this._clearing) throw new BusyError(`${what}: the sequence is being cleared; await seq.clear() first`);
  }

  /**
   * Makes this sequence a copy of `source`, another sequence of the same context: its KV cache as it is —
   * compressed, evicted, quantized, with the policies' statistics — its tokens and its sampler state, so both
   * go on alike. A long prompt evaluated once then serves several continuations ("compress once, ask many"):
   * each copy's generate() reuses the common prefix. The copy runs off the event loop and takes memory of its
   * own (pages are copied, not shared; on CUDA, device pages from the context's pool); both sequences are busy meanwhile.
   * @example
   *   for await (const _ of doc.generate(longDocument, { maxTokens: 1 })) {}
   *   const q = await doc.fork();   // or: await other.copyFrom(doc)
   *   for await (const ev of q.generate(longDocument + question)) ...
   */
  async copyFrom(source: Sequence): Promise<void> {
    if (this._clearing) await this._afterClear();
    if (source instanceof Sequence && source._clearing) await source._afterClear();
    this._ensureUsable();
    if (!(source instanceof Sequence)) throw new InvalidOptionsError('copyFrom: expected a Sequence');
    if (source === this) throw new InvalidOptionsError('copyFrom: a sequence cannot copy itself');
    if (source.context !== this.context) {
      throw new InvalidOptionsError('copyFrom: the source belongs to another context (a copy stays within one context: the same model, KV options and page pool)');
    }
    source._ensureUsable();
    if (this._busy) throw new BusyError('copyFrom: this sequence is busy generating');
    if (source._busy) throw new BusyError('copyFrom: the source sequence is busy generating');
    this._busy = true;
    source._busy = true;
    try {
      await callNative(() => this._native.copyFromAsync(source._native));
      this._tokens = [...source._tokens];
    } catch (err) {
      this._syncTokens();  // (a copy that ran out of memory leaves this cache empty; a refused one, as it was)
      throw err;
    } finally {
      this._busy = false;
      source._busy = false;
    }
  }

  /**
   * A new sequence of this context holding a copy of this one (copyFrom). Without options it takes a free
   * sequence at once (BusyError when all are in use); with `{ signal }` it waits for one, as
   * `ctx.acquireSequence({ signal })` does.
   */
  async fork(options?: { signal?: AbortSignal }): Promise<Sequence> {
    this._ensureUsable();
    const seq = options === undefined ? this.context.acquireSequence() : await this.context.acquireSequence(options);
    try {
      await seq.copyFrom(this);
    } catch (err) {
      await seq.dispose();
      throw err;
    }
    return seq;
  }

  /**
   * Writes this sequence's state to `path`: its KV cache as it is — compressed, evicted, quantized, with its prefix
   * checkpoint and the policies' statistics — its tokens and last logits. The file holds the cache's bytes, not its
   * pages' (a 2-bit cache makes a small file), is written to a temporary file beside it and renamed into place, and is read
   * back by `loadStateFromFile` on a sequence of the same model with the same KV options and backend (a CUDA context
   * writes its device cache: the f16 tokens attention still reads, the quantized ones, statistics, recorded queries
   * and the checkpoint). Off the event loop. Resolves the file's size and the tokens it holds.
   * @example
   *   for await (const _ of seq.generate(longDocument, { maxTokens: 1 })) {}
   *   await seq.saveStateToFile('doc.tcstate');
   *   // later, maybe in another process:
   *   await other.loadStateFromFile('doc.tcstate');
   *   for await (const ev of other.generate(longDocument + question)) ...   // evaluates only the question
   */
  async saveStateToFile(path: string): Promise<{ bytes: number; tokens: number }> {
    return this._withStateFile('saveStateToFile', path, async () => {
      const bytes = await callNative(() => this._native.saveStateAsync(path));
      return { bytes, tokens: this._tokens.length };
    });
  }

  /**
   * Replaces this sequence's state with one `saveStateToFile` wrote, from the same model (its tensors are
   * fingerprinted) with the same KV options (`contextSize` may differ if it holds the tokens). The whole file is
   * read and checked before anything changes: a file that is not a state file, corrupt or truncated is a
   * `StateFormatError`, one from another model or KV configuration an `InvalidOptionsError` naming what differs,
   * and in every such case the sequence keeps what it held. The next `generate()` goes on from the loaded tokens
   * (its prompt's common prefix is not evaluated again). A file loads on the backend that saved it (a CUDA
   * context's file into a CPU context, or the other way round, is an `InvalidOptionsError`). Off the event loop.
   */
  async loadStateFromFile(path: string): Promise<{ tokens: number }> {
    return this._withStateFile('loadStateFromFile', path, async () => {
      this._tokens = Array.from(await callNative(() => this._native.loadStateAsync(path)));
      return { tokens: this._tokens.length };
    });
  }

  // A state-file call: after a clear() in flight, on a usable and idle sequence, with a path; busy while it runs.
  private async _withStateFile<T>(what: string, path: string, run: () => Promise<T>): Promise<T> {
    if (this._clearing) await this._afterClear();
    this._ensureUsable();
    if (typeof path !== 'string' || path.length === 0) throw new InvalidOptionsError(`${what}: path must be a non-empty string`);
    if (this._busy) throw new BusyError(`${what}: the sequence is busy generating`);
    this._busy = true;
    try {
      return await run();
    } finally {
      this._busy = false;
    }
  }

  // A clear() in flight: the operations that would otherwise be refused as busy wait for it.
  private async _afterClear(): Promise<void> {
    if (this._clearing) await this._clearing.catch(() => undefined);
  }

  /**
   * Generates a continuation of `prompt`: text (tokenized with parseSpecial off), token ids (used as is), or
   * chat messages (rendered with the model's chat template, or `chatTemplate`, then tokenized with special
   * tokens parsed). The KV cache keeps the common prefix with the previous call, so multi-turn use
   * re-evaluates only what changed.
   * @example
   *   for await (const ev of seq.generate([{ role: 'user', content: 'Why is the sky blue?' }], { reasoning: { budget: 512 } })) {
   *     if (ev.type === 'reasoning-delta') dim(ev.text);
   *     else if (ev.type === 'text-delta') process.stdout.write(ev.text);
   *   }
   */
  async *generate(prompt: GeneratePrompt, options: GenerateOptions = {}): AsyncGenerator<GenerateEvent, void, void> {
    if (this._clearing) await this._afterClear();  // (only then: a call otherwise takes the sequence before it returns)
    this._ensureUsable();
    const opts = parseOptions(GenerateOptionsSchema, options, 'generate');
    if (this._busy) throw new BusyError('generate: another generation is in progress on this sequence');
    const model = this.context.model;
    const tokenizer = model.tokenizer;
    // (tokenizing a long text gives the event loop turns; the sequence counts as busy meanwhile)
    this._busy = true;
    this._abortRequested = false;  // (an abort() from here on stops this generation)
    let promptTokens: number[];
    try {
      const pt = this._promptTokens(prompt, opts);
      promptTokens = Array.isArray(pt) ? pt : await pt;
    } finally {
      this._busy = false;
    }
    this._ensureUsable();  // (disposed while a long prompt was tokenized)
    if (promptTokens.length === 0) throw new LlmError('generate: the prompt is empty (no tokens)', 'ERR_INVALID_OPTIONS');
    for (const t of promptTokens) {
      if (!Number.isInteger(t) || t < 0 || t >= model.info.nVocab) {
        throw new LlmError(`generate: prompt token ${String(t)} is not a valid id in [0, ${model.info.nVocab})`, 'ERR_INVALID_OPTIONS');
      }
    }
    const tags = detectReasoningTags(tokenizer, opts.chatTemplate ?? model.chatTemplate);
    const budget = opts.reasoning?.budget;
    if (budget !== undefined && !tags) {
      throw new InvalidOptionsError('generate.reasoning.budget: this model has no reasoning tags (<think>/</think> neither in its vocabulary nor in its chat template)');
    }
    const openInPrompt = tags ? promptOpensReasoning(tags, promptTokens, () => tokenizer.decode(promptTokens, { special: true })) : false;
    const separate = tags !== undefined && opts.reasoning?.separate !== false;
    const stop = opts.stop === undefined ? [] : typeof opts.stop === 'string' ? [opts.stop] : opts.stop;
    const parser = new ReasoningStreamParser({ ...(separate ? { tags } : {}), startInReasoning: openInPrompt, stop });
    // counts reasoning tokens (usage, budget) also when the events are not separated
    const tracker = separate || !tags ? parser : new ReasoningStreamParser({ tags, startInReasoning: openInPrompt });
    const forced = budget !== undefined && tags ? tokenizer.encode((opts.reasoning?.budgetMessage ?? '') + tags.close, { addBos: false, parseSpecial: true }) : [];
    // tags that the detokenizer would render as '' (CONTROL tokens) are fed to the parser as their text
    const tagText = new Map<number, string>();
    if (tags) {
      for (const [id, text] of [[tags.openId, tags.open], [tags.closeId, tags.close]] as const) {
        if (id !== undefined && tokenizer.tokenToPiece(id, { special: false }).length === 0) tagText.set(id, text);
      }
    }
    const signal = opts.signal;
    if (signal?.aborted) throw new AbortError('generate: the signal was already aborted');
    if (promptTokens.length + 1 > this.context.contextSize) {  // (before the cache is touched or `start` is sent)
      throw new ContextFullError(`generate: the prompt has ${promptTokens.length} tokens, the context holds ${this.context.contextSize}`);
    }

    this._busy = true;
    const onAbort = () => this._native.abort();
    signal?.addEventListener('abort', onAbort);
    const started = performance.now();
    const generated: number[] = [];
    let finishReason: FinishReason = 'length';
    let budgetHit = false;
    let prefillMs = 0;
    let ttft = 0;
    let decodeMs = 0;
    // stats events at each multiple of statsInterval generated tokens; the rate over the decode steps since the last
    let statsAt = { tokens: 1, ms: 0 };  // (the first token comes from the prefill)
    const stats = (): Extract<GenerateEvent, { type: 'stats' }> | undefined => {
      const I = opts.statsInterval;
      if (I <= 0 || Math.floor(generated.length / I) <= Math.floor(statsAt.tokens / I)) return undefined;
      const dt = decodeMs - statsAt.ms, dn = generated.length - statsAt.tokens;
      statsAt = { tokens: generated.length, ms: decodeMs };
      return { type: 'stats', generatedTokens: generated.length, decodeTokensPerSecond: dt > 0 ? (dn / dt) * 1000 : 0, kv: this._readMemory() ?? EMPTY_KV_MEMORY };
    };
    let cached = 0;
    let kvWatch: KvWatch | undefined;
    const decoder = tokenizer.createDecoder();
    const feed = (token: number, eog = false): ReasoningStreamPart[] => {
      const special = tagText.get(token);
      const text = eog ? decoder.flush() : special !== undefined ? decoder.flush() + special : decoder.push(token);
      if (tracker !== parser) tracker.push(text, token);
      return parser.push(text, token);
    };
    try {
      // reuse the common prefix; always re-evaluate at least the last two prompt tokens: the logits come from
      // the last, and the native side counts a single token after others as a decode step, which would shift
      // the eviction schedule (every W decode steps) against a fresh evaluation of the same prompt
      while (cached < this._tokens.length && cached < promptTokens.length - 2 && this._tokens[cached] === promptTokens[cached]) cached++;
      const keep = cached;  // (off the event loop: on CUDA it waits for the device, which another sequence may hold)
      cached = await callNative(() => this._native.removeFromAsync(keep));  // fewer when STREAM heads already dropped tokens past it
      if (!this._live()) throw new AbortError('generate: the sequence was disposed');
      this._tokens.length = cached;
      callNativeSync(() => this._native.setSampler(opts.sampling));  // (after the rewind: penalties see only the tokens kept)
      yield { type: 'start', promptTokens: promptTokens.length, cachedPromptTokens: cached, reasoningOpenInPrompt: openInPrompt };

      const batch = this.context.info.batchSize;
      let next: number | undefined;
      const heads = this.context.effective.kv.heads;
      kvWatch = heads.streamHeads + heads.evictHeads > 0 ? new KvWatch(() => this._readMemory()) : undefined;
      const todo = promptTokens.slice(cached);
      for (let i = 0; i < todo.length; i += batch) {
        const chunk = todo.slice(i, i + batch);
        const last = i + batch >= todo.length;
        const t0 = performance.now();
        next = await this._eval(chunk, last, signal);
        prefillMs += performance.now() - t0;
        this._tokens.push(...chunk);
        const ce = kvWatch?.step();
        if (ce) yield ce;
        if (!last) yield { type: 'prefill-progress', processed: cached + i + chunk.length, total: promptTokens.length };
      }
      ttft = performance.now() - started;
      // a checkpoint of the lossy heads at the end of the prompt: the next call whose prompt extends this one
      // resumes here instead of re-evaluating from the sinks (a compressed cache cannot rewind into what it
      // dropped or quantized while decoding)
      // (the native side decides which heads need it, and keeps none for a plain f16 cache)
      if (opts.checkpoint && next !== undefined) {
        await callNative(() => this._native.saveCheckpointAsync(opts.checkpoint === 'auto'));
      }

      while (next !== undefined) {
        // (a budget whose message and close tag would not fit in maxTokens leaves the end to maxTokens)
        if (budget !== undefined && !budgetHit && tracker.inReasoning && tracker.reasoningTokens >= budget && generated.length + forced.length <= opts.maxTokens) {
          // Budget reached: drop the sampled token, inject message + close tag, sample the answer after them.
          budgetHit = true;
          if (this._tokens.length + forced.length >= this.context.contextSize) { finishReason = 'context-full'; break; }
          parser.expectForcedClose();
          for (const token of forced) {
            generated.push(token);
            for (const part of feed(token)) yield part;
          }
          const t0 = performance.now();
          next = await this._eval(forced, true, signal);
          decodeMs += performance.now() - t0;
          this._tokens.push(...forced);
          const fe = kvWatch?.step();
          if (fe) yield fe;
          const fs = stats();
          if (fs) yield fs;
          if (generated.length >= opts.maxTokens) { finishReason = 'length'; break; }
          continue;
        }
        const token = next;
        generated.push(token);
        if (opts.stopAtEog && tokenizer.isEog(token)) {
          for (const part of feed(token, true)) yield part;
          finishReason = 'eos';
          break;
        }
        for (const part of feed(token)) yield part;
        if (parser.stopped) { finishReason = 'stop'; break; }
        if (generated.length >= opts.maxTokens) { finishReason = 'length'; break; }
        if (this._tokens.length + 1 >= this.context.contextSize) { finishReason = 'context-full'; break; }
        const t0 = performance.now();
        next = await this._eval([token], true, signal);
        decodeMs += performance.now() - t0;
        this._tokens.push(token);
        const ce = kvWatch?.step();
        if (ce) yield ce;
        const se = stats();
        if (se) yield se;
      }
      const tail = decoder.flush();
      if (tail) {
        if (tracker !== parser) tracker.push(tail);
        for (const part of parser.push(tail)) yield part;
      }
    } catch (err) {
      const requested = signal?.aborted === true || this._abortRequested;
      if (err instanceof AbortError || (requested && err instanceof LlmError && err.code === 'ERR_ABORTED')) {
        finishReason = 'aborted';
      } else {
        throw err;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this._syncTokens();
      this._busy = false;
    }
    if (tracker !== parser) tracker.finish();
    for (const part of parser.finish()) yield part;
    if (budgetHit && (finishReason === 'eos' || finishReason === 'stop')) finishReason = 'reasoning-budget';
    const decodedSteps = Math.max(0, generated.length - 1); // the first token comes from the prefill
    const reasoningTokens = tracker.reasoningTokens;
    yield {
      type: 'finish',
      finishReason,
      text: parser.text,
      reasoning: parser.reasoning,
      tokens: generated,
      ...(parser.stopString !== undefined ? { stopString: parser.stopString } : {}),
      usage: {
        promptTokens: promptTokens.length,
        cachedPromptTokens: cached,
        completionTokens: generated.length,
        reasoningTokens,
        answerTokens: generated.length - reasoningTokens,
        totalTokens: promptTokens.length + generated.length,
      },
      timings: {
        prefillMs,
        decodeMs,
        timeToFirstTokenMs: ttft,
        prefillTokensPerSecond: prefillMs > 0 ? ((promptTokens.length - cached) / prefillMs) * 1000 : 0,
        decodeTokensPerSecond: decodeMs > 0 && decodedSteps > 0 ? (decodedSteps / decodeMs) * 1000 : 0,
        compactionMs: kvWatch?.totalMs ?? 0,
      },
      kv: this._readMemory() ?? EMPTY_KV_MEMORY,
    };
  }

  /** Token ids of a prompt: ids as given, text tokenized, messages rendered with the chat template. */
  // Long texts (over ASYNC_TOKENIZE_CHARS) are tokenized with turns for the event loop, short ones at once.
  private _promptTokens(prompt: GeneratePrompt, opts: ReturnType<typeof GenerateOptionsSchema.parse>): number[] | Promise<number[]> {
    const tokenizer = this.context.model.tokenizer;
    const encode = (text: string, o: Parameters<typeof tokenizer.encode>[1]) =>
      text.length > ASYNC_TOKENIZE_CHARS ? tokenizer.encodeAsync(text, o) : tokenizer.encode(text, o);
    if (typeof prompt === 'string') return encode(prompt, { addBos: opts.addBos });
    if (!Array.isArray(prompt)) throw new InvalidOptionsError(`generate: the prompt must be a string, token ids or chat messages, but received ${typeof prompt}`);
    if (prompt.length > 0 && typeof prompt[0] === 'object' && prompt[0] !== null) {
      const text = this.context.model.applyChatTemplate(prompt as readonly ChatMessage[], {
        addGenerationPrompt: opts.addGenerationPrompt,
        ...(opts.templateKwargs ? { templateKwargs: opts.templateKwargs } : {}),
        ...(opts.chatTemplate ? { chatTemplate: opts.chatTemplate } : {}),
      });
      const bosText = tokenizer.bos !== null ? tokenizer.tokenText(tokenizer.bos) : undefined;
      // templates that write bos_token themselves (Llama 3, R1 distills) must not get a second BOS
      const addBos = opts.addBos ?? (bosText && text.startsWith(bosText) ? false : undefined);
      return encode(text, { parseSpecial: true, ...(addBos !== undefined ? { addBos } : {}) });
    }
    return [...(prompt as readonly number[])];
  }

  private async _eval(tokens: number[], sample: boolean, signal: AbortSignal | undefined): Promise<number | undefined> {
    if (this._disposed) throw new AbortError('generate: the sequence was disposed');
    // the native eval clears its abort flag when it starts, so an abort between steps is caught here
    if (signal?.aborted || this._abortRequested) throw new AbortError('generate: aborted');
    return callNative(() => this._native.eval(Int32Array.from(tokens), { sample }));
  }

  /**
   * Low-level step: evaluates `tokens` after what the sequence already holds and returns the logits of
   * the last one (a copy, [nVocab]). Used by the fidelity harness to replay a trace token by token.
   */
  async evaluate(tokens: readonly number[]): Promise<Float32Array> {
    if (this._clearing) await this._afterClear();  // (only then: a call otherwise takes the sequence before it returns)
    this._ensureUsable();
    if (this._busy) throw new BusyError('evaluate: the sequence is busy generating');
    if (tokens.length === 0) throw new LlmError('evaluate: no tokens given', 'ERR_INVALID_OPTIONS');
    this._busy = true;
    this._abortRequested = false;
    try {
      await callNative(() => this._native.eval(Int32Array.from(tokens), { logits: true }));
      this._tokens.push(...tokens);
      return callNativeSync(() => this._native.getLogits());
    } finally {
      this._syncTokens();
      this._busy = false;
    }
  }

  /**
   * Stops the generation (or `evaluate`) in progress: a generation finishes with finishReason 'aborted' —
   * at the next step when no evaluation is in flight, within the evaluation otherwise. The tokens already in
   * the cache stay (an interrupted chunk leaves nothing; `tokens` says what is held). Does nothing when idle.
   */
  abort(): void {
    if (this._disposed || !this._busy || this._clearing) return;
    this._abortRequested = true;
    this._native.abort();
  }

  private _live(): boolean { return !this._disposed && !this.context.disposed && !this.context.model.disposed; }
  // The memory report, or undefined once the sequence (or its context or model) is disposed.
  private _readMemory(): AddonKvMemory | undefined { return this._live() ? callNativeSync(() => this._native.memory()) : undefined; }

  // After a failed or aborted evaluation: `tokens` lists what the native cache still holds (a chunk in flight
  // leaves nothing; a device cache whose rollback could not be exact starts over).
  private _syncTokens(): void {
    if (!this._live()) return;
    const held = callNativeSync(() => this._native.nTokens());
    if (held < this._tokens.length) this._tokens.length = held;
  }

  async dispose(): Promise<void> {
    if (this._disposed) return;
    this._disposed = true;
    this._native.dispose();
    this._onDispose();
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.dispose(); }
}
