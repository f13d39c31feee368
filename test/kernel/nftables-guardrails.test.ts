/**
 * NftablesFirewallDriver guardrails: once its first apply has returned, the
 * driver looks for other firewalls filtering the same devices
 * (iptables-legacy, iptables-nft, other nft tables) and reports each in
 * `driver.conflicts`, in words an operator can act on; with nothing else
 * present the list is empty. And `virtfw ruleset --format nft` prints the driver's transaction
 * without touching the kernel; the kernel accepts it (`nft -c`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NftablesFirewallDriver } from '../../src/drivers/nftables-driver.js';
import { EGRESS_ALL, Lab, type Vm } from '../helpers/fixtures.js';
import { run } from '../helpers/topology.js';

/** What the start-up check says, given the devices it names. */
const onTop = (label: string, devices: string) => `${label} has rules for ${devices}: they apply on top of virtfw's`;

describe('NftablesFirewallDriver: start-up conflict check', () => {
  let lab: Lab;
  let a: Vm;
  let b: Vm;

  /** The agent's start-up: every instance in one deferred batch, so the check sees every device. */
  async function startUp(): Promise<NftablesFirewallDriver> {
    const driver = lab.driver('nftables');
    driver.filterDeferApplyOn();
    await lab.filter(driver, a, b);
    await driver.filterDeferApplyOff();
    expect(await driver.instanceFilterExists(b.instance, b.nwinfo)).toBe(true);
    await driver.conflictsChecked();
    return driver;
  }

  beforeAll(async () => {
    lab = await Lab.create();
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    a = await lab.vm('a', 10, ['out']);
    b = await lab.vm('b', 11, ['out']);
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('finds nothing when nothing else filters the devices', async () => {
    const driver = lab.driver('nftables');
    try {
      await lab.filter(driver, a, b);
      await driver.conflictsChecked();
      expect(driver.conflicts).toEqual([]);
    } finally {
      await driver.teardown();
    }
  });

  it("reports the iptables driver's chains and rules (iptables-nft, both families)", async () => {
    const old = lab.driver('iptables');
    await lab.filter(old, a, b);
    try {
      const driver = await startUp();
      const leftovers = (label: string) =>
        `${label} holds virtfw-* chains (the iptables driver filtered this host): remove them with \`virtfw teardown --prefix virtfw\` before using the nftables driver`;
      expect(driver.conflicts).toEqual([
        leftovers('iptables-nft'),
        onTop('iptables-nft', 'tap-a, tap-b'),
        leftovers('ip6tables-nft'),
        onTop('ip6tables-nft', 'tap-a, tap-b'),
      ]);
      await driver.teardown();
    } finally {
      await old.teardown();
    }
  });

  it('reports hand-made iptables-legacy, iptables-nft and nft rules naming the devices, and only those', async () => {
    const foreign = [
      ['iptables-legacy', '-A', 'FORWARD', '-m', 'physdev', '--physdev-in', 'tap-a', '-j', 'ACCEPT'],
      ['ip6tables-legacy', '-A', 'FORWARD', '-m', 'physdev', '--physdev-out', 'tap-b', '-j', 'ACCEPT'],
      ['iptables', '-A', 'FORWARD', '-m', 'physdev', '--physdev-out', 'tap-b', '-j', 'DROP'],
      // a device that is not ours
      ['iptables', '-A', 'FORWARD', '-m', 'physdev', '--physdev-out', 'tap-zz', '-j', 'DROP'],
      ['nft', 'add', 'table', 'inet', 'other'],
      ['nft', 'add', 'chain', 'inet', 'other', 'forward', '{ type filter hook forward priority 10; policy accept; }'],
      ['nft', 'add', 'rule', 'inet', 'other', 'forward', 'iifname', 'tap-b', 'counter'],
      ['nft', 'add', 'rule', 'inet', 'other', 'forward', 'oifname', 'tap-zz', 'counter'],
    ];
    for (const argv of foreign) await lab.hostMust(argv);
    try {
      const driver = await startUp();
      expect(driver.conflicts).toEqual([
        onTop('iptables-legacy', 'tap-a'),
        onTop('ip6tables-legacy', 'tap-b'),
        onTop('iptables-nft', 'tap-b'),
        onTop('nft table inet other', 'tap-b'),
      ]);
      await driver.teardown();
    } finally {
      for (const argv of [
        ['iptables-legacy', '-F', 'FORWARD'],
        ['ip6tables-legacy', '-F', 'FORWARD'],
        ['iptables', '-F', 'FORWARD'],
        ['nft', 'delete', 'table', 'inet', 'other'],
      ]) {
        await lab.hostExec(argv);
      }
    }
  });
});

describe('virtfw ruleset --format nft', () => {
  let lab: Lab;

  beforeAll(async () => {
    lab = await Lab.create();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it("prints the nftables driver's transaction for a host file, which the kernel accepts", async () => {
    // `virtfw` from the sources (tsx), as `npx tsx src/cli/main.ts` would run it.
    const cli = [process.execPath, '--import', 'tsx', 'src/cli/main.ts'];
    const r = await run([...cli, 'ruleset', '--format', 'nft', '-f', 'examples/host.json'], { timeoutMs: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const text = r.stdout;
    expect(text.split('\n')[0]).toBe('# nft -f -');
    expect(text).toContain('add table inet virtfw');
    expect(text).toContain('add chain inet virtfw hook-forward { type filter hook forward priority -5; policy accept; }');
    expect(text).toContain('add chain inet virtfw hook-input { type filter hook input priority -5; policy accept; }');
    expect(text).toMatch(/^add element inet virtfw to-vm4 \{ .*: jump vm-in-/m);
    expect(text).toMatch(/^add element inet virtfw members4-\S+ \{ 10\.0\.0\.10 \}$/m);
    expect(text).toContain('add table bridge virtfw');
    expect(text).toContain('add element bridge virtfw vif_mac { "tapweb1" . fa:16:3e:00:00:0a');
    // Nothing of iptables: one tool, one transaction.
    expect(text).not.toMatch(/^(\*filter|-A |COMMIT)/m);
    // It rendered without a kernel: the namespace is untouched, and checking
    // the script against the kernel (`nft -c`: commit nothing) passes.
    expect((await lab.hostExec(['nft', 'list', 'ruleset'])).stdout).toBe('');
    const check = await lab.hostExec(['nft', '-c', '-f', '-'], { input: text });
    expect(check).toMatchObject({ code: 0, stderr: '' });
    expect((await lab.hostExec(['nft', 'list', 'ruleset'])).stdout).toBe('');
  });
});
