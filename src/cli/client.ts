/**
 * A small client for virtfw's REST API (Neutron wire format). Errors from the
 * API become ApiError with the server's message, so the CLI can print one
 * line and exit non-zero.
 */
import { FirewallError } from '../errors.js';

export class ApiError extends FirewallError {
  readonly status: number;

  constructor(status: number, type: string, message: string) {
    super('VIRTFW_ERR_API', `${message} (HTTP ${status}${type ? ` ${type}` : ''})`, { details: { status, type } });
    this.status = status;
  }
}

export interface ClientOptions {
  url: string;
  token?: string | undefined;
  timeoutMs?: number;
}

export class ApiClient {
  readonly #base: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;

  constructor(options: ClientOptions) {
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new FirewallError('VIRTFW_ERR_VALIDATION', `--url: ${JSON.stringify(options.url)} is not a URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new FirewallError('VIRTFW_ERR_VALIDATION', `--url: ${JSON.stringify(options.url)} is not an http(s) URL`);
    }
    this.#base = parsed.href.replace(/\/+$/, '');
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#token) headers['x-auth-token'] = this.#token;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response: Response;
    try {
      response = await fetch(`${this.#base}${path}`, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      throw new FirewallError('VIRTFW_ERR_UNREACHABLE', `cannot reach virtfw at ${this.#base}: ${cause}`);
    }
    const text = await response.text();
    if (!response.ok) {
      let type = '';
      let message = text.trim() || response.statusText;
      try {
        const parsed = JSON.parse(text) as { NeutronError?: { type?: string; message?: string } };
        if (parsed.NeutronError) {
          type = parsed.NeutronError.type ?? '';
          message = parsed.NeutronError.message ?? message;
        }
      } catch {
        // not JSON: keep the text
      }
      throw new ApiError(response.status, type, message);
    }
    if (response.status === 204 || text === '') return undefined as T;
    const contentType = response.headers.get('content-type') ?? '';
    return (contentType.includes('json') ? JSON.parse(text) : text) as T;
  }
}
