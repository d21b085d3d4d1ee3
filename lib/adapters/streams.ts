/**
 * Adapters from generate()'s async iterator to what other code expects (PEERS.md §3.4): a Web
 * `ReadableStream` (for `new Response(stream)` in fetch-style servers, or `pipeThrough`), and callbacks for
 * code written around onToken-style APIs. Cancelling the stream, like breaking out of the loop, stops the
 * generation.
 */
import { InvalidOptionsError } from '../errors.js';
import type { GenerateEvent } from '../Sequence.js';

/**
 * A ReadableStream over any async iterable (generate()'s events, toOpenAISSE's strings). Pulled one item at a
 * time, so a slow reader throttles decoding; `cancel()` calls the iterator's `return()`, which stops the
 * generation (finish reason 'aborted').
 * @example new Response(toReadableStream(toOpenAISSE(seq.generate(msgs), { model }), { encode: true }), { headers: { 'content-type': 'text/event-stream' } })
 */
export function toReadableStream<T>(source: AsyncIterable<T>): ReadableStream<T>;
/** With `encode: true` the strings are UTF-8 bytes (what a Response body or a socket takes). */
export function toReadableStream(source: AsyncIterable<string>, options: { encode: true }): ReadableStream<Uint8Array>;
export function toReadableStream<T>(source: AsyncIterable<T>, options: { encode?: boolean } = {}): ReadableStream<T | Uint8Array> {
  const it = source[Symbol.asyncIterator]();
  const encoder = options.encode ? new TextEncoder() : undefined;
  return new ReadableStream<T | Uint8Array>({
    async pull(controller) {
      try {
        const r = await it.next();
        if (r.done) controller.close();
        else controller.enqueue(encoder ? encoder.encode(r.value as string) : r.value);
      } catch (err) {
        controller.error(err);
      }
    },
    async cancel() {
      await it.return?.();
    },
  }, { highWaterMark: 0 });  // (nothing is read ahead of the consumer: no token is decoded that nobody asked for)
}

type Finish = Extract<GenerateEvent, { type: 'finish' }>;

export interface GenerateCallbacks {
  /** Each piece of the answer (whole characters). */
  onTextChunk?: (text: string) => void;
  /** Each piece of the reasoning (without its tags). */
  onReasoningChunk?: (text: string) => void;
  /** Every event, before the specific callback. */
  onEvent?: (event: GenerateEvent) => void;
  onFinish?: (finish: Finish) => void;
}

/**
 * Runs a generation to its end, calling the callbacks; resolves with the finish event. A callback that throws
 * stops the generation (its error rejects the promise).
 * @example const fin = await consumeGenerate(seq.generate(msgs), { onTextChunk: (t) => process.stdout.write(t) });
 */
export async function consumeGenerate(events: AsyncIterable<GenerateEvent>, callbacks: GenerateCallbacks): Promise<Finish> {
  let fin: Finish | undefined;
  for await (const ev of events) {
    callbacks.onEvent?.(ev);
    if (ev.type === 'text-delta') callbacks.onTextChunk?.(ev.text);
    else if (ev.type === 'reasoning-delta') callbacks.onReasoningChunk?.(ev.text);
    else if (ev.type === 'finish') {
      fin = ev;
      callbacks.onFinish?.(ev);
    }
  }
  if (!fin) throw new InvalidOptionsError('consumeGenerate: the events ended without a finish event (not a generate() stream?)');
  return fin;
}
