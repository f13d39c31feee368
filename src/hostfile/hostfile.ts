/**
 * A host file: a whole host's security-group model in one JSON document, for
 * running the driver without a data store (`virtfw apply`, `virtfw ruleset`).
 *
 *   { "securityGroups": [{ "id", "name"?, "rules": [SecurityGroupRule...] }],
 *     "instances": [{ "instance": { "id", ... }, "networkInfo": [Nova VIF...], "securityGroups": ["id", ...] }],
 *     "providerRules": [ProviderRule...] }
 *
 * Everything is validated on load (a bad field is named), so nothing is
 * applied from a file with a mistake in it.
 */
import { readFile } from 'node:fs/promises';
import { ValidationError } from '../errors.js';
import type { Instance, NetworkInfo, ProviderRule, SecurityGroupRule } from '../model/types.js';
import { normalizeInstance, normalizeProviderRule, normalizeRule, validateId } from '../model/validate.js';
import { InMemoryVirtAPI } from '../virtapi/memory.js';

export interface HostFile {
  securityGroups?: { id: string; name?: string; rules?: SecurityGroupRule[] }[];
  instances?: { instance: Instance; networkInfo: NetworkInfo; securityGroups?: string[] }[];
  providerRules?: ProviderRule[];
}

export interface LoadedHost {
  api: InMemoryVirtAPI;
  instances: { instance: Instance; networkInfo: NetworkInfo }[];
}

function list<T>(value: unknown, field: string): T[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new ValidationError(field, 'must be an array');
  return value as T[];
}

export function loadHost(doc: unknown): LoadedHost {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ValidationError('host file', 'must be a JSON object');
  const file = doc as HostFile;
  const api = new InMemoryVirtAPI();
  const groupIds = new Set<string>();
  list<NonNullable<HostFile['securityGroups']>[number]>(file.securityGroups, 'securityGroups').forEach((g, i) => {
    const id = validateId(`securityGroups[${i}].id`, g?.id);
    const rules = list<SecurityGroupRule>(g.rules, `securityGroups[${i}].rules`);
    rules.forEach((r, k) => normalizeRule(r, `securityGroups[${i}].rules[${k}]`));
    api.putGroup({ id, ...(g.name ? { name: g.name } : {}) }, rules);
    groupIds.add(id);
  });
  const instances: LoadedHost['instances'] = [];
  list<NonNullable<HostFile['instances']>[number]>(file.instances, 'instances').forEach((entry, i) => {
    normalizeInstance(entry?.instance, entry?.networkInfo, `instances[${i}].instance`);
    const groups = list<string>(entry.securityGroups, `instances[${i}].securityGroups`);
    groups.forEach((g, k) => {
      if (!groupIds.has(g)) throw new ValidationError(`instances[${i}].securityGroups[${k}]`, `unknown security group ${JSON.stringify(g)}`);
    });
    api.putInstance(entry.instance, entry.networkInfo, groups);
    instances.push({ instance: entry.instance, networkInfo: entry.networkInfo });
  });
  list<ProviderRule>(file.providerRules, 'providerRules').forEach((r, i) => {
    normalizeProviderRule(r, `providerRules[${i}]`);
    api.addProviderRule(r);
  });
  return { api, instances };
}

export async function readHostFile(path: string): Promise<LoadedHost> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new ValidationError('host file', `${path}: ${(err as Error).message}`);
  }
  return loadHost(doc);
}
