/**
 * Token authentication from a JSON token file:
 *
 *   { "tokens": { "<token>": { "project": "demo" },
 *                 "<token2>": { "project": "ops", "admin": true } } }
 *
 * A request names its token in `X-Auth-Token` (as Keystone clients do) or
 * `Authorization: Bearer`. Tokens are kept only as SHA-256 digests and a
 * presented token is compared with every one of them in constant time, so
 * neither the comparison nor the lookup tells an attacker how much of a
 * guess was right.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyRequest } from 'fastify';
import { ValidationError } from '../errors.js';
import { validateId } from '../model/validate.js';
import { unauthorized } from './errors.js';

/** Who a request acts for. */
export interface Principal {
  projectId: string;
  /** admins see and manage every project's resources, and the provider rules */
  admin: boolean;
}

/** Shorter tokens are guessable; 16 characters of a random alphabet is the floor. */
export const MIN_TOKEN_LENGTH = 16;
/** Longer headers are refused before hashing. */
const MAX_TOKEN_LENGTH = 4096;

interface Entry {
  digest: Buffer;
  principal: Principal;
}

const digest = (token: string): Buffer => createHash('sha256').update(token, 'utf8').digest();

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A token named in an error without revealing it: its first 4 characters. */
function redact(token: string): string {
  return JSON.stringify(token.length > 4 ? `${token.slice(0, 4)}…` : token);
}

export class TokenAuth {
  readonly #entries: readonly Entry[];

  private constructor(entries: Entry[]) {
    this.#entries = Object.freeze(entries);
  }

  /** Reads and validates a token file. */
  static async fromFile(path: string): Promise<TokenAuth> {
    const text = await readFile(path, 'utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new ValidationError(path, `is not valid JSON (${(err as Error).message})`);
    }
    return TokenAuth.fromObject(parsed);
  }

  /** Validates a parsed token file; a bad entry raises a ValidationError naming it. */
  static fromObject(obj: unknown): TokenAuth {
    if (!isRecord(obj)) throw new ValidationError('tokens file', 'must be an object with a "tokens" object');
    for (const key of Object.keys(obj)) {
      if (key !== 'tokens') throw new ValidationError(key, 'is not a known key (the file holds only "tokens")');
    }
    if (!isRecord(obj.tokens)) throw new ValidationError('tokens', 'must be an object mapping each token to {project, admin?}');
    const entries: Entry[] = [];
    for (const [token, value] of Object.entries(obj.tokens)) {
      const field = `tokens[${redact(token)}]`;
      if (token.length < MIN_TOKEN_LENGTH) {
        throw new ValidationError(field, `a token must be at least ${MIN_TOKEN_LENGTH} characters long`);
      }
      if (token.length > MAX_TOKEN_LENGTH || !/^[\x21-\x7e]+$/.test(token)) {
        throw new ValidationError(field, `a token must be at most ${MAX_TOKEN_LENGTH} printable ASCII characters, without spaces`);
      }
      if (!isRecord(value)) throw new ValidationError(field, 'must be an object {project, admin?}');
      for (const key of Object.keys(value)) {
        if (key !== 'project' && key !== 'admin') {
          throw new ValidationError(`${field}.${key}`, 'is not a known field (use project and admin)');
        }
      }
      const projectId = validateId(`${field}.project`, value.project);
      if (value.admin !== undefined && typeof value.admin !== 'boolean') {
        throw new ValidationError(`${field}.admin`, 'must be true or false');
      }
      entries.push({ digest: digest(token), principal: Object.freeze({ projectId, admin: value.admin === true }) });
    }
    return new TokenAuth(entries);
  }

  get size(): number {
    return this.#entries.length;
  }

  /** The principal a token stands for, or null. Takes the same time whichever entry (if any) matches. */
  resolve(token: string): Principal | null {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) return null;
    const presented = digest(token);
    let found: Principal | null = null;
    for (const entry of this.#entries) {
      // No early exit: every entry is compared.
      if (timingSafeEqual(presented, entry.digest)) found = entry.principal;
    }
    return found;
  }
}

/** The token a request presents: X-Auth-Token, else Authorization: Bearer. */
export function presentedToken(request: FastifyRequest): string | null {
  const header = request.headers['x-auth-token'];
  if (typeof header === 'string' && header.length > 0) return header.trim();
  const authorization = request.headers.authorization;
  if (typeof authorization === 'string') {
    const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
    if (match) return match[1]!;
  }
  return null;
}

/** Without a token file every request acts as the admin of project `default`. */
export const NO_AUTH_PRINCIPAL: Principal = Object.freeze({ projectId: 'default', admin: true });

/** The principal of a request, or a 401 ApiError. */
export function authenticate(auth: TokenAuth | null, request: FastifyRequest): Principal {
  if (auth === null) return NO_AUTH_PRINCIPAL;
  const token = presentedToken(request);
  const principal = token === null ? null : auth.resolve(token);
  if (principal === null) throw unauthorized();
  return principal;
}
