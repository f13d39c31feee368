/** Prometheus metrics of the host agent, registered on the service's registry. */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface AgentMetrics {
  applies: Counter<'kind'>;
  applyDuration: Histogram;
  errors: Counter;
  rules: Gauge<'table'>;
  driftRepairs: Counter;
  appliedSeq: Gauge;
}

export function createAgentMetrics(registry: Registry): AgentMetrics {
  return {
    applies: new Counter({
      name: 'virtfw_applies_total',
      help: 'Batches applied to the kernel (kind: full sync or change-log batch)',
      labelNames: ['kind'],
      registers: [registry],
    }),
    applyDuration: new Histogram({
      name: 'virtfw_apply_duration_seconds',
      help: 'Time to read, render and apply one batch',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    errors: new Counter({
      name: 'virtfw_apply_errors_total',
      help: 'Failed applies and instances refused for invalid data',
      registers: [registry],
    }),
    rules: new Gauge({
      name: 'virtfw_rules',
      help: 'Rules virtfw wants in the kernel, per table',
      labelNames: ['table'],
      registers: [registry],
    }),
    driftRepairs: new Counter({
      name: 'virtfw_drift_repairs_total',
      help: 'Chains, hook rules and bridge chains found changed behind virtfw\'s back and rewritten by a resync',
      registers: [registry],
    }),
    appliedSeq: new Gauge({
      name: 'virtfw_applied_change_seq',
      help: 'The last change-log entry whose effect is in the kernel',
      registers: [registry],
    }),
  };
}
