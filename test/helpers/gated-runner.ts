/**
 * A runner that passes every command to `inner`, except that, once armed, it
 * holds the next command `matches` accepts until the test releases it: to
 * make changes while an apply's tool is running.
 */
import type { CommandRunner } from '../../src/kernel/exec.js';

export interface GatedRunner extends CommandRunner {
  /** Holds the next matching command. */
  arm(): void;
  /** Resolves once a matching command is being held. */
  held(): Promise<void>;
  /** Lets the held command run. */
  release(): void;
}

export function gatedRunner(inner: CommandRunner, matches: (argv: readonly string[]) => boolean): GatedRunner {
  let armed = false;
  let holding = false;
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  return {
    run: async (argv, options) => {
      if (armed && matches(argv)) {
        armed = false;
        holding = true;
        await gate;
      }
      return inner.run(argv, options);
    },
    arm: () => {
      armed = true;
    },
    held: async () => {
      while (!holding) await new Promise((resolve) => setImmediate(resolve));
    },
    release: () => release(),
  };
}
