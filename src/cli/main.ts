#!/usr/bin/env node
/**
 * The virtfw command line. Each command parses its flags, calls the library
 * and prints the result; any error becomes one line on stderr and exit 1.
 */
import { Command, CommanderError } from 'commander';
import { FirewallError } from '../errors.js';
import { registerHostCommands } from './commands/host.js';
import { registerResourceCommands } from './commands/resources.js';
import { registerServiceCommands } from './commands/service.js';

export function buildProgram(): Command {
  const program = new Command('virtfw')
    .description('security groups for virtual instances, enforced by the Linux kernel')
    .version('0.1.0')
    .showHelpAfterError('(add --help for usage)')
    .exitOverride();
  registerServiceCommands(program);
  registerResourceCommands(program);
  registerHostCommands(program);
  return program;
}

export async function main(argv: string[] = process.argv): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode;
    }
    const message = err instanceof FirewallError ? `${err.message} [${err.code}]` : err instanceof Error ? err.message : String(err);
    process.stderr.write(`virtfw: ${message.split('\n')[0]}\n`);
    return 1;
  }
}

const invokedDirectly = process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (invokedDirectly || process.argv[1]?.endsWith('/virtfw')) {
  process.exitCode = await main();
}
