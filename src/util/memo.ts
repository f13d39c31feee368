/**
 * A bounded memo: the value computed for `key`, kept in `cache` (emptied
 * when it reaches `limit` entries, so it never grows without bound; it only
 * ever holds results, so emptying it costs recomputation, nothing else).
 */
export function memo<T>(cache: Map<string, T>, key: string, compute: () => T, limit = 100_000): T {
  const hit = cache.get(key);
  if (hit !== undefined || cache.has(key)) return hit as T;
  if (cache.size >= limit) cache.clear();
  const value = compute();
  cache.set(key, value);
  return value;
}
