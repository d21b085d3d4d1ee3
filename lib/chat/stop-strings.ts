/**
 * String matching for streamed text: where the first of several needles occurs, and how much of the end of a
 * buffer must be held back because it could be the start of a needle that the next chunk completes.
 * Invariant (hold-back): if a needle occurs in the stream at offset p, then whenever text before p has been
 * released, the text from p on has not been, so the full match is always found inside the held buffer.
 */

/** Earliest occurrence of any needle: its index and which needle (the longest one at a tie). */
export function findFirst(haystack: string, needles: readonly string[]): { index: number; needle: string } | undefined {
  let best: { index: number; needle: string } | undefined;
  for (const needle of needles) {
    if (needle.length === 0) continue;
    const index = haystack.indexOf(needle);
    if (index < 0) continue;
    if (!best || index < best.index || (index === best.index && needle.length > best.needle.length)) best = { index, needle };
  }
  return best;
}

/**
 * Length of the longest suffix of `text` that is a proper prefix of some needle (0 when none): the part to hold
 * back until more text arrives.
 * @example partialSuffixLength('abc</th', ['</think>']) === 4
 */
export function partialSuffixLength(text: string, needles: readonly string[]): number {
  let hold = 0;
  for (const needle of needles) {
    for (let k = Math.min(needle.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(needle.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}
