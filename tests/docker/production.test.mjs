// The production profile (`openclaw`) as README's "In front of OpenClaw" sets it up: a `.env`
// (which selects the profile) and `config/config.yaml` made from config.example.yaml, with a test
// CA's certificate instead of ACME and an identity provider as a service on the compose network
// (tests/docker/compose.test.yaml, which also keeps the published ports on 127.0.0.1).
// Chromium on the host reaches https://openclaw.test and the IdP through the published ports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import {
  PROJECT, assertConnected, assertUnprivileged, connects, docker, launchBrowser, project, published,
  request, run, signIn,
} from './lib.mjs';

const HOST = 'openclaw.test';
const ORIGIN = `https://${HOST}`;
const IDP = 'http://test-idp:5556';
const CLIENT_SECRET = 'docker-test-client-secret';
const USERS = {
  alice: { id: 'alice', email: 'alice@example.com', password: 'alice-password', name: 'Alice', groups: ['staff'] },
  bob: { id: 'bob', email: 'bob@other.test', password: 'bob-password', name: 'Bob', groups: ['staff'] },
};
// No COMPOSE_PROFILES here: the .env selects the profile, as it does for a user.
const prod = project({ files: ['docker-compose.yaml', 'tests/docker/compose.test.yaml'] });
const gatewayLogs = () => prod.logs('openclaw-gateway');
const made = [];
let browser;
let ca;

/** Writes `text` to PROJECT/`rel` (directories made); remembered for removal. */
function write(rel, text, mode = 0o644) {
  const file = path.join(PROJECT, rel);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text, { mode });
  made.push(file);
  return file;
}

async function openssl(...args) {
  const r = await run('openssl', args);
  assert.equal(r.code, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
}

/** config.example.yaml with README step 3's edits, and a certificate instead of ACME. */
function configFromExample() {
  let yaml = fs.readFileSync(path.join(PROJECT, 'config.example.yaml'), 'utf8');
  const edit = (from, to) => {
    assert.ok(yaml.includes(from), `config.example.yaml no longer has ${JSON.stringify(from)}`);
    yaml = yaml.replace(from, to);
  };
  edit('autocert: true', 'autocert: false');
  edit('# certificates:\n#   - cert: /config/tls/fullchain.pem\n#     key: /config/tls/privkey.pem',
    'certificates:\n  - cert: /config/tls/fullchain.pem\n    key: /config/tls/privkey.pem');
  edit('idp_provider_url: https://accounts.example.com', `idp_provider_url: ${IDP}`);
  // PUBLIC_HOST everywhere: the route's `from` and the URLs of the policy's `tests:`.
  assert.match(yaml, /from: https:\/\/openclaw\.example\.com\s/, 'config.example.yaml no longer routes https://openclaw.example.com');
  yaml = yaml.replaceAll('https://openclaw.example.com', ORIGIN);
  return yaml;
}

before(async () => {
  await prod.down();
  // A test CA and its certificate for openclaw.test; the key is readable by the container's
  // user (uid 10001) alone.
  const tls = path.join(PROJECT, 'config', 'tls');
  fs.mkdirSync(tls, { recursive: true });
  made.push(path.join(PROJECT, 'config'), path.join(PROJECT, 'test-idp'));
  await openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=Portcullis Docker test CA', '-keyout', `${tls}/ca.key`, '-out', `${tls}/ca.pem`);
  await openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${HOST}`,
    '-keyout', `${tls}/privkey.pem`, '-out', `${tls}/leaf.csr`);
  write('config/tls/leaf.ext', `subjectAltName=DNS:${HOST}\nextendedKeyUsage=serverAuth\n`);
  await openssl('x509', '-req', '-in', `${tls}/leaf.csr`, '-CA', `${tls}/ca.pem`, '-CAkey', `${tls}/ca.key`,
    '-CAcreateserial', '-days', '2', '-extfile', `${tls}/leaf.ext`, '-out', `${tls}/fullchain.pem`);
  fs.chownSync(`${tls}/privkey.pem`, 10001, 10001);
  fs.chmodSync(`${tls}/privkey.pem`, 0o600);
  ca = fs.readFileSync(`${tls}/ca.pem`, 'utf8');

  write('config/config.yaml', configFromExample());
  write('test-idp/idp.json', JSON.stringify({
    issuer: IDP,
    port: 5556,
    clients: [{
      client_id: 'portcullis',
      client_secret: CLIENT_SECRET,
      redirect_uris: [`${ORIGIN}/.portcullis/callback`],
      post_logout_redirect_uris: [`${ORIGIN}/.portcullis/signed_out`],
    }],
    users: Object.values(USERS),
  }, null, 2));
  const secret = (await docker('run', '--rm', 'portcullis:local', 'secret')).trim();
  write('.env', fs.readFileSync(path.join(PROJECT, '.env.example'), 'utf8')
    .replace(/^PUBLIC_HOST=.*$/m, `PUBLIC_HOST=${HOST}`)
    .replace(/^PORTCULLIS_COOKIE_SECRET=.*$/m, `PORTCULLIS_COOKIE_SECRET=${secret}`)
    .replace(/^PORTCULLIS_IDP_CLIENT_SECRET=.*$/m, `PORTCULLIS_IDP_CLIENT_SECRET=${CLIENT_SECRET}`), 0o600);

  const check = await run('docker', ['run', '--rm', '-v', `${path.join(PROJECT, 'config')}:/config:ro`,
    '-e', `PORTCULLIS_COOKIE_SECRET=${secret}`, '-e', `PORTCULLIS_IDP_CLIENT_SECRET=${CLIENT_SECRET}`,
    'portcullis:local', 'check']);
  assert.equal(check.code, 0, `portcullis check on the test config:\n${check.stdout}${check.stderr}`);

  const up = Date.now();
  await prod.compose(['up', '-d']);
  const healthy = await prod.healthy('portcullis');
  await prod.logged('openclaw-gateway', '[gateway] ready');
  console.log(`openclaw profile up: portcullis healthy after ${healthy.toFixed(0)} s, gateway ready after ${((Date.now() - up) / 1000).toFixed(0)} s`);
  browser = await launchBrowser([HOST, 'test-idp']);
});

after(async () => {
  await browser?.close().catch(() => {});
  await prod.down();
  for (const f of made.reverse()) fs.rmSync(f, { recursive: true, force: true });
});

test('the .env selects the production services, and only them', async () => {
  const { stdout } = await prod.compose(['ps', '--format', '{{.Service}}']);
  assert.deepEqual(stdout.trim().split('\n').sort(), ['openclaw-gateway', 'portcullis', 'test-idp']);
});

test('serves the configured certificate (the test CA\'s) and redirects http to https', async () => {
  const r = await request(HOST, '/', { ca, headers: { accept: 'text/html' } });
  assert.equal(r.authorized, true, 'the certificate chains to the test CA for openclaw.test');
  assert.equal(r.status, 302, 'an anonymous visitor is sent to sign in');
  const redirect = await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: 80, path: '/x?y=1', headers: { host: HOST }, agent: false }, (res) => {
      res.resume();
      resolve(res);
    }).on('error', reject);
  });
  assert.ok([301, 308].includes(redirect.statusCode), `http answers ${redirect.statusCode}`);
  assert.equal(redirect.headers.location, `${ORIGIN}/x?y=1`);
});

test('an allowed user signs in and reaches the gateway (hello-ok); a refused one gets the 403 page', async () => {
  const alice = await signIn(browser, `${ORIGIN}/`, IDP, USERS.alice.email, USERS.alice.password);
  const hello = await assertConnected(alice, ORIGIN, gatewayLogs);
  assert.equal(hello.payload.auth.role, 'operator');
  await alice.context.close();
  // The gateway attributed the connection to alice's immutable id (issuer#subject).
  assert.doesNotMatch(await gatewayLogs(), /trusted_proxy_user_not_allowed|proxy_attribution_required/);

  const bob = await signIn(browser, `${ORIGIN}/`, IDP, USERS.bob.email, USERS.bob.password);
  await bob.page.waitForURL((u) => u.origin === ORIGIN, { timeout: 15000 });
  const text = await bob.page.locator('body').innerText();
  assert.match(text, /403/);
  assert.match(text, /bob@other\.test/);
  await bob.page.waitForLoadState('networkidle', { timeout: 15000 });
  assert.equal(bob.sockets.length, 0, 'the 403 page opens no socket');
  await bob.context.close();
});

test('Portcullis runs as uid 10001 with ip_unprivileged_port_start=1024 and binds 443 and 80 through its file capability', async () => {
  await assertUnprivileged((args) => prod.exec('portcullis', args));
  const logs = await prod.logs('portcullis');
  assert.match(logs, /portcullis listening addr=0\.0\.0\.0:443 tls=true/);
  assert.equal((await prod.inspect('portcullis')).State.Health.Status, 'healthy');
});

test('the gateway is published on no host port', async () => {
  assert.deepEqual(published(await prod.inspect('openclaw-gateway')), []);
  assert.deepEqual(published(await prod.inspect('portcullis')).sort(), ['127.0.0.1:443->443/tcp', '127.0.0.1:80->80/tcp']);
  assert.equal(await connects(18789), false, '127.0.0.1:18789 accepts a connection');
});

test('`docker compose exec portcullis portcullis explain` answers for the real config', async () => {
  const r = await prod.exec('portcullis', ['portcullis', 'explain', '--url', `${ORIGIN}/`, '--email', USERS.alice.email]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^allow/);
  const d = await prod.exec('portcullis', ['portcullis', 'explain', '--url', `${ORIGIN}/`, '--email', USERS.bob.email]);
  assert.match(d.stdout, /^deny/);
});
