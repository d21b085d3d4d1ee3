/** A context: thread pool plus the sequences (each with its own KV cache) of one model. */
import type { AddonContext, AddonContextInfo } from './addon-types.js';
import { getAddon } from './binding.js';
import { AbortError, BusyError, callNativeSync, DisposedError } from './errors.js';
import type { Model } from './Model.js';
import { Sequence } from './Sequence.js';
import type { EffectiveKv } from './kv/kv-options.js';

export class Context {
  readonly model: Model;
  /** @internal */
  readonly _native: AddonContext;
  readonly info: AddonContextInfo;
  readonly maxSequences: number;
  /** Exactly what was applied (never silently different from what was asked). */
  readonly effective: { contextSize: number; threads: number; batchSize: number; kv: EffectiveKv };
  private _disposed = false;
  private readonly _sequences = new Set<Sequence>();
  // acquireSequence({ signal }) callers waiting for a sequence, first come first served
  private readonly _waiters: { resolve: (s: Sequence) => void; reject: (e: Error) => void }[] = [];
  private readonly _onDispose: () => void;

  /** @internal */
  constructor(model: Model, native: AddonContext, maxSequences: number, kv: EffectiveKv, onDispose: () => void) {
    this.model = model;
    this._native = native;
    this.info = native.info();
    this.maxSequences = maxSequences;
    this.effective = { ...this.info, kv };
    this._onDispose = onDispose;
  }

  get contextSize(): number { return this.info.contextSize; }
  get threads(): number { return this.info.threads; }
  get disposed(): boolean { return this._disposed; }

  /**
   * Takes one of the context's sequences (each has its own KV cache; `dispose()` gives it back).
   * Without options it returns at once and throws a BusyError when all `sequences` are in use; with options
   * it waits for one to be given back (first come, first served) — the back-pressure a server wants — and
   * rejects with an AbortError when `signal` aborts first, or a DisposedError when the context goes.
   * @example
   *   await using seq = await ctx.acquireSequence({ signal: req.signal });
   */
  acquireSequence(): Sequence;
  acquireSequence(options: { signal?: AbortSignal }): Promise<Sequence>;
  acquireSequence(options?: { signal?: AbortSignal }): Sequence | Promise<Sequence> {
    if (options === undefined) {
      if (this._disposed) throw new DisposedError('The context has been disposed');
      if (this._sequences.size >= this.maxSequences || this._waiters.length > 0) {
        throw new BusyError(`acquireSequence: all ${this.maxSequences} sequences of this context are in use (createContext({ sequences }) sets the number; ` +
          'acquireSequence({ signal }) waits for one)');
      }
      return this._take();
    }
    const { signal } = options;
    if (this._disposed) return Promise.reject(new DisposedError('The context has been disposed'));
    if (signal?.aborted) return Promise.reject(new AbortError('acquireSequence: the signal was already aborted'));
    if (this._sequences.size < this.maxSequences && this._waiters.length === 0) {
      try { return Promise.resolve(this._take()); } catch (err) { return Promise.reject(err as Error); }
    }
    return new Promise<Sequence>((resolve, reject) => {
      const waiter = {
        resolve: (s: Sequence) => { signal?.removeEventListener('abort', onAbort); resolve(s); },
        reject: (e: Error) => { signal?.removeEventListener('abort', onAbort); reject(e); },
      };
      const onAbort = () => {
        const i = this._waiters.indexOf(waiter);
        if (i >= 0) this._waiters.splice(i, 1);
        waiter.reject(new AbortError('acquireSequence: aborted while waiting for a sequence'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this._waiters.push(waiter);
    });
  }

  private _take(): Sequence {
    const native = callNativeSync(() => new (getAddon().AddonSequence)(this._native));
    const seq = new Sequence(this, native, () => this._release(seq));
    this._sequences.add(seq);
    return seq;
  }

  private _release(seq: Sequence): void {
    this._sequences.delete(seq);
    if (this._disposed) return;
    const next = this._waiters.shift();
    if (!next) return;
    try { next.resolve(this._take()); } catch (err) { next.reject(err as Error); }
  }

  async dispose(): Promise<void> {
    if (this._disposed) return;
    this._disposed = true;
    for (const w of this._waiters.splice(0)) w.reject(new DisposedError('acquireSequence: the context was disposed while waiting'));
    for (const s of [...this._sequences]) await s.dispose();
    this._native.dispose();
    this._onDispose();
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.dispose(); }
}
