/**
 * The `thinkcache` command line.
 *   thinkcache run --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--seed S] [--threads N] [--context N] [--backend B] [--json]
 *   thinkcache inspect --model PATH [--json]
 *   thinkcache eval ...            (lib/cli/eval.ts)
 *   thinkcache profile-heads ...   (lib/cli/profile-heads.ts)
 */
import { parseArgs } from 'node:util';
import { readGgufInfo } from './gguf.js';
import type { GenerateEvent } from './Sequence.js';
import { CHAT_USAGE, cmdChat, cmdRunChat } from './cli/chat.js';
import { backendOption, loadModelWithProgress, PrefillProgress, progressEnabled } from './cli/progress.js';
import { cmdEval } from './cli/eval.js';
import { cmdProfileHeads } from './cli/profile-heads.js';
import { cmdDemo, DEMO_USAGE } from './cli/demo.js';
import { CALIBRATE_ROTATION_USAGE, cmdCalibrateRotation } from './cli/calibrate-rotation.js';
import { cmdQuantize, QUANTIZE_USAGE } from './cli/quantize.js';
import { BENCH_USAGE, cmdBench } from './cli/bench.js';
import { cmdServe, SERVE_USAGE } from './cli/serve.js';
import { numArg } from './cli/args.js';

const USAGE = `Usage:
  thinkcache run --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]
                 [--top-k K] [--top-p P] [--min-p P] [--threads N] [--context N] [--backend cpu|cuda|auto] [--json]
  thinkcache inspect --model PATH [--json]
${DEMO_USAGE}${CHAT_USAGE}  thinkcache eval --model PATH (--kv JSON|PRESET ... | --profile P.tsv --sweep-sparsity 0,0.5 [--stream 16+48])
                  [--traces N] [--max-tokens T] [--prompts FILE] [--backend cpu|cuda|auto] [--json] [--chart out.svg]
  thinkcache eval --accuracy [--model PATH] [--tasks add,chase,cups] [--data FILE.jsonl ...] [--n N]
                  [--kv JSON|PRESET ...] [--profile P.tsv] [--max-tokens T] [--loop-guard] [--backend B] [--json]
  thinkcache profile-heads --model PATH --out P.tsv [--method wse|mean-qk|ablation] [--traces N] [--max-tokens T]
                  [--sinks S] [--recent R]
${CALIBRATE_ROTATION_USAGE}${BENCH_USAGE}${QUANTIZE_USAGE}${SERVE_USAGE}
  --backend cpu|cuda|auto  where the model runs (default auto: CUDA when this build and machine can)
  demo      the bundled tiny reasoner thinks through a problem; accuracy and KV memory of the KV presets
  run       stream a continuation of TEXT (BOS added when the model asks for it, as llama.cpp does)
  inspect   print GGUF metadata, tensor types and a memory estimate
  chat      talk with a model through its chat template (reasoning dimmed); run --chat for one turn
  eval      KL / top-1 / ΔNLL of KV configurations against the full cache, with KV bytes;
            --accuracy: task accuracy (tiny reasoner's held-out tasks, GSM8K/MATH JSONL) per configuration
  profile-heads  calibrate a head profile (window-substitution error on the model's own traces)
  calibrate-rotation  RotateKV key channel permutation → <model>.rotkv.json (used by rot keys automatically)
  bench     decode tokens/s and KV bytes of KV configurations over context lengths, on your model
  quantize  write a GGUF in another weight type (llama.cpp's per-tensor choices, metadata kept)
  serve     an OpenAI-compatible server: POST /v1/chat/completions (stream or not), GET /v1/models, /health, /metrics
`;


function fmtBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

async function cmdRun(args: string[]): Promise<number> {
  if (args.includes('--chat')) return cmdRunChat(args);
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, prompt: { type: 'string', short: 'p' }, 'max-tokens': { type: 'string', short: 'n' },
      temperature: { type: 'string' }, seed: { type: 'string' }, 'top-k': { type: 'string' }, 'top-p': { type: 'string' },
      'min-p': { type: 'string' }, threads: { type: 'string', short: 't' }, context: { type: 'string', short: 'c' }, json: { type: 'boolean' },
      backend: { type: 'string' },
    },
    strict: true,
  });
  if (!values.model || values.prompt === undefined) {
    process.stderr.write(`thinkcache run: --model and --prompt are required\n\n${USAGE}`);
    return 2;
  }
  const sampling = Object.fromEntries(Object.entries({
    temperature: numArg(values.temperature, 'temperature', false), seed: numArg(values.seed, 'seed', true), topK: numArg(values['top-k'], 'top-k', true),
    topP: numArg(values['top-p'], 'top-p', false), minP: numArg(values['min-p'], 'min-p', false),
  }).filter(([, v]) => v !== undefined));
  const threads = numArg(values.threads, 'threads', true);
  const contextSize = numArg(values.context, 'context', true);
  const maxTokens = numArg(values['max-tokens'], 'max-tokens', true) ?? 128;
  const backend = backendOption(values.backend);
  const show = progressEnabled(values.json);
  await using model = await loadModelWithProgress(values.model, show, backend);
  await using ctx = await model.createContext({ ...(threads ? { threads } : {}), ...(contextSize ? { contextSize } : {}) });
  await using seq = ctx.acquireSequence();
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once('SIGINT', onSigint);
  let finish: Extract<GenerateEvent, { type: 'finish' }> | undefined;
  const progress = new PrefillProgress(show);
  try {
    // a raw continuation: reasoning tags, if any, stay in the text (run --chat separates them)
    for await (const ev of seq.generate(values.prompt, { maxTokens, sampling, signal: ac.signal, reasoning: { separate: false }, checkpoint: false })) {
      progress.onEvent(ev);
      if (ev.type === 'text-delta' && !values.json) process.stdout.write(ev.text);
      if (ev.type === 'finish') finish = ev;
    }
  } finally {
    progress.stop();
    process.off('SIGINT', onSigint);
  }
  if (!finish) return 1;
  if (values.json) {
    process.stdout.write(JSON.stringify({
      model: values.model,
      promptTokens: model.tokenize(values.prompt),
      tokens: finish.tokens,
      text: finish.text,
      finishReason: finish.finishReason,
      usage: finish.usage,
      timings: finish.timings,
      stats: {
        prefillTokensPerSecond: finish.timings.prefillTokensPerSecond,
        decodeTokensPerSecond: finish.timings.decodeTokensPerSecond,
        timeToFirstTokenMs: finish.timings.timeToFirstTokenMs,
        threads: ctx.threads,
        backend: model.backend,
        cpuDispatch: model.info.cpuDispatch,
      },
      kv: finish.kv,
    }) + '\n');
  } else {
    const t = finish.timings;
    process.stdout.write('\n');
    process.stderr.write(`\n[${finish.finishReason}] prompt ${finish.usage.promptTokens} tok, ${t.prefillTokensPerSecond.toFixed(1)} tok/s prefill; ` +
      `${finish.usage.completionTokens} generated, ${t.decodeTokensPerSecond.toFixed(1)} tok/s decode; KV ${fmtBytes(finish.kv.bytesUsed)}\n`);
  }
  return 0;
}

async function cmdInspect(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { model: { type: 'string', short: 'm' }, json: { type: 'boolean' }, context: { type: 'string' } }, strict: true });
  if (!values.model) {
    process.stderr.write(`thinkcache inspect: --model is required\n\n${USAGE}`);
    return 2;
  }
  const info = await readGgufInfo(values.model);
  const md = info.metadata;
  const arch = String(md['general.architecture'] ?? '?');
  const n = (k: string) => (typeof md[`${arch}.${k}`] === 'number' ? (md[`${arch}.${k}`] as number) : undefined);
  const nLayer = n('block_count') ?? 0, nHead = n('attention.head_count') ?? 0, nHeadKv = n('attention.head_count_kv') ?? nHead;
  const nEmbd = n('embedding_length') ?? 0;
  const headDim = n('attention.key_length') ?? (nHead ? nEmbd / nHead : 0), headDimV = n('attention.value_length') ?? headDim;
  const ctxLen = numArg(values.context, 'context', true) ?? Math.min(n('context_length') ?? 4096, 4096);
  const kvPerToken = nLayer * nHeadKv * (headDim + headDimV) * 2 + nLayer * nHeadKv * 4; // f16 payload + int32 positions
  const weightBytes = info.tensors.reduce((s, t) => s + t.bytes, 0);
  const types: Record<string, number> = {};
  for (const t of info.tensors) types[t.typeName] = (types[t.typeName] ?? 0) + 1;
  const summary = {
    file: values.model, ggufVersion: info.version, architecture: arch, name: md['general.name'],
    tensors: info.tensors.length, tensorTypes: types, weightBytes,
    hparams: { nLayer, nEmbd, nHead, nHeadKv, headDim, headDimV, nFf: n('feed_forward_length'), contextLength: n('context_length'), ropeFreqBase: n('rope.freq_base') },
    tokenizer: { model: md['tokenizer.ggml.model'], pre: md['tokenizer.ggml.pre'], vocabSize: Array.isArray(md['tokenizer.ggml.tokens']) ? (md['tokenizer.ggml.tokens'] as unknown[]).length : undefined },
    memoryEstimate: { contextSize: ctxLen, kvBytesPerToken: kvPerToken, kvBytes: kvPerToken * ctxLen, weightBytes, totalBytes: weightBytes + kvPerToken * ctxLen },
  };
  if (values.json) {
    process.stdout.write(JSON.stringify(summary, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
    return 0;
  }
  const lines = [
    `file            ${values.model} (GGUF v${info.version}, ${fmtBytes(info.fileSize)})`,
    `architecture    ${arch}${md['general.name'] ? ` — ${String(md['general.name'])}` : ''}`,
    `layers          ${nLayer}   embedding ${nEmbd}   heads ${nHead} (KV ${nHeadKv})   head size ${headDim}   FFN ${summary.hparams.nFf}`,
    `context (train) ${summary.hparams.contextLength}   rope base ${summary.hparams.ropeFreqBase}`,
    `tokenizer       ${String(summary.tokenizer.model)}${summary.tokenizer.pre ? ` (pre ${String(summary.tokenizer.pre)})` : ''}, ${summary.tokenizer.vocabSize} tokens`,
    `tensors         ${info.tensors.length}: ${Object.entries(types).map(([k, v]) => `${v}× ${k}`).join(', ')}`,
    `memory          weights ${fmtBytes(weightBytes)} + KV (f16) ${fmtBytes(kvPerToken)}/token × ${ctxLen} = ${fmtBytes(kvPerToken * ctxLen)} → ${fmtBytes(summary.memoryEstimate.totalBytes)}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}

/** Runs the CLI; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'run': return await cmdRun(rest);
      case 'inspect': return await cmdInspect(rest);
      case 'quantize': return await cmdQuantize(rest);
      case 'bench': return await cmdBench(rest);
      case 'serve': return await cmdServe(rest);
      case 'chat': return await cmdChat(rest);
      case 'eval': return await cmdEval(rest);
      case 'demo': return await cmdDemo(rest);
      case 'calibrate-rotation': return await cmdCalibrateRotation(rest);
      case 'profile-heads': return await cmdProfileHeads(rest);
      case undefined: case '-h': case '--help': case 'help':
        process.stdout.write(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        process.stderr.write(`thinkcache: unknown command "${cmd}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    const e = err as Error & { code?: string };
    process.stderr.write(`thinkcache ${cmd}: ${e.code ? `[${e.code}] ` : ''}${e.message}\n`);
    return 1;
  }
}
