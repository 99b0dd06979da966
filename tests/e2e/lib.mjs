// Helpers for the end-to-end suite: the real Portcullis binary, the Rust echo upstream, a real
// OpenID provider (oidc-provider) and headless Chromium (playwright-core).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';
import * as jose from 'jose';
import Provider from 'oidc-provider';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..', '..');
const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
export const BIN = process.env.PORTCULLIS_BIN || path.join(target, 'debug', 'portcullis');
export const ECHO = process.env.PORTCULLIS_ECHO_BIN || path.join(target, 'debug', 'examples', 'echo');
export const OPENCLAW = path.join(here, 'openclaw', 'node_modules', 'openclaw', 'openclaw.mjs');
export const COOKIE_SECRET = 'q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=';
export const CLIENT_SECRET = 'e2e-client-secret';

/** Known users of the test IdP (the login name is the account id). */
export const USERS = {
  alice: { email: 'alice@example.com', email_verified: true, name: 'Alice', groups: ['staff', 'openclaw-admins'] },
  bob: { email: 'bob@other.test', email_verified: true, name: 'Bob', groups: ['staff'] },
  carol: { email: 'carol@example.com', email_verified: false, name: 'Carol', groups: [] },
  // OpenClaw's access levels and teams (tests/e2e/openclaw): dave reads team A's gateway,
  // erin is on team B.
  dave: { email: 'dave@example.com', email_verified: true, name: 'Dave', groups: ['staff'] },
  erin: { email: 'erin@example.com', email_verified: true, name: 'Erin', groups: ['staff', 'team-b'] },
  // Everything an IdP where users pick their own name, address and groups could send.
  mallory: {
    email: '<script>alert(1)</script>@evil.test', email_verified: true, name: '"><svg/onload=alert(3)>',
    groups: ['</p><img/src=x/onerror=alert(2)>'],
  },
};

/** Accounts disabled at the IdP: they can no longer sign in, nor refresh a session. */
export const DISABLED = new Set();

/**
 * A port nothing listens on at this moment. Only for a program that cannot bind port 0 and say
 * which port it got (the OpenClaw gateway): the port is free only until something else takes
 * it, so the caller must be ready to try another one (startOpenClaw does).
 */
export async function candidatePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

/**
 * Starts the test IdP on `host`: it listens at once (on `port`, any free one unless given), so its
 * issuer (`http://host:port`) can go into Portcullis's config, but oidc-provider runs behind it
 * only from `attach()`, which takes the client's redirect URIs: they name Portcullis's port,
 * known once Portcullis is up. A request that comes before `attach()` waits for it. With
 * `down`, the IdP cannot be reached until `attach()`: every connection is closed as soon as it is
 * accepted. Given `redirectUris`, it attaches at once.
 */
export async function startIdp({ port = 0, host = '127.0.0.1', down = false, ...client } = {}) {
  let handler = null;
  let provider = null;
  let attached;
  const ready = new Promise((r) => { attached = r; });
  const server = http.createServer(async (req, res) => {
    if (!handler) await ready;
    handler(req, res);
  });
  if (down) server.prependListener('connection', (socket) => { if (!handler) socket.destroy(); });
  server.listen(port, host);
  await once(server, 'listening');
  const issuer = `http://${host}:${server.address().port}`;
  const grants = { refresh: 0 };
  const idp = {
    issuer,
    port: server.address().port,
    get provider() { return provider; },
    /** How many refresh-token grants the IdP has answered. */
    grants,
    /**
     * Runs oidc-provider with one client (`portcullis`) whose redirect URIs are given;
     * `idTokenTtl` (seconds) makes ID tokens short-lived to force refreshes. Attaching again
     * replaces the provider with one with new signing keys, as a restarted IdP would have.
     */
    async attach({ redirectUris, postLogoutRedirectUris, idTokenTtl = 3600 }) {
      provider = await makeProvider({ issuer, redirectUris, postLogoutRedirectUris, idTokenTtl });
      provider.on('grant.success', (ctx) => {
        if (ctx.oidc.params.grant_type === 'refresh_token') grants.refresh += 1;
      });
      handler = provider.callback();
      attached();
    },
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
  if (client.redirectUris) await idp.attach(client);
  return idp;
}

async function makeProvider({ issuer, redirectUris, postLogoutRedirectUris, idTokenTtl }) {
  // Fresh signing keys for every provider (a restarted IdP has rotated its keys).
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },

    clients: [{
      client_id: 'portcullis',
      client_secret: CLIENT_SECRET,
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutRedirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    }, {
      client_id: 'other-client',
      client_secret: 'other-secret',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
    }],
    async findAccount(ctx, id) {
      const u = USERS[id];
      if (!u || DISABLED.has(id)) return undefined;
      return { accountId: id, async claims() { return { sub: id, ...u }; } };
    },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups'] },
    ttl: { IdToken: idTokenTtl, AccessToken: Math.max(idTokenTtl, 60), RefreshToken: 3600, Session: 3600, Grant: 3600, Interaction: 600 },
    features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
    cookies: { keys: ['e2e-cookie-key'] },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    async loadExistingGrant(ctx) {
      // Consent is granted up front: the suite tests Portcullis, not consent screens.
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid email profile offline_access');
      await grant.save();
      return grant;
    },
  });
  provider.on('server_error', (ctx, err) => console.error('idp server_error', err));
  return provider;
}

/** The Rust echo upstream (tests/support/echo.rs, run by examples/echo.rs). */
export async function startEcho(name = 'echo') {
  const child = spawn(ECHO, ['127.0.0.1:0', name], { stdio: ['ignore', 'pipe', 'inherit'] });
  const addr = await new Promise((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(buf.slice(0, nl).trim());
    });
    child.once('exit', (code) => reject(new Error(`echo exited ${code}`)));
  });
  return { addr, url: `http://${addr}`, stop: () => child.kill('SIGKILL') };
}

/**
 * Runs the binary on `yaml` (written to `dir`/config.yaml) and resolves once it listens, with the
 * port it got: give it `address: HOST:0` and it binds a free port itself and logs it. With
 * `waitForIdp`, also waits until it has discovered its IdP (discovery runs in the background,
 * and until then a sign-in is a 503); `idpDiscovered()` waits for that later, once the IdP has
 * been attached.
 */
export async function startPortcullis({ dir, yaml, env = {}, waitForIdp = false }) {
  fs.mkdirSync(dir, { recursive: true });
  const cfg = path.join(dir, 'config.yaml');
  fs.writeFileSync(cfg, yaml);
  const logs = [];
  const child = spawn(BIN, ['--config', cfg], {
    stdio: ['ignore', 'inherit', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', ...env },
  });
  child.stderr.on('data', (d) => {
    logs.push(String(d));
    if (process.env.E2E_VERBOSE) process.stderr.write(d);
  });
  const exited = once(child, 'exit');
  const died = exited.then(([code]) => { throw new Error(`portcullis exited ${code}:\n${logs.join('')}`); });
  /** Resolves with the match once `pattern` is in the log from chunk `from` on. */
  const waitFor = (pattern, ms = 20000, from = 0) => Promise.race([waitForLog(logs, pattern, ms, from), died]);
  const [, port] = await waitFor(/portcullis listening.*\baddr=\S*:(\d+)\s/);
  const proxy = {
    port: Number(port),
    logs,
    child,
    waitForLog: waitFor,
    idpDiscovered: () => waitFor('identity provider discovered'),
    /** Writes `text` as the config; resolves once the binary, which watches the file, took it. */
    async reload(text) {
      const from = logs.length;
      fs.writeFileSync(cfg, text);
      await waitFor(/config reloaded|config reload refused/, 20000, from);
      const refused = logs.slice(from).join('').match(/config reload refused.*/);
      if (refused) throw new Error(refused[0]);
    },
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const [code] = await exited;
      return code;
    },
  };
  if (waitForIdp) await proxy.idpDiscovered();
  return proxy;
}

/**
 * Resolves with the match once `pattern` (text or RegExp) is in `logs` from chunk `from` on,
 * colour escapes removed; rejects after `ms`.
 */
async function waitForLog(logs, pattern, ms, from = 0) {
  const deadline = Date.now() + ms;
  const find = () => {
    const text = logs.slice(from).join('').replace(/\x1b\[[0-9;]*m/g, '');
    if (typeof pattern === 'string') return text.includes(pattern) ? [pattern] : null;
    return text.match(pattern);
  };
  for (let m = find(); ; m = find()) {
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`no "${pattern}" in the log after ${ms} ms:\n${logs.join('')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const made = [];
process.on('exit', () => {
  if (process.env.PORTCULLIS_KEEP_TMP) return;
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh directory, removed when the process exits (kept with PORTCULLIS_KEEP_TMP=1). */
export function tmpdir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(d);
  return d;
}

/**
 * Headless Debian Chromium; `*.test` names resolve to `testHostsTo` (127.0.0.1). `executablePath`
 * lets a test start it through a wrapper (the OpenClaw test runs it in a network namespace).
 */
export async function launchBrowser(extraArgs = [], { executablePath, testHostsTo = '127.0.0.1' } = {}) {
  return chromium.launch({
    executablePath: executablePath || process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync',
      `--host-resolver-rules=MAP *.test ${testHostsTo}`,
      ...extraArgs,
    ],
  });
}

/** Fills in the IdP's login form (oidc-provider's own interaction pages). */
export async function idpLogin(page, login) {
  await page.waitForSelector('input[name=login]', { timeout: 15000 });
  await page.fill('input[name=login]', login);
  await page.fill('input[name=password]', 'any password');
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[type=submit]')]);
}

/**
 * A raw HTTPS request to Portcullis on 127.0.0.1 with SNI and Host `host` (certificates are
 * not checked: the suite runs on a self-signed one). Resolves { status, headers, body }.
 */
export function request(port, host, pathAndQuery, { method = 'GET', headers = {}, body, addr = '127.0.0.1' } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: addr, port, servername: host, path: pathAndQuery, method,
      headers: { host: `${host}:${port}`, ...headers }, rejectUnauthorized: false, agent: false,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

/** The `Cookie` header value for the cookies a browser context holds for `url`. */
export async function cookieHeader(context, url) {
  const cookies = await context.cookies(url);
  return cookies.map((c) => `${c.name}=${c.value}`).join('; ');
}

/** Portcullis's config for the suite: it listens on 127.0.0.1:`port` (0: a port it picks). */
export function config({ port = 0, idpPort, echo, dir, extra = '' }) {
  return `address: 127.0.0.1:${port}
data_dir: ${dir}/data
cookie_secret: ${COOKIE_SECRET}
idp_provider_url: http://127.0.0.1:${idpPort}
idp_client_id: portcullis
idp_client_secret: ${CLIENT_SECRET}
log_level: info
jwt_claims_headers:
  X-Forwarded-User: email
${extra}routes:
  - from: https://app.test
    to: ${echo}
    allow_websockets: true
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - domain: { is: example.com }
  - from: https://any.test
    to: ${echo}
    allow_any_authenticated_user: true
  - from: https://public.test
    to: ${echo}
    allow_public_unauthenticated_access: true
`;

}

/**
 * openclaw.json for a gateway on 127.0.0.1:port behind a Portcullis on the same machine, which
 * reaches it over loopback (hence `allowLoopback` with 127.0.0.1 trusted): trusted-proxy mode,
 * the user from `X-Forwarded-User`, the assertion header required, new browsers approved.
 */
export function openclawConfig({ port, origin, allowUsers, identityScopes, autoApproveScopes }) {
  return {
    gateway: {
      mode: 'local',
      port,
      bind: 'loopback',
      trustedProxies: ['127.0.0.1'],
      controlUi: { allowedOrigins: [origin] },
      auth: {
        mode: 'trusted-proxy',
        ...(identityScopes ? { identityScopes } : {}),
        trustedProxy: {
          userHeader: 'x-forwarded-user',
          requiredHeaders: ['x-portcullis-jwt-assertion'],
          ...(allowUsers ? { allowUsers } : {}),
          allowLoopback: true,
          deviceAutoApprove: { enabled: true, ...(autoApproveScopes ? { scopes: autoApproveScopes } : {}) },
        },
      },
    },
  };
}

/**
 * Starts the real OpenClaw gateway (`openclaw gateway run`, from tests/e2e/openclaw's pinned
 * package) on 127.0.0.1 with `config(port)` as its openclaw.json; resolves once it admits
 * traffic, with the `port` it listens on. Needs Node 24: run under
 * tests/e2e/openclaw/node_modules/.bin/node.
 *
 * The gateway cannot be given port 0 (it reads 0 as unset and takes its default, 18789), so it
 * gets a port found free (`port`, else candidatePort()), which something else may take before
 * the gateway binds it. The gateway then fails to start (after retrying that port for 10 s) and
 * exits saying EADDRINUSE, and another port is tried, at most `attempts` times in all;
 * `onNewPort(port)` runs before each new try (for what must follow the gateway: the route to it).
 */
export async function startOpenClaw({ dir, config, port, onNewPort = async () => {}, attempts = 4 }) {
  port ??= await candidatePort();
  for (let attempt = 1; ; attempt += 1) {
    const gateway = await runOpenClaw(dir, config(port));
    if (gateway.ready) return { port, logs: gateway.logs, stop: gateway.stop };
    const text = gateway.logs.join('');
    if (!text.includes('EADDRINUSE') || attempt === attempts) {
      throw new Error(`openclaw gateway on port ${port} did not start (try ${attempt} of ${attempts}):\n${text}`);
    }
    port = await candidatePort();
    await onNewPort(port);
  }
}

/** One `openclaw gateway run`: { ready } once it admits traffic, or not if it exited first. */
async function runOpenClaw(dir, config) {
  const state = path.join(dir, 'openclaw-state');
  fs.mkdirSync(state, { recursive: true });
  const cfg = path.join(dir, 'openclaw.json');
  fs.writeFileSync(cfg, JSON.stringify(config, null, 2));
  const logs = [];
  const child = spawn(process.execPath, [OPENCLAW, 'gateway', 'run'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env, HOME: state, OPENCLAW_STATE_DIR: state, OPENCLAW_CONFIG_PATH: cfg,
      OPENCLAW_LOG_LEVEL: 'debug', NO_COLOR: '1',
    },
  });
  // 'close' rather than 'exit': the output has been read to its end, the reason it exited included.
  const closed = once(child, 'close');
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    await Promise.race([
      closed,
      new Promise((r) => setTimeout(r, 10000)).then(() => child.kill('SIGKILL')),
    ]);
  };
  // The HTTP listener comes up before the gateway admits traffic: ready is the log line.
  const ready = new Promise((resolve) => {
    for (const s of [child.stdout, child.stderr]) {
      let tail = '';
      s.on('data', (d) => {
        logs.push(String(d));
        if (process.env.E2E_VERBOSE) process.stderr.write(d);
        tail = (tail + d).slice(-4096);
        if (tail.includes('[gateway] ready')) resolve(true);
      });
    }
  });
  let timer;
  const deadline = new Promise((r) => { timer = setTimeout(r, 150000, 'timeout'); });
  const outcome = await Promise.race([ready, closed.then(() => false), deadline]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    await stop();
    throw new Error(`openclaw gateway not ready after 150 s:\n${logs.join('')}`);
  }
  return { ready: outcome, logs, stop };
}
