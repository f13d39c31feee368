import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { TokenAuth } from '../../src/api/auth.js';
import { ValidationError } from '../../src/errors.js';
import { BACKENDS, TOKEN_FILE, TOKENS, useApi } from './harness.js';

function validationField(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return (err as ValidationError).field;
  }
  throw new Error('expected a ValidationError');
}

describe('TokenAuth', () => {
  it('resolves each token to its principal, and nothing else', () => {
    const auth = TokenAuth.fromObject(TOKEN_FILE);
    expect(auth.size).toBe(3);
    expect(auth.resolve(TOKENS.demo)).toEqual({ projectId: 'demo', admin: false });
    expect(auth.resolve(TOKENS.admin)).toEqual({ projectId: 'ops', admin: true });
    expect(auth.resolve(`${TOKENS.demo}x`)).toBeNull();
    expect(auth.resolve(TOKENS.demo.slice(0, -1))).toBeNull();
    expect(auth.resolve('')).toBeNull();
    expect(auth.resolve('x'.repeat(10_000))).toBeNull();
  });

  it('validates the file and names the bad key or field without revealing the token', () => {
    expect(validationField(() => TokenAuth.fromObject(null))).toBe('tokens file');
    expect(validationField(() => TokenAuth.fromObject({}))).toBe('tokens');
    expect(validationField(() => TokenAuth.fromObject({ tokens: [] }))).toBe('tokens');
    expect(validationField(() => TokenAuth.fromObject({ tokens: {}, users: {} }))).toBe('users');
    expect(validationField(() => TokenAuth.fromObject({ tokens: { short: { project: 'p' } } }))).toBe('tokens["shor…"]');
    expect(validationField(() => TokenAuth.fromObject({ tokens: { 'has space 0123456789': { project: 'p' } } }))).toBe(
      'tokens["has …"]',
    );
    const t = 'abcd0123456789abcdef';
    expect(validationField(() => TokenAuth.fromObject({ tokens: { [t]: 'p' } }))).toBe('tokens["abcd…"]');
    expect(validationField(() => TokenAuth.fromObject({ tokens: { [t]: {} } }))).toBe('tokens["abcd…"].project');
    expect(validationField(() => TokenAuth.fromObject({ tokens: { [t]: { project: 'bad project' } } }))).toBe(
      'tokens["abcd…"].project',
    );
    expect(validationField(() => TokenAuth.fromObject({ tokens: { [t]: { project: 'p', admin: 'yes' } } }))).toBe(
      'tokens["abcd…"].admin',
    );
    expect(validationField(() => TokenAuth.fromObject({ tokens: { [t]: { project: 'p', role: 'x' } } }))).toBe(
      'tokens["abcd…"].role',
    );
    try {
      TokenAuth.fromObject({ tokens: { [t]: { project: 'p', admin: 'yes' } } });
    } catch (err) {
      expect((err as Error).message).not.toContain(t);
    }
  });

  it('reads a token file, and reports one that is not JSON', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'virtfw-tokens-'));
    try {
      const good = join(dir, 'tokens.json');
      await writeFile(good, JSON.stringify(TOKEN_FILE));
      expect((await TokenAuth.fromFile(good)).resolve(TOKENS.other)).toEqual({ projectId: 'other', admin: false });
      const bad = join(dir, 'bad.json');
      await writeFile(bad, '{"tokens": ');
      await expect(TokenAuth.fromFile(bad)).rejects.toMatchObject({ field: bad });
      await expect(TokenAuth.fromFile(join(dir, 'missing.json'))).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe.each(BACKENDS)('authentication over HTTP (%s)', (backend) => {
  const api = useApi(backend, 'auth');
  const open = useApi(backend, 'noauth', { noAuth: true });

  it('accepts X-Auth-Token and Authorization: Bearer', async () => {
    await api.ok(200, 'GET', '/v2.0/security-groups', { header: 'x-auth-token' });
    await api.ok(200, 'GET', '/v2.0/security-groups', { header: 'bearer' });
    await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'none', headers: { authorization: `bearer ${TOKENS.demo}` } });
  });

  const routes: Array<[string, string]> = [
    ['GET', '/v2.0/security-groups'],
    ['POST', '/v2.0/security-groups'],
    ['GET', '/v2.0/security-groups/x'],
    ['PUT', '/v2.0/security-groups/x'],
    ['DELETE', '/v2.0/security-groups/x'],
    ['GET', '/v2.0/security-group-rules'],
    ['POST', '/v2.0/security-group-rules'],
    ['GET', '/v2.0/security-group-rules/x'],
    ['DELETE', '/v2.0/security-group-rules/x'],
    ['GET', '/v2.0/instances'],
    ['POST', '/v2.0/instances'],
    ['GET', '/v2.0/instances/x'],
    ['PUT', '/v2.0/instances/x'],
    ['DELETE', '/v2.0/instances/x'],
    ['GET', '/v2.0/provider-firewall-rules'],
    ['POST', '/v2.0/provider-firewall-rules'],
    ['DELETE', '/v2.0/provider-firewall-rules/x'],
    ['GET', '/v2.0/status'],
    ['GET', '/v2.0/hosts/h/ruleset'],
  ];

  it.each(routes)('%s %s: 401 without a token, with an unknown one, or a malformed header', async (method, url) => {
    const seq = await api.seq();
    const body = method === 'POST' || method === 'PUT' ? { anything: true } : undefined;
    const missing = await api.fails(401, 'HTTPUnauthorized', method as 'GET', url, { as: 'none', body });
    expect(missing.headers['www-authenticate']).toBe('Bearer');
    await api.fails(401, 'HTTPUnauthorized', method as 'GET', url, {
      as: 'none',
      body,
      headers: { 'x-auth-token': 'unknown-token-0123456789abcdef' },
    });
    await api.fails(401, 'HTTPUnauthorized', method as 'GET', url, {
      as: 'none',
      body,
      headers: { authorization: 'Bearer unknown-token-0123456789abcdef' },
    });
    await api.fails(401, 'HTTPUnauthorized', method as 'GET', url, {
      as: 'none',
      body,
      headers: { authorization: `Basic ${Buffer.from(`u:${TOKENS.admin}`).toString('base64')}` },
    });
    expect(await api.seq()).toBe(seq);
  });

  it('without a token file every request is the admin of project default', async () => {
    const groups = await open.ok(200, 'GET', '/v2.0/security-groups', { as: 'none' });
    expect(groups.security_groups).toEqual([expect.objectContaining({ name: 'default', project_id: 'default' })]);
    await open.ok(200, 'GET', '/v2.0/provider-firewall-rules', { as: 'none' });
    const { security_group: g } = await open.ok(201, 'POST', '/v2.0/security-groups', {
      as: 'none',
      body: { security_group: { name: 'elsewhere', project_id: 'p2' } },
    });
    expect(g.project_id).toBe('p2');
  });
});
