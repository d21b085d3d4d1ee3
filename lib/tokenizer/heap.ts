/**
 * A binary min-heap ordered by `before(a, b)` ("a comes out first"). Both tokenizers merge the best
 * adjacent pair first (SPM by score, BPE by merge rank) and share this queue.
 */
export class PriorityQueue<T> {
    private heap: T[] = [];
    constructor(private readonly before: (a: T, b: T) => boolean) {}
    get size(): number { return this.heap.length; }
    clear(): void { this.heap = []; }
    push(item: T): void {
        const h = this.heap;
        let i = h.push(item) - 1;
        while (i > 0) {
            const parent = (i - 1) >> 1;
            if (!this.before(item, h[parent]!)) break;
            h[i] = h[parent]!;
            i = parent;
        }
        h[i] = item;
    }
    /** note: call only when size > 0. */
    pop(): T {
        const h = this.heap;
        const top = h[0]!;
        const last = h.pop()!;
        if (h.length > 0) {
            let i = 0;
            for (;;) {
                const l = 2 * i + 1;
                if (l >= h.length) break;
                const r = l + 1;
                const c = r < h.length && this.before(h[r]!, h[l]!) ? r : l;
                if (!this.before(h[c]!, last)) break;
                h[i] = h[c]!;
                i = c;
            }
            h[i] = last;
        }
        return top;
    }
}
