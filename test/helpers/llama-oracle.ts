// llama.cpp as the reference implementation, through node-llama-cpp 3.21.1's prebuilt CPU binary
// (`getLlama({ gpu: false, build: 'never' })`). Tests compare our tokenizer and greedy decode against it.
// Settings that decide the reference numbers, fixed here so every test uses the same ones:
// - one thread (two oversubscribe the 2-core machine and add scheduling noise, not different math);
// - temperature 0 = llama.cpp's greedy sampler (argmax, lowest id on ties), no repeat penalty, no token bias;
// - EOG tokens are yielded and decoding continues past them (pure greedy of the network);
// - flashAttention: node-llama-cpp's default is "auto" (LLAMA_FLASH_ATTN_TYPE_AUTO), which llama.cpp resolves to
//   enabled on CPU (KV cache F16); ORACLE_FLASH_ATTENTION_DEFAULT states it, and every call can override it. It
//   matters: on the synthetic fixtures, FA off changes a greedy token within 32 steps in about 1 run in 4.
//   Batch size and thread count (1 vs 2) did not change any token.
// - the prompt is decoded in one batch (batchSize >= prompt length), then one token per step.
// Models are cached per path; `disposeOracle()` frees them (call it in afterAll). Contexts are freed per call.
import { getLlama, LlamaLogLevel, type Llama, type LlamaContextSequence, type LlamaModel, type Token } from "node-llama-cpp";

/** Flash attention mode used when a call does not say: node-llama-cpp's own default for a CPU context. */
export const ORACLE_FLASH_ATTENTION_DEFAULT: boolean | "auto" = "auto";

export interface OracleRunOptions {
  /** KV cells; default: prompt + n rounded up to 64, at least 128. */
  contextSize?: number;
  /** Default 1. */
  threads?: number;
  /** Default ORACLE_FLASH_ATTENTION_DEFAULT ("auto", which is on for CPU). */
  flashAttention?: boolean | "auto";
  /** Tokens per llama_decode call for the prompt; default: the whole context. */
  batchSize?: number;
}

export interface OracleTokenizeOptions {
  /** Prepend BOS: true, false, or "model" (tokenizer.ggml.add_bos_token, as llama_tokenize(add_special=true)). Default "model". */
  addBos?: boolean | "model";
  /** Parse special/control token text such as "<|im_start|>" (llama_tokenize parse_special). Default false. */
  special?: boolean;
}

export interface OracleStep {
  token: number;
  /** logit(top1) - logit(top2): how far greedy is from a tie at this step. */
  margin: number;
  /** The best `topK` candidates with log-probabilities (logit - logsumexp), best first. */
  top: Array<{ token: number; logProb: number }>;
}

let llamaPromise: Promise<Llama> | undefined;
const models = new Map<string, Promise<LlamaModel>>();
// Weight types llama.cpp moved into its AMX buffer (CPUs with AMX-INT8: its prebuilt binary then loads the
// sapphirerapids variant, whose AMX kernels compute q8_0/q4_0/... matmuls in another order than its vec_dot path,
// which ours reproduce), per model path, read off its debug log while that model loads (loads run one at a time).
const amxTypes = new Map<string, Set<string>>();
let loading: string | undefined;

/** The shared llama.cpp instance (CPU prebuilt, never builds from source; prints errors only). */
export function getOracle(): Promise<Llama> {
  llamaPromise ??= getLlama({
    gpu: false, build: "never", maxThreads: 1, logLevel: LlamaLogLevel.debug,
    logger: (level, message) => {
      const amx = /amx repack tensor \S+ of type (\w+)/.exec(message);
      if (amx && loading !== undefined) amxTypes.get(loading)?.add(amx[1]!);
      if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) console.error(`[llama.cpp] ${message.trim()}`);
    },
  });
  return llamaPromise;
}

/** The (cached) llama.cpp model for a GGUF path. */
export function oracleModel(modelPath: string): Promise<LlamaModel> {
  let p = models.get(modelPath);
  if (!p) {
    p = getOracle().then(async (llama) => {
      while (loading !== undefined) await new Promise((r) => setTimeout(r, 5));  // (one load at a time: the log names no model)
      loading = modelPath;
      amxTypes.set(modelPath, new Set());
      try {
        return await llama.loadModel({ modelPath, gpuLayers: 0 });
      } finally {
        // (log lines reach JS through a non-blocking call: let the ones of this load arrive before the next one starts)
        for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
        loading = undefined;
      }
    });
    models.set(modelPath, p);
    p.catch(() => models.delete(modelPath));
  }
  return p;
}

/**
 * The weight types of `modelPath` that llama.cpp runs through its AMX kernels on this CPU (empty on CPUs without
 * AMX-INT8, and for types it has no AMX kernel for). Their rounding differs from llama.cpp's own vec_dot path.
 */
export async function oracleAmxTypes(modelPath: string): Promise<Set<string>> {
  await oracleModel(modelPath);
  return new Set(amxTypes.get(modelPath));
}

/** Frees cached models and the llama instance. */
export async function disposeOracle(): Promise<void> {
  const ms = [...models.values()];
  models.clear();
  for (const m of ms) await (await m.catch(() => undefined))?.dispose();
  const l = llamaPromise;
  llamaPromise = undefined;
  await (await l?.catch(() => undefined))?.dispose();
}

/** llama.cpp's tokenization of `text` (common_tokenize), with BOS handling as in llama_tokenize(add_special). */
export async function oracleTokenize(modelPath: string, text: string, options: OracleTokenizeOptions = {}): Promise<number[]> {
  const model = await oracleModel(modelPath);
  const tokens = text === "" ? [] : Array.from(model.tokenize(text, options.special ?? false), Number);
  const addBos = options.addBos ?? "model";
  const bos = model.tokens.bos;
  const wantBos = addBos === "model" ? model.tokens.shouldPrependBosToken : addBos;
  if (wantBos) {
    if (bos == null) throw new Error(`oracleTokenize: ${modelPath} has no BOS token but addBos is ${String(addBos)}`);
    tokens.unshift(bos);
  }
  return tokens;
}

/** llama.cpp's detokenization (llama_detokenize; special = render control tokens as text). */
export async function oracleDetokenize(modelPath: string, tokens: readonly number[], special = false): Promise<string> {
  const model = await oracleModel(modelPath);
  return model.detokenize(tokens as Token[], special);
}

function contextSizeFor(nPrompt: number, n: number, o: OracleRunOptions): number {
  return o.contextSize ?? Math.max(128, Math.ceil((nPrompt + n + 1) / 64) * 64);
}

async function withSequence<T>(modelPath: string, nPrompt: number, n: number, o: OracleRunOptions,
  fn: (seq: LlamaContextSequence) => Promise<T>): Promise<T> {
  const model = await oracleModel(modelPath);
  const contextSize = contextSizeFor(nPrompt, n, o);
  const context = await model.createContext({
    contextSize,
    batchSize: o.batchSize ?? contextSize,
    threads: o.threads ?? 1,
    flashAttention: o.flashAttention ?? ORACLE_FLASH_ATTENTION_DEFAULT,
    sequences: 1,
  });
  try {
    return await fn(context.getSequence());
  } finally {
    await context.dispose();
  }
}

const GREEDY = { temperature: 0, yieldEogToken: true } as const;

/**
 * The first `n` greedy tokens after `tokens` (the prompt, BOS included if wanted), from a fresh context.
 * @example
 *   const prompt = await oracleTokenize(path, "Once upon a time");
 *   const golden = await oracleGreedy(path, prompt, 32);
 */
export async function oracleGreedy(modelPath: string, tokens: readonly number[], n: number, options: OracleRunOptions = {}): Promise<number[]> {
  if (tokens.length === 0) throw new Error("oracleGreedy: the prompt must have at least one token");
  return withSequence(modelPath, tokens.length, n, options, async (seq) => {
    const out: number[] = [];
    if (n <= 0) return out;
    for await (const t of seq.evaluate(tokens as Token[], GREEDY)) {
      out.push(t);
      if (out.length >= n) break;
    }
    return out;
  });
}

/**
 * Greedy decode with, per step, the top-1/top-2 logit margin and the best `topK` log-probabilities. Slower than
 * oracleGreedy (node-llama-cpp returns the whole softmax as a Map per step); use it to check fixtures and tolerances.
 */
export async function oracleGreedyDetailed(modelPath: string, tokens: readonly number[], n: number,
  options: OracleRunOptions & { topK?: number } = {}): Promise<OracleStep[]> {
  if (tokens.length === 0) throw new Error("oracleGreedyDetailed: the prompt must have at least one token");
  const topK = options.topK ?? 5;
  return withSequence(modelPath, tokens.length, n, options, async (seq) => {
    const out: OracleStep[] = [];
    if (n <= 0) return out;
    for await (const r of seq.evaluateWithMetadata(tokens as Token[], { probabilities: true }, GREEDY)) {
      // With the greedy chain the candidates are the raw logits, so p_i = exp(logit_i - logsumexp).
      const best: Array<{ token: number; p: number }> = [];
      for (const [token, p] of r.probabilities) {
        if (best.length < topK || p > best[best.length - 1]!.p) {
          best.push({ token, p });
          best.sort((a, b) => b.p - a.p || a.token - b.token);
          if (best.length > topK) best.pop();
        }
      }
      const margin = best.length > 1 ? Math.log(best[0]!.p) - Math.log(best[1]!.p) : Infinity;
      out.push({ token: r.token, margin, top: best.map((b) => ({ token: b.token, logProb: Math.log(b.p) })) });
      if (out.length >= n) break;
    }
    return out;
  });
}
