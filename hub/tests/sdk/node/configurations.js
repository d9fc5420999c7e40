// Configurations, bulk registry, statistics and Registry.list with azure-iothub 1.16.6 against
// casement hub. Run by hub/tests/sdk_node.rs with HUB_SERVICE_CS (HostName=localhost, port 443),
// NODE_EXTRA_CA_CERTS (the hub's CA) and NODE_PATH (where azure-iothub is installed).
// Prints one JSON line per check and exits non-zero when any failed.
'use strict';

const { Registry } = require('azure-iothub');

const failures = [];
function check(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok: !!ok, detail: detail === undefined ? null : detail }));
  if (!ok) failures.push(name);
}

async function expectError(name, status, errorName, fn) {
  try {
    await fn();
    check(name, false, 'no error');
  } catch (e) {
    const got = e.response && e.response.statusCode;
    check(name, got === status && (!errorName || e.name === errorName), { status: got, name: e.name, message: e.message });
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(probe, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value || Date.now() > deadline) return value;
    await sleep(200);
  }
}

function configuration(id, target, priority, window) {
  return {
    id,
    content: { deviceContent: { 'properties.desired.maintenance': { window } } },
    targetCondition: target,
    priority,
    labels: { owner: 'casement-node-test' },
    metrics: { queries: { applied: `SELECT deviceId FROM devices WHERE configurations.[[${id}]].status = 'Applied'` } },
  };
}

async function main() {
  const registry = Registry.fromConnectionString(process.env.HUB_SERVICE_CS);
  const P = 'node-cfg-';

  const bulk = await registry.addDevices([{ deviceId: P + 'a' }, { deviceId: P + 'b' }]);
  check('addDevices', bulk.responseBody.isSuccessful === true, bulk.responseBody);
  const listed = await registry.list();
  const ids = listed.responseBody.map((d) => d.deviceId);
  check('Registry.list (GET /devices/)', ids.includes(P + 'a') && ids.includes(P + 'b'), ids);
  const stats = await registry.getRegistryStatistics();
  check('getRegistryStatistics', stats.responseBody.totalDeviceCount >= 2, stats.responseBody);

  const twin = await registry.getTwin(P + 'a');
  await twin.responseBody.update({ tags: { env: 'prod' } });
  const twinB = await registry.getTwin(P + 'b');
  await twinB.responseBody.update({ tags: { env: 'prod', ring: 'canary' } });

  await registry.addConfiguration(configuration(P + 'base', "tags.env = 'prod'", 1, 'base'));
  await registry.addConfiguration(configuration(P + 'canary', "tags.ring = 'canary'", 5, 'canary'));
  const got = await registry.getConfiguration(P + 'base');
  check('addConfiguration + getConfiguration', got.responseBody.id === P + 'base' && got.responseBody.etag, got.responseBody);
  const all = await registry.getConfigurations();
  check('getConfigurations', all.responseBody.filter((c) => c.id.startsWith(P)).length === 2, all.responseBody.map((c) => c.id));
  await expectError('addConfiguration existing → 409', 409, null, () =>
    registry.addConfiguration(configuration(P + 'base', "tags.env = 'prod'", 1, 'base')));

  const desired = async (id) => (await registry.getTwin(id)).responseBody.properties.desired.maintenance;
  const a = await waitFor(async () => JSON.stringify(await desired(P + 'a')) === '{"window":"base"}');
  const b = await waitFor(async () => JSON.stringify(await desired(P + 'b')) === '{"window":"canary"}');
  check('evaluation applies the higher priority', a && b, { a: await desired(P + 'a'), b: await desired(P + 'b') });

  const current = (await registry.getConfiguration(P + 'canary')).responseBody;
  current.priority = 0;
  const updated = await registry.updateConfiguration(current);
  check('updateConfiguration priority', updated.responseBody.priority === 0, updated.responseBody);
  const changed = (await registry.getConfiguration(P + 'canary')).responseBody;
  changed.content = { deviceContent: { 'properties.desired.maintenance': { window: 'other' } } };
  await expectError('updateConfiguration content → 400', 400, 'ArgumentError', () => registry.updateConfiguration(changed));
  await registry.removeConfiguration(P + 'canary');
  await registry.removeConfiguration(P + 'base');
  await expectError('getConfiguration removed → 404', 404, null, () => registry.getConfiguration(P + 'base'));

  const removed = await registry.removeDevices([{ deviceId: P + 'a' }, { deviceId: P + 'b' }], true);
  check('removeDevices', removed.responseBody.isSuccessful === true, removed.responseBody);
}

main()
  .catch((e) => check('script completed', false, String(e && e.stack)))
  .then(() => {
    console.log(JSON.stringify({ failed: failures }));
    process.exit(failures.length ? 1 : 0);
  });
