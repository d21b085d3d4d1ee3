/** A context: thread pool plus the sequences (each with its own KV cache) of one model. */
import type { AddonContext, AddonContextInfo } from './addon-types.js';
import { getAddon } from './binding.js';
import { callNativeSync, DisposedError, InvalidOptionsError } from './errors.js';
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

  /** Takes one of the context's sequences. Throws when all `sequences` are in use. */
  acquireSequence(): Sequence {
    if (this._disposed) throw new DisposedError('The context has been disposed');
    if (this._sequences.size >= this.maxSequences) {
      throw new InvalidOptionsError(`acquireSequence: all ${this.maxSequences} sequences of this context are in use (createContext({ sequences }) sets the number)`, 'ERR_INVALID_ARG');
    }
    const native = callNativeSync(() => new (getAddon().AddonSequence)(this._native));
    const seq = new Sequence(this, native, () => this._sequences.delete(seq));
    this._sequences.add(seq);
    return seq;
  }

  async dispose(): Promise<void> {
    if (this._disposed) return;
    this._disposed = true;
    for (const s of [...this._sequences]) await s.dispose();
    this._native.dispose();
    this._onDispose();
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.dispose(); }
}
