/**
 * The boundary contract: a hand-written type for every export of native/addon/addon.cpp, mirrored
 * one-to-one. Only lib/ code that talks to the addon imports this file.
 */

export type GgufScalar = number | bigint | boolean | string;
export type GgufValue =
  | GgufScalar
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
  | Float32Array | Float64Array | BigUint64Array | BigInt64Array
  | boolean[] | string[] | GgufValue[];

/** A string array as metadata({ packed }) returns it: one string and each element's UTF-16 end offset (lib/gguf.ts unpacks it). */
export interface AddonPackedStrings { packedStrings: string; ends: Uint32Array }

export interface AddonGgufTensor {
  name: string;
  type: number;
  typeName: string;
  shape: number[];
  offset: number;
  bytes: number;
}

export interface AddonGgufInfo {
  version: number;
  alignment: number;
  dataOffset: number;
  fileSize: number;
  metadata?: Record<string, GgufValue>;
  tensors: AddonGgufTensor[];
}

export interface AddonModelInfo {
  architecture: string;
  nVocab: number;
  nCtxTrain: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  headDimV: number;
  nFf: number;
  nRot: number;
  rmsEps: number;
  ropeFreqBase: number;
  tiedOutput: boolean;
  weightBytes: number;
  fileSize: number;
  backend: 'cpu' | 'cuda';
  /** Bytes of the weights on the device (backend 'cuda'). */
  deviceWeightBytes?: number;
  cpuDispatch: string;
}

export interface AddonModel {
  info(): AddonModelInfo;
  /** With `packed`, string arrays of valid UTF-8 come as AddonPackedStrings (fast to cross the boundary). */
  metadata(packed?: boolean): AddonGgufInfo;
  dispose(): void;
}

export interface AddonContextInfo {
  contextSize: number;
  threads: number;
  batchSize: number;
  /** Where the context computes (addons built before it report nothing: the CPU). */
  backend?: 'cpu' | 'cuda';
}

export interface AddonContext {
  info(): AddonContextInfo;
  dispose(): void;
}

export interface AddonSamplerParams {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repeatPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  penaltyLastN: number;
  seed: number;
}

export interface AddonKvMemory {
  logicalTokens: number;
  /** Sum over (layer, KV head) of the tokens each head holds. */
  residentTokens: number;
  bytesUsed: number;
  bytesAllocated: number;
  breakdown: {
    keys: number; values: number; positions: number;
    /** Segment tables, and eviction policies' state: per-token statistics, step probabilities, recorded queries. */
    metadata: number;
    poolSlack: number;
    /** The prefix checkpoint: a copy of the lossy heads at the end of the last prompt (generate's `checkpoint`); counted in bytesAllocated. */
    checkpoint: number;
    /** Coded heads (kv.storage): codes, scales + zero-points, and their f16 tokens (staging + protected). */
    codes?: number; scales?: number; staging?: number;
  };
  /** Tokens held in codec pages (kv.storage), summed over heads. */
  quantizedTokens?: number;
  /** Tokens dropped so far by eviction and stream trimming (all heads), head compactions, time spent. */
  evictedTokens: number;
  compactions: number;
  compactionMs: number;
  /** Per (layer, KV head), row-major; only with detail. */
  heads?: { residentTokens: Int32Array; budget: Int32Array; bytesAllocated: Float64Array; bytesUsed: Float64Array };
}

export interface AddonSequence {
  /** Evaluates tokens; with `sample` resolves to the next token drawn from the last logits. */
  eval(tokens: Int32Array | Uint32Array, options?: { logits?: boolean; sample?: boolean }): Promise<number | undefined>;
  setSampler(params: AddonSamplerParams): void;
  sample(): number;
  getLogits(): Float32Array;
  abort(): void;
  /** Positions one cache head (layer, KV head; per query head with perQueryHead) holds, coded and f16, ascending. */
  heldPositions(layer: number, head: number): Int32Array;
  /** Drops tokens at positions >= pos; returns how many leading tokens are still valid (may be fewer when STREAM heads dropped tokens). */
  removeFrom(pos: number): number;
  /** removeFrom in a worker (a CUDA rewind waits for the context's device, which another sequence's eval may hold). */
  removeFromAsync(pos: number): Promise<number>;
  /** Becomes a copy of `source` (same context; CPU): KV cache, token history, sampler; both busy meanwhile. Resolves with the tokens held. */
  copyFromAsync(source: AddonSequence): Promise<number>;
  /** A prefix checkpoint of the lossy heads at the current length (either backend; none for a plain f16 cache); boundedOnly: none when an evicting head holds more than the policy's capacity. */
  saveCheckpointAsync(boundedOnly?: boolean): Promise<void>;
  /** Writes the sequence's state file (through a temporary file renamed into place); resolves its size in bytes. */
  saveStateAsync(path: string): Promise<number>;
  /** Reads a state file into the sequence (all or nothing); resolves the tokens it now holds. */
  loadStateAsync(path: string): Promise<Int32Array>;
  nTokens(): number;
  memory(perHead?: boolean): AddonKvMemory;
  /** Head calibration (window-substitution error) over the following evals; null turns it off. */
  /** keysOnly: only the pre-RoPE q/k sums (no window-substitution pass). */
  setCalibration(sinks: number | null, recent?: number, keysOnly?: boolean): void;
  getCalibration(): { errSum: Float64Array; outMassSum: Float64Array; count: Float64Array; qSum: Float64Array; kSum: Float64Array; tokens: number } | null;
  dispose(): void;
}

export interface AddonQuantType {
  name: string;
  type: number;
  blockSize: number;
  typeSize: number;
  cpu: boolean;
}

export interface AddonSystemInfo {
  cpuDispatch: string;
  physicalCores: number;
  architectures: string;
  cuda: boolean;
}

export interface AddonCudaInfo {
  /** The addon was built with THINKCACHE_CUDA. */
  built: boolean;
  /** Usable CUDA devices (0 when none, with `reason`). */
  deviceCount: number;
  /** Why no device is usable ("no CUDA device", "CUDA driver error (...)"); empty when one is. */
  reason: string;
  /** The whole forward pass runs on CUDA (false until issue 8 lands it). */
  forward: boolean;
  /** Device 0 when one is usable. */
  device?: { name: string; computeCapability: string; totalBytes: number; freeBytes: number };
  /** The "device" is the CPU emulation of the CUDA kernels (a test build, THINKCACHE_CUDA_EMU): 'auto' never picks it. */
  emulated?: boolean;
}

export interface AddonQuantizeResult {
  /** llama_ftype written to general.file_type. */
  fileType: number;
  bytesIn: number;
  bytesOut: number;
  /** Every tensor in file order with its type before and after ("f32" -> "q6_K", ...). */
  tensors: Array<{ name: string; from: string; to: string }>;
}

export interface Addon {
  readGgufMetadata(path: string, withMetadata?: boolean, packed?: boolean): Promise<AddonGgufInfo>;
  /** Runs on a libuv worker; `type` is a file type such as "q4_k_m" (see gguf-quantize.h). */
  quantizeGguf(inPath: string, outPath: string, options: { type: string; threads?: number }): Promise<AddonQuantizeResult>;
  listErrorCodes(): string[];
  listQuantTypes(): AddonQuantType[];
  listKvPolicies(): { name: string; source: string }[];
  /** One codec block as the cache stores it (tokens per block, bytes per block). */
  kvCodecBlock(codec: string, dim: number, group: number, key: boolean): { blockTokens: number; blockBytes: number };
  systemInfo(): AddonSystemInfo;
  /** Absent in addons built before issue 8 (see lib/backend.ts). */
  cudaInfo?(): AddonCudaInfo;
  AddonModel: { load(path: string, options?: { backend?: 'cpu' | 'cuda' }): Promise<AddonModel> };
  AddonContext: new (
    model: AddonModel,
    options: {
      contextSize?: number; threads?: number; batchSize?: number; cpu?: boolean; retention?: Uint8Array; streamSinks?: number; streamRecent?: number; perQueryHead?: boolean;
      eviction?: { policy: string; capacity: number; window?: number; alpha?: number; protect?: number; ratio?: number; interval?: number; lambda?: number; pool?: number; protectSinks?: boolean };
      storage?: { key: string; value: string; stagingTokens: number; protectFirst: number; groupSize: number; clip: number; postRope: boolean; protectSinks?: boolean; rotationGroup?: number; perm?: Int32Array };
    },
  ) => AddonContext;
  AddonSequence: new (context: AddonContext) => AddonSequence;
}
