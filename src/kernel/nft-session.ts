/**
 * `nft -i` as a ToolSession, for element-only transactions: each is ONE
 * input line (`cmd; cmd; ...`), which nft commits as one batch, all or
 * nothing. The sync line is a bare marker: nft rejects it as a syntax error
 * and echoes it on stderr with a line of carets under it.
 */
import type { CommandRunner } from './exec.js';
import { ToolSession, type SessionDialect } from './tool-session.js';

export { SessionBrokenError, type SessionResult } from './tool-session.js';

/** Longer lines go through `nft -f` (line editors have limits of their own). */
export const SESSION_MAX_LINE = 32 * 1024;

const NFT_DIALECT: SessionDialect = {
  args: ['-i'],
  oneLine: true,
  syncLine: (marker) => marker,
  ownOutput(stderr, marker) {
    if (!new RegExp(`(^|\\n)${marker}\\n[ ^~]*\\n`).test(stderr)) return undefined;
    const before = stderr.slice(0, stderr.lastIndexOf(marker));
    // The sync line's own complaint is the last "Error:" line before its echo.
    const own = before.lastIndexOf('Error:');
    return (own === -1 ? before : before.slice(0, own)).trim();
  },
};

export class NftSession extends ToolSession {
  constructor(runner: CommandRunner, nft: string, timeoutMs?: number) {
    super(runner, nft, NFT_DIALECT, timeoutMs);
  }
}
