/**
 * Work split into steps: a generator that yields between pieces of a long computation (a tokenizer's
 * vocabulary, a long text's BPE words, a model's metadata). The same generator runs at once (`runSteps`)
 * or with a turn for the event loop whenever a slice of time has passed (`runStepsAsync`), so the sync and
 * async APIs share one implementation and give the same result.
 */
export type Steps<T> = Generator<void, T, void>;

/** Runs the steps to their end at once. */
export function runSteps<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** Runs the steps, giving the event loop a turn (setImmediate) whenever `sliceMs` have passed since the last. */
export async function runStepsAsync<T>(steps: Steps<T>, sliceMs = 4): Promise<T> {
  let t0 = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - t0 < sliceMs) continue;
    await new Promise<void>((resolve) => setImmediate(resolve));
    t0 = performance.now();
  }
}
