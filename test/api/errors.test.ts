/** The error mapping and the wire naming, without a store. */
import { describe, expect, it } from 'vitest';
import { ApiError, describeSchemaFailure, mapError } from '../../src/api/errors.js';
import { ID_PATTERN } from '../../src/api/schemas.js';
import { wireField, wireText } from '../../src/api/wire.js';
import { ApplyError, ConflictError, NotFoundError, ValidationError } from '../../src/errors.js';
import { validateId } from '../../src/model/validate.js';

describe('wire field names', () => {
  it.each([
    ['rule.portRangeMin', 'port_range_min'],
    ['rule.remoteIpPrefix', 'remote_ip_prefix'],
    ['rule.remoteGroupId', 'remote_group_id'],
    ['rule', 'security_group_rule'],
    ['providerRule.fromPort', 'from_port'],
    ['providerRule.toPort', 'to_port'],
    ['networkInfo[0].devname', 'network_info[0].devname'],
    ['instance.networkInfo[2].network.subnets[1].meta.dhcp_server', 'network_info[2].network.subnets[1].meta.dhcp_server'],
    ['instance.id', 'id'],
    ['securityGroups[3]', 'security_groups[3]'],
    ['name', 'name'],
    ['projectId', 'project_id'],
    ['securityGroupId', 'security_group_id'],
  ])('%s → %s', (store, wire) => {
    expect(wireField(store)).toBe(wire);
  });

  it('renames known field names in a message, and leaves quoted values alone', () => {
    expect(wireText('port 5 is greater than rule.portRangeMax 3')).toBe('port 5 is greater than port_range_max 3');
    expect(wireText('is required when providerRule.toPort is set')).toBe('is required when to_port is set');
    expect(wireText('the instance. A rule.')).toBe('the instance. A rule.');
    expect(wireText('"myGroup" is not valid')).toBe('"myGroup" is not valid');
  });
});

describe('mapError', () => {
  const body = (statusCode: number, type: string, message: string | RegExp) => ({
    statusCode,
    body: { NeutronError: { type, message: typeof message === 'string' ? message : expect.stringMatching(message), detail: '' } },
    internal: statusCode >= 500,
  });

  it('ValidationError → 400 InvalidInput naming the wire field', () => {
    expect(mapError(new ValidationError('rule.portRangeMin', 'port 0 is outside 1-65535'))).toEqual(
      body(400, 'InvalidInput', 'Invalid input for port_range_min. Reason: port 0 is outside 1-65535.'),
    );
    expect(mapError(new ValidationError('networkInfo[1].devname', '"a b" is not a valid device name'))).toEqual(
      body(400, 'InvalidInput', /^Invalid input for network_info\[1\]\.devname\. Reason: "a b" is not/),
    );
  });

  it.each([
    ['security group', 'SecurityGroupNotFound'],
    ['securityGroup', 'SecurityGroupNotFound'],
    ['security group rule', 'SecurityGroupRuleNotFound'],
    ['rule', 'SecurityGroupRuleNotFound'],
    ['instance', 'InstanceNotFound'],
    ['provider rule', 'ProviderFirewallRuleNotFound'],
    ['remote group', 'SecurityGroupNotFound'],
    ['widget', 'WidgetNotFound'],
  ])('NotFoundError(%s) → 404 %s', (resource, type) => {
    expect(mapError(new NotFoundError(resource, 'x1'))).toEqual(body(404, type, `${resource} x1 could not be found`));
  });

  it('ConflictError → 409 with the type the store gives', () => {
    expect(mapError(new ConflictError('whatever', { type: 'SecurityGroupInUse' })).body.NeutronError.type).toBe('SecurityGroupInUse');
    const untyped = mapError(new ConflictError('something else'));
    expect(untyped.statusCode).toBe(409);
    expect(untyped.body.NeutronError.type).toBe('HTTPConflict');
  });

  it('anything else is a 500 that says nothing about it', () => {
    for (const err of [
      new Error('SELECT * FROM secrets'),
      new ApplyError('iptables-restore failed', { tool: 'iptables-restore', exitCode: 1, stderr: 'x' }),
      'a string',
      null,
    ]) {
      const mapped = mapError(err);
      expect(mapped.statusCode).toBe(500);
      expect(mapped.internal).toBe(true);
      expect(mapped.body.NeutronError.type).toBe('HTTPInternalServerError');
      expect(mapped.body.NeutronError.message).not.toMatch(/SELECT|iptables/);
    }
  });

  it('ApiError passes through', () => {
    expect(mapError(new ApiError(403, 'PolicyNotAuthorized', 'no'))).toEqual(body(403, 'PolicyNotAuthorized', 'no'));
  });
});

describe('schema failure messages', () => {
  it('name the field without the envelope', () => {
    expect(
      describeSchemaFailure('body', [
        { keyword: 'maximum', instancePath: '/security_group_rule/port_range_min', params: {}, message: 'must be <= 65535' },
      ]),
    ).toBe('Invalid input for port_range_min. Reason: must be <= 65535.');
    expect(
      describeSchemaFailure('body', [
        { keyword: 'additionalProperties', instancePath: '/instance/network_info/0', params: { additionalProperty: 'x' } },
      ]),
    ).toBe("Unrecognized attribute(s) 'network_info[0].x'");
    expect(describeSchemaFailure('body', [{ keyword: 'required', instancePath: '', params: { missingProperty: 'instance' } }])).toBe(
      "Failed to parse request. Required attribute 'instance' not specified",
    );
    expect(
      describeSchemaFailure('querystring', [
        { keyword: 'enum', instancePath: '/format', params: { allowedValues: ['iptables', 'nft'] } },
      ]),
    ).toBe('Invalid input for format. Reason: must be one of: iptables, nft.');
  });
});

describe('the id pattern of the schemas', () => {
  it.each(['vm-1', 'a', '0', 'x.y_z:1@2+3-4', 'A'.repeat(255), 'a b', 'a"b', "a'b", '-x', '.x', '', 'A'.repeat(256), 'a\nb', 'ä'])(
    'agrees with the model on %j',
    (id) => {
      let model = true;
      try {
        validateId('id', id);
      } catch {
        model = false;
      }
      expect(new RegExp(ID_PATTERN).test(id)).toBe(model);
    },
  );
});
