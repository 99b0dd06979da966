// TCP routes end to end: the real `ssh` client, through `portcullis tcp` as its ProxyCommand,
// to a real `sshd` behind a TCP route; the sign-in driven by headless Chromium at oidc-provider.
// Needs root (sshd), as CI runs; skipped otherwise.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  BIN, COOKIE_SECRET, CLIENT_SECRET, idpLogin, launchBrowser, startIdp, startPortcullis, tmpdir,
} from './lib.mjs';

const root = process.getuid?.() === 0 && fs.existsSync('/usr/sbin/sshd');
const MARK = 'hello-through-portcullis';

let browser;
let dir;
let sshd;
let sshdLog;
let idp;
let proxy;

/** A free loopback port (for sshd, which cannot report one it picked). */
async function freePort() {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** A CA, and a certificate for ssh.test that it signed (the client checks it with --ca). */
function certificates() {
  const o = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  o('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=e2e CA', '-keyout', 'ca.key', '-out', 'ca.pem', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign');
  o('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=ssh.test',
    '-keyout', 'ssh.key', '-out', 'ssh.csr');
  fs.writeFileSync(path.join(dir, 'ext'), 'subjectAltName=DNS:ssh.test\nextendedKeyUsage=serverAuth\n');
  o('x509', '-req', '-in', 'ssh.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'ext', '-out', 'ssh.pem');
}

async function startSshd() {
  const port = await freePort();
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'host_key')]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'user_key')]);
  fs.copyFileSync(path.join(dir, 'user_key.pub'), path.join(dir, 'authorized_keys'));
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  sshdLog = path.join(dir, 'sshd.log');
  fs.writeFileSync(path.join(dir, 'sshd_config'), [
    `Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${dir}/host_key`,
    `AuthorizedKeysFile ${dir}/authorized_keys`, 'PermitRootLogin prohibit-password',
    'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'StrictModes no', 'UsePAM no',
    `PidFile ${dir}/sshd.pid`, 'LogLevel VERBOSE', '',
  ].join('\n'));
  sshd = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', path.join(dir, 'sshd_config'), '-E', sshdLog], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    if (fs.existsSync(sshdLog) && fs.readFileSync(sshdLog, 'utf8').includes('Server listening')) return port;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`sshd did not start: ${fs.existsSync(sshdLog) ? fs.readFileSync(sshdLog, 'utf8') : ''}`);
}

/** Connections sshd has accepted so far. */
const sshdConnections = () => (fs.readFileSync(sshdLog, 'utf8').match(/Connection from/g) || []).length;

/** ssh children still running, each the leader of a process group with its ProxyCommand. */
const running = new Set();
function killGroup(child) {
  try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ }
}

/**
 * `ssh root@ssh.test COMMAND` with `portcullis tcp` as its ProxyCommand. Resolves when the
 * sign-in URL appears on its stderr (`url`) and when it exits (`done`: code, stdout, stderr).
 */
function ssh(command, { sessions, args = [] } = {}) {
  const proxyCommand = [BIN, 'tcp', 'ssh.test:22', '--proxy', `https://ssh.test:${proxy.port}`,
    '--connect', `127.0.0.1:${proxy.port}`, '--ca', path.join(dir, 'ca.pem'), '--session-dir', sessions,
    '--no-browser', ...args].join(' ');
  const child = spawn('ssh', ['-F', '/dev/null', '-i', path.join(dir, 'user_key'), '-o', 'IdentitiesOnly=yes',
    '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes',
    '-o', `ProxyCommand=${proxyCommand}`, 'root@ssh.test', command], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  running.add(child);
  child.on('exit', () => running.delete(child));
  let stdout = '';
  let stderr = '';
  let onUrl;
  const url = new Promise((r) => { onUrl = r; });
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => {
    stderr += d;
    const m = stderr.match(/sign in at (\S+)/);
    if (m) onUrl(m[1]);
  });
  const done = new Promise((r) => child.on('exit', (code) => r({ code, stdout, stderr })));
  return { child, url, done, output: () => stdout, kill: () => killGroup(child) };
}

/** The browser's side of `portcullis tcp`'s sign-in: the IdP (if needed), then the confirmation. */
async function confirm(context, url, login) {
  const page = await context.newPage();
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  if (/\/interaction\//.test(page.url())) await idpLogin(page, login);
  await page.waitForSelector('text=Sign in portcullis tcp');
  const loopback = page.waitForURL(/^http:\/\/127\.0\.0\.1:\d+\/\?state=/);
  await page.click('button[type=submit]');
  await loopback;
  assert.match(await page.textContent('body'), /Signed in\. You can close this tab/);
  return page;
}

describe('ssh through a TCP route', { skip: !root && 'needs root (sshd) and /usr/sbin/sshd' }, () => {
  before(async () => {
    dir = tmpdir('portcullis-tcp-');
    certificates();
    const sshdPort = await startSshd();
    idp = await startIdp();
    proxy = await startPortcullis({
      dir,
      yaml: `address: 127.0.0.1:0
data_dir: ${dir}/data
cookie_secret: ${COOKIE_SECRET}
certificates:
  - cert: ${dir}/ssh.pem
    key: ${dir}/ssh.key
idp_provider_url: ${idp.issuer}
idp_client_id: portcullis
idp_client_secret: ${CLIENT_SECRET}
routes:
  - from: tcp+https://ssh.test:22
    to: tcp://127.0.0.1:${sshdPort}
    policy:
      - allow:
          or:
            - domain: { is: example.com }
`,
    });
    await idp.attach({
      redirectUris: [`https://ssh.test:${proxy.port}/.portcullis/callback`],
      postLogoutRedirectUris: [`https://ssh.test:${proxy.port}/.portcullis/signed_out`],
    });
    await proxy.idpDiscovered();
    browser = await launchBrowser();
  });
  after(async () => {
    for (const c of running) killGroup(c);
    await browser?.close();
    await proxy?.stop();
    await idp?.close();
    sshd?.kill();
  });

  test('alice signs in once in the browser, then ssh runs through the tunnel and reuses the session; signing out ends an open session', async () => {
    const sessions = path.join(dir, 'alice-sessions');
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const first = ssh(`echo ${MARK}; whoami`, { sessions });
    const url = await first.url;
    assert.match(url, /^https:\/\/ssh\.test:\d+\/\.portcullis\/cli\?port=\d+&state=/);
    await confirm(context, url, 'alice');
    const r = await first.done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${MARK}\nroot\n`);
    const file = path.join(sessions, 'ssh.test.token');
    assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'the session file is the user\'s alone');
    assert.equal(fs.statSync(sessions).mode & 0o777, 0o700);

    // Again: the kept session, no sign-in.
    const again = await ssh(`echo ${MARK}`, { sessions }).done;
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout, `${MARK}\n`);
    assert.doesNotMatch(again.stderr, /sign in at/);

    // --listen: a local port that tunnels each connection (ssh -p to it).
    const listener = spawn(BIN, ['tcp', 'ssh.test:22', '--listen', '127.0.0.1:0', '--proxy', `https://ssh.test:${proxy.port}`,
      '--connect', `127.0.0.1:${proxy.port}`, '--ca', path.join(dir, 'ca.pem'), '--session-dir', sessions, '--no-browser'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      let said = '';
      const port = await new Promise((resolve, reject) => {
        listener.stderr.on('data', (d) => {
          said += d;
          const m = said.match(/on 127\.0\.0\.1:(\d+)/);
          if (m) resolve(m[1]);
        });
        listener.on('exit', (code) => reject(new Error(`portcullis tcp --listen exited ${code}: ${said}`)));
      });
      const viaPort = spawn('ssh', ['-F', '/dev/null', '-i', path.join(dir, 'user_key'), '-o', 'IdentitiesOnly=yes',
        '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes',
        '-p', port, 'root@127.0.0.1', `echo ${MARK}-listen`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      viaPort.stdout.on('data', (d) => { out += d; });
      const [code] = await new Promise((r) => viaPort.on('exit', (...a) => r(a)));
      assert.equal(code, 0);
      assert.equal(out, `${MARK}-listen\n`);
    } finally {
      listener.kill();
    }

    // An open session (cat waits on stdin), then sign-out in the browser: ssh ends within seconds.
    const open = ssh(`echo ${MARK}-open; cat`, { sessions });
    for (let i = 0; i < 100 && !open.output().includes(`${MARK}-open`); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(open.output(), new RegExp(`${MARK}-open`));
    const page = await context.newPage();
    const signedOut = Date.now();
    // Typed in the address bar (Sec-Fetch-Site: none): acted on, then on to the IdP's logout.
    await page.goto(`https://ssh.test:${proxy.port}/.portcullis/sign_out`, { waitUntil: 'domcontentloaded' });
    const ended = await Promise.race([open.done, new Promise((r) => setTimeout(() => r(null), 10000))]);
    assert.ok(ended, 'ssh still connected 10 s after sign-out');
    assert.notEqual(ended.code, 0);
    console.log(`sign-out ended the open ssh session after ${Date.now() - signedOut} ms`);
    // The kept session is signed out too: the next ssh is asked to sign in.
    const after = ssh(`echo ${MARK}`, { sessions });
    assert.match(await after.url, /\/\.portcullis\/cli\?/);
    after.kill();
    await context.close();
  });

  test('bob signs in and is refused with a clear error; sshd never sees a connection', async () => {
    const sessions = path.join(dir, 'bob-sessions');
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const before = sshdConnections();
    const run = ssh(`echo ${MARK}`, { sessions });
    await confirm(context, await run.url, 'bob');
    const r = await run.done;
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /portcullis tcp: https:\/\/ssh\.test:\d+\/ refused ssh\.test:22: 403 You are signed in as bob@other\.test/);
    assert.equal(r.stdout, '');
    assert.equal(sshdConnections(), before, 'a refused user reached sshd');
    await context.close();
  });
});
