/**
 * Progress bars on stderr (cli-progress) for the two waits a CLI user sees: loading the model and a long
 * prefill. Shown only on an interactive stderr, never with --json, in CI or with NO_PROGRESS set, so piped
 * and machine-read output stays clean.
 * Loading: the weights are memory-mapped by the native core, so "loading" is mostly reading the file into the
 * page cache; with a bar shown we read it ahead ourselves (in chunks, counting bytes), then map it, which
 * costs the same I/O the first forward pass would have paid page by page (not for files over half the RAM,
 * which would only evict other pages: those get a one-line notice instead).
 */
import { open, stat } from 'node:fs/promises';
import { totalmem } from 'node:os';
import cliProgress from 'cli-progress';
import { LlmError } from '../errors.js';
import { loadModel, type Model } from '../Model.js';
import type { GenerateEvent } from '../Sequence.js';

/** Files smaller than this load too fast for a bar to help. */
const LOAD_BAR_MIN_BYTES = 64 << 20;
const READ_CHUNK_BYTES = 8 << 20;

/** Whether progress bars may be drawn (interactive stderr, not --json, not CI). */
export function progressEnabled(json: boolean | undefined): boolean {
  return !json && process.stderr.isTTY === true && !process.env.CI && !process.env.NO_PROGRESS;
}

function bar(format: string): cliProgress.SingleBar {
  return new cliProgress.SingleBar({
    stream: process.stderr,
    format,
    clearOnComplete: true,
    stopOnComplete: true,
    hideCursor: true,
    barsize: 30,
    etaBuffer: 20,
  }, cliProgress.Presets.shades_classic);
}

const mib = (n: number) => (n / (1 << 20)).toFixed(0);

export type CliBackend = 'cpu' | 'cuda' | 'auto';

/** --backend: "cpu", "cuda" or "auto" (the default: CUDA when this build and machine can run it). */
export function backendOption(v: string | undefined): CliBackend {
  if (v === undefined) return 'auto';
  if (v === 'cpu' || v === 'cuda' || v === 'auto') return v;
  throw new LlmError(`--backend: expected cpu, cuda or auto, received "${v}"`, 'ERR_INVALID_OPTIONS');
}

/** loadModel() with a bar while the weights are read (when `show`). */
export async function loadModelWithProgress(path: string, show: boolean, backend: CliBackend = 'auto'): Promise<Model> {
  if (show) {
    const size = await stat(path).then((s) => s.size, () => 0);
    if (size > totalmem() / 2) {
      // reading ahead a file this large would only push other pages out of the cache
      process.stderr.write(`loading model (${mib(size)} MiB, memory-mapped)…\n`);
    } else if (size >= LOAD_BAR_MIN_BYTES) {
      const b = bar('loading model |{bar}| {percentage}% {mib}/{totalMib} MiB | {eta_formatted}');
      b.start(size, 0, { mib: '0', totalMib: mib(size) });
      try {
        const fh = await open(path, 'r');
        try {
          const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES);
          for (let pos = 0; pos < size;) {
            const { bytesRead } = await fh.read(buf, 0, READ_CHUNK_BYTES, pos);
            if (bytesRead === 0) break;
            pos += bytesRead;
            b.update(pos, { mib: mib(pos) });
          }
        } finally {
          await fh.close();
        }
      } catch {
        // read-ahead is only a warm-up; loadModel reports real errors
      } finally {
        b.stop();
      }
    }
  }
  return loadModel({ path, backend });
}

/** Feeds generate() events; draws a bar from the first prefill-progress event until the first output. */
export class PrefillProgress {
  private bar: cliProgress.SingleBar | undefined;
  constructor(private readonly show: boolean) {}

  onEvent(ev: GenerateEvent): void {
    if (!this.show) return;
    if (ev.type === 'prefill-progress') {
      if (!this.bar) {
        this.bar = bar('prefill       |{bar}| {value}/{total} tokens | {eta_formatted}');
        this.bar.start(ev.total, ev.processed);
      } else this.bar.update(ev.processed);
    } else if (ev.type !== 'start') this.stop();
  }

  stop(): void {
    if (!this.bar) return;
    this.bar.stop();
    this.bar = undefined;
  }
}
