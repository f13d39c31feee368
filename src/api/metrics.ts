/**
 * HTTP metrics of the API, in the service's prom-client registry:
 *
 *   virtfw_http_requests_total{method, route, status_code}
 *   virtfw_http_request_duration_seconds{method, route, status_code}
 *
 * `route` is the route pattern (`/v2.0/security-groups/:id`), never the raw
 * URL, so ids do not multiply the series; unmatched URLs share one label.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Counter, Histogram, type Registry } from 'prom-client';

const LABELS = ['method', 'route', 'status_code'] as const;
type Label = (typeof LABELS)[number];
/** Seconds: API calls are store round trips, from ~1 ms (SQLite) to a slow PostgreSQL. */
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export const REQUESTS_TOTAL = 'virtfw_http_requests_total';
export const REQUEST_DURATION = 'virtfw_http_request_duration_seconds';

/**
 * A metric already in the registry (a second app on the same registry, as
 * tests build) is reused; a different metric under the same name is an error.
 */
function reuse<T>(registry: Registry, name: string, kind: abstract new (...args: never[]) => T, create: () => T): T {
  const existing = registry.getSingleMetric(name);
  if (existing === undefined) return create();
  if (!(existing instanceof kind)) throw new Error(`metric ${name} is already registered with another type`);
  return existing;
}

export function httpMetrics(registry: Registry): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  const requests = reuse(
    registry,
    REQUESTS_TOTAL,
    Counter<Label>,
    () => new Counter({ name: REQUESTS_TOTAL, help: 'HTTP requests served by the API', labelNames: LABELS, registers: [registry] }),
  );
  const duration = reuse(
    registry,
    REQUEST_DURATION,
    Histogram<Label>,
    () =>
      new Histogram({
        name: REQUEST_DURATION,
        help: 'Time to answer an HTTP request of the API',
        labelNames: LABELS,
        buckets: BUCKETS,
        registers: [registry],
      }),
  );
  return async (request, reply) => {
    const labels = {
      method: request.method,
      route: request.routeOptions.url ?? 'unmatched',
      status_code: String(reply.statusCode),
    };
    requests.inc(labels);
    duration.observe(labels, reply.elapsedTime / 1000);
  };
}
