/**
 * `thinkcache serve`: the OpenAI-compatible server of lib/server.ts on a model and context made from the command
 * line; the KV cache options are those of `run`/`eval` (`--kv PRESET|JSON`). Stops on SIGINT / SIGTERM.
 *   thinkcache serve --model M [--host 127.0.0.1] [--port 8080] [--parallel 1] [--ctx-size 4096] [--kv rot2]
 *                    [--profile P.tsv] [--threads N] [--backend cpu|cuda|auto] [--alias NAME] [--max-tokens 4096]
 *                    [--reasoning-field reasoning_content|reasoning|both] [--slot-save-path DIR]
 */
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { loadModel } from '../Model.js';
import { startOpenAIServer } from '../server.js';
import { intArg } from './args.js';
import { parseKvConfigs } from './eval.js';
import { backendOption } from './progress.js';

export const SERVE_USAGE = `  thinkcache serve --model PATH [--host 127.0.0.1] [--port 8080] [--parallel N] [--ctx-size N] [--kv PRESET|JSON]
                   [--profile P.tsv] [--threads N] [--backend cpu|cuda|auto] [--alias NAME] [--max-tokens N]
                   [--reasoning-field reasoning_content|reasoning|both] [--slot-save-path DIR]
`;

export async function cmdServe(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, host: { type: 'string' }, port: { type: 'string' }, parallel: { type: 'string' },
      'ctx-size': { type: 'string' }, kv: { type: 'string' }, profile: { type: 'string' }, threads: { type: 'string' },
      backend: { type: 'string' }, alias: { type: 'string' }, 'max-tokens': { type: 'string' }, 'reasoning-field': { type: 'string' },
      'slot-save-path': { type: 'string' },
    },
    strict: true,
  });
  if (!values.model) throw new LlmError('thinkcache serve: --model is required', 'ERR_INVALID_OPTIONS');
  const field = values['reasoning-field'] ?? 'reasoning_content';
  if (field !== 'reasoning_content' && field !== 'reasoning' && field !== 'both') {
    throw new LlmError(`--reasoning-field: expected reasoning_content, reasoning or both, received "${field}"`, 'ERR_INVALID_OPTIONS');
  }
  // (every flag checked before the model loads)
  const port = intArg(values.port, 'port', 8080, 0, 65535);
  const parallel = intArg(values.parallel, 'parallel', 1);
  const ctxSize = values['ctx-size'] === undefined ? undefined : intArg(values['ctx-size'], 'ctx-size', 0);
  const threads = values.threads === undefined ? undefined : intArg(values.threads, 'threads', 1);
  const maxTokens = intArg(values['max-tokens'], 'max-tokens', 4096);
  const kv = values.kv ? parseKvConfigs([values.kv], values.profile)[0]!.kv : undefined;
  const model = await loadModel({ path: values.model, backend: backendOption(values.backend) });
  const context = await model.createContext({
    contextSize: ctxSize ?? Math.min(model.info.nCtxTrain || 4096, 4096), sequences: parallel,
    ...(kv ? { kv } : {}), ...(threads !== undefined ? { threads } : {}),
  });
  const server = await startOpenAIServer({
    model, context, port, ...(values.host ? { host: values.host } : {}), ...(values.alias ? { alias: values.alias } : {}),
    defaultMaxTokens: maxTokens, reasoningField: field,
    ...(values['slot-save-path'] ? { slotSavePath: values['slot-save-path'] } : {}),
  });
  process.stderr.write(`thinkcache serve: listening on ${server.url} (${model.backend}, ${parallel} slot(s) of ${context.contextSize} tokens, kv ${values.kv ?? 'full'})\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.close();
  await model.dispose();
  return 0;
}
