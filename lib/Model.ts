/**
 * A loaded GGUF model. Weights are memory-mapped by the native core; loading runs off the event loop.
 * @example
 *   await using model = await loadModel({ path: 'model.gguf' });
 *   await using ctx = await model.createContext({ contextSize: 2048 });
 *   const seq = ctx.acquireSequence();
 *   for await (const ev of seq.generate('Once upon a time', { maxTokens: 32 })) if (ev.type === 'text-delta') process.stdout.write(ev.text);
 */
import type { AddonModel, AddonModelInfo, GgufValue } from './addon-types.js';
import { cudaInfo, resolveBackend, type BackendName } from './backend.js';
import { getAddon } from './binding.js';
import { Context } from './Context.js';
import { callNative, callNativeSync, DisposedError, GgufFormatError, InvalidOptionsError, LlmError } from './errors.js';
import { ContextOptionsSchema, LoadModelOptionsSchema, parseOptions, type ContextOptions, type LoadModelOptions } from './options.js';
import { createTokenizerAsync, type Tokenizer } from './tokenizer/index.js';
import { unpackMetadataSteps } from './gguf.js';
import { runStepsAsync } from './steps.js';
import { renderChatTemplate, type ChatMessage, type ChatTemplateOptions } from './chat/chat-template.js';
import { resolveKvOptions, rotationGroupedMask } from './kv/kv-options.js';
import { calibrateRotation, groupedPermutation, resolvePermutation, type RotationCalibration } from './kv/rotation.js';
import { calibrateHeadProfile } from './kv/calibrate.js';
import type { HeadProfile } from './kv/head-profile.js';
import { DEFAULT_PROMPTS } from './eval/fidelity.js';

// A profile's scores as the [layer][kvHead] matrix kv.heads.profile takes.
function rowsOf(p: HeadProfile): number[][] {
  return Array.from({ length: p.nLayer }, (_, l) => Array.from(p.scores.subarray(l * p.nHeadKv, (l + 1) * p.nHeadKv)));
}

export type ModelInfo = AddonModelInfo;

export class Model {
  /** @internal */
  readonly _native: AddonModel;
  readonly path: string;
  readonly info: ModelInfo;
  readonly metadata: Readonly<Record<string, GgufValue>>;
  readonly tokenizer: Tokenizer;
  /** Which backend runs this model ('auto' resolved). On 'cuda' the weights live on the device and contexts compute there with their KV cache (dense f16, or stream heads and rot2/3/4 storage; see createContext). */
  readonly backend: BackendName;
  private _disposed = false;
  private readonly _children = new Set<Context>();
  private _rotation?: Promise<RotationCalibration>;
  private readonly _profiles = new Map<string, Promise<HeadProfile>>();
  /** loadModel({ threads }): the default of createContext({ threads }). */
  private readonly _threads: number | undefined;

  private constructor(native: AddonModel, path: string, backend: BackendName, metadata: Record<string, GgufValue>, tokenizer: Tokenizer, threads?: number) {
    this._native = native;
    this.path = path;
    this.info = native.info();
    this.metadata = metadata;
    this.tokenizer = tokenizer;
    this.backend = backend;
    this._threads = threads;
  }

  /** @internal use loadModel() */
  static async _load(options: LoadModelOptions): Promise<Model> {
    const opts = parseOptions(LoadModelOptionsSchema, options, 'loadModel');
    // throws UnsupportedModelError (no CUDA in this build) or CudaError (no device, driver error) for 'cuda';
    // never falls back to the CPU silently. On 'cuda' the weights are uploaded here, once (OutOfMemoryError
    // ERR_OOM_DEVICE when they do not fit).
    const backend = resolveBackend(opts.backend, cudaInfo(getAddon()));
    const native = await callNative(() => getAddon().AddonModel.load(opts.path, { backend }));
    try {
      // the metadata and the tokenizer's tables with turns for the event loop (at once, a 150k vocabulary's ~300k
      // strings crossing N-API, its maps and the BPE merge ranks held the loop for hundreds of milliseconds)
      const metadata = await runStepsAsync(unpackMetadataSteps(native.metadata(true).metadata ?? {}));
      let tokenizer: Tokenizer;
      try {
        tokenizer = await createTokenizerAsync(metadata as Record<string, unknown>);
      } catch (err) {
        if (err instanceof LlmError) throw err;
        throw new GgufFormatError(`${opts.path}: invalid tokenizer metadata: ${err instanceof Error ? err.message : String(err)}`);
      }
      return new Model(native, opts.path, backend, metadata, tokenizer, opts.threads);
    } catch (err) {
      native.dispose();
      throw err;
    }
  }

  get disposed(): boolean { return this._disposed; }

  /** @internal */
  _ensureNotDisposed(): void {
    if (this._disposed) throw new DisposedError('The model has been disposed');
  }

  /** Creates a context: KV caches for `sequences` sequences of up to `contextSize` tokens each. */
  async createContext(options: ContextOptions = {}): Promise<Context> {
    this._ensureNotDisposed();
    const opts = parseOptions(ContextOptionsSchema, options, 'createContext');
    // heads.profile 'calibrate': this model's own profile for the stream window (computed once per window)
    const heads = opts.kv?.heads;
    let calibrated: HeadProfile | undefined;
    if (heads?.profile === 'calibrate') {
      calibrated = await this._headProfile(heads.stream.sinks, heads.stream.recent);
      this._ensureNotDisposed();
      opts.kv = { ...opts.kv!, heads: { ...heads, profile: rowsOf(calibrated) } };
    }
    const contextSize = opts.contextSize ?? Math.min(this.info.nCtxTrain || 4096, 4096);
    const kv = resolveKvOptions(opts.kv, {
      nLayer: this.info.nLayer, nHeadKv: this.info.nHeadKv, headDim: this.info.headDim, headDimV: this.info.headDimV,
      budget: { contextSize, codecBlock: (codec, dim, group, key) => getAddon().kvCodecBlock(codec, dim, group, key) },
    });
    // (a CUDA context holds every layout the options allow: stream heads, keys and values each in any storage codec,
    // grouped key rotation, every eviction policy, per-query-head caches; the native side still names anything it
    // cannot hold, as an InvalidOptionsError)
    const perQueryHead = kv.eviction?.policy === 'lazy' && kv.eviction.perQueryHead;
    // rot keys: the calibrated channel permutation (§3.3) from a sidecar or the built-in calibration
    // ('auto' only for pre-RoPE keys: the statistic is of pre-RoPE keys, which RoPE would mix in the post-RoPE variant)
    if (calibrated) kv.effective.heads.profile = `calibrate: ${calibrated.source}`;
    const rotKeys = kv.effective.storage.key.startsWith('rot');
    const setting = kv.effective.storage.permutation;
    const postAuto = kv.effective.storage.variant === 'post-rope' && setting === 'auto';
    const rotation = rotKeys && !postAuto ? await resolvePermutation(this, setting) : null;
    kv.effective.storage.permutation = rotation ? rotation.source : postAuto && rotKeys ? 'none (post-RoPE variant; give a sidecar path to permute)' : rotKeys ? 'none (identity)' : 'none (keys are not rotated)';
    this._ensureNotDisposed();
    const ctx = callNativeSync(() => new (getAddon().AddonContext)(this._native, {
      contextSize,
      threads: opts.threads ?? this._threads ?? 0,
      batchSize: opts.batchSize,
      cpu: opts.backend === 'cpu',
      // per-query-head caches (lazy's reference mode) have one entry per query head: copy each KV head's mode
      retention: perQueryHead ? Uint8Array.from({ length: kv.retention.length * (this.info.nHead / this.info.nHeadKv) }, (_, i) => kv.retention[Math.floor(i / (this.info.nHead / this.info.nHeadKv))]!) : kv.retention,
      perQueryHead,
      streamSinks: kv.effective.heads.sinks,
      streamRecent: kv.effective.heads.recent,
      ...(kv.eviction ? { eviction: kv.eviction } : {}),
      storage: {
        key: kv.effective.storage.key, value: kv.effective.storage.value, stagingTokens: kv.effective.storage.stagingTokens,
        protectFirst: kv.effective.storage.protectFirst, groupSize: kv.effective.storage.groupSize,
        clip: kv.effective.storage.clip ?? -1, postRope: kv.effective.storage.variant === 'post-rope', protectSinks: kv.effective.storage.protectSinks,
        rotationGroup: kv.effective.storage.rotationGroup,
        ...(rotation ? { perm: groupedPermutation(rotation, kv.effective.storage.rotationGroup, rotationGroupedMask(kv.retention, kv.effective.storage.rotationGroup)) } : {}),
      },
    }));
    const context = new Context(this, ctx, opts.sequences, kv.effective, () => this._children.delete(context));
    this._children.add(context);
    return context;
  }

  /** @internal The permutation from the built-in calibration text, computed once per model. */
  _builtinRotation(): Promise<RotationCalibration> {
    this._rotation ??= calibrateRotation(this, { source: 'built-in calibration text' }).then((r) => ({ ...r, source: `built-in calibration text (${r.tokens} tokens)` }));
    this._rotation.catch(() => { this._rotation = undefined; });
    return this._rotation;
  }

  /** @internal The 'calibrate' head profile for a stream window: 4 greedy traces of 256 tokens (built-in prompts), once. */
  _headProfile(sinks: number, recent: number): Promise<HeadProfile> {
    const key = `${sinks}+${recent}`;
    let p = this._profiles.get(key);
    if (!p) {
      p = calibrateHeadProfile(this, { prompts: DEFAULT_PROMPTS.slice(0, 4), maxTokens: 256, method: 'wse', sinks, recent })
        .then((r) => ({ ...r.profile, source: `${r.profile.source}, ${r.tokens} tokens of built-in prompts` }));
      p.catch(() => { this._profiles.delete(key); });
      this._profiles.set(key, p);
    }
    return p;
  }

  /** Tokenizes text as llama.cpp does (BOS added when the model asks for it, unless addBos says otherwise). */
  tokenize(text: string, options: { addBos?: boolean; parseSpecial?: boolean } = {}): number[] {
    this._ensureNotDisposed();
    return this.tokenizer.encode(text, options);
  }

  /** tokenize() that gives the event loop a turn every few milliseconds (long texts in a server): the same ids. */
  async tokenizeAsync(text: string, options: { addBos?: boolean; parseSpecial?: boolean } = {}): Promise<number[]> {
    this._ensureNotDisposed();
    return this.tokenizer.encodeAsync(text, options);
  }

  detokenize(tokens: readonly number[]): string {
    this._ensureNotDisposed();
    return this.tokenizer.decode(tokens);
  }

  /** The Jinja chat template of the GGUF (`tokenizer.chat_template`), if it has one. */
  get chatTemplate(): string | undefined {
    const t = this.metadata['tokenizer.chat_template'];
    return typeof t === 'string' && t.length > 0 ? t : undefined;
  }

  /**
   * Renders a conversation with the model's chat template (or `options.chatTemplate`) into prompt text.
   * @example model.applyChatTemplate([{ role: 'user', content: 'Hi' }], { templateKwargs: { enable_thinking: false } })
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: Omit<ChatTemplateOptions, 'bosToken' | 'eosToken'> & { chatTemplate?: string } = {}): string {
    this._ensureNotDisposed();
    const template = options.chatTemplate ?? this.chatTemplate;
    if (!template) {
      throw new InvalidOptionsError(`applyChatTemplate: ${this.path} has no chat template (GGUF key tokenizer.chat_template); pass one with the chatTemplate option, or give generate() a text prompt`);
    }
    const t = this.tokenizer;
    return renderChatTemplate(template, messages, {
      ...options,
      ...(t.bos !== null ? { bosToken: t.tokenText(t.bos) } : {}),
      ...(t.eos !== null ? { eosToken: t.tokenText(t.eos) } : {}),
    });
  }

  /** Frees the model and every context created from it. Idempotent. */
  async dispose(): Promise<void> {
    if (this._disposed) return;
    this._disposed = true;
    for (const c of [...this._children]) await c.dispose();
    this._native.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.dispose(); }
}

/** Loads a GGUF model (llama, qwen2, qwen3). */
export async function loadModel(options: LoadModelOptions): Promise<Model> {
  return Model._load(options);
}
