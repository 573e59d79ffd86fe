/**
 * A binary min-heap of indexes ordered by a key per index (ties go to the smaller index): the items are
 * small integers, the keys a `Float64Array` the caller updates in place. No object per item, no allocation
 * per step.
 */

/** Orders `heap` (indexes into `key`) as a min-heap, in place. */
export function heapify(heap: Uint32Array, key: Float64Array): void {
  for (let at = (heap.length >> 1) - 1; at >= 0; at--) siftDown(heap, key, at);
}

/** Restores the heap below `from`: the index with the lowest (key, index) at the root. */
export function siftDown(heap: Uint32Array, key: Float64Array, from: number): void {
  const count = heap.length;
  let at = from;
  const item = heap[at]!;
  const itemKey = key[item]!;
  for (;;) {
    const left = 2 * at + 1;
    if (left >= count) break;
    let child = left;
    let childItem = heap[left]!;
    let childKey = key[childItem]!;
    const right = left + 1;
    if (right < count) {
      const rightItem = heap[right]!;
      const rightKey = key[rightItem]!;
      if (rightKey < childKey || (rightKey === childKey && rightItem < childItem)) {
        child = right;
        childItem = rightItem;
        childKey = rightKey;
      }
    }
    if (!(childKey < itemKey || (childKey === itemKey && childItem < item))) break;
    heap[at] = childItem;
    at = child;
  }
  heap[at] = item;
}
