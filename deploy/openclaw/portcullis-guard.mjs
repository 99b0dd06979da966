#!/usr/bin/env node
// The OpenClaw gateway container's entrypoint (deploy/openclaw/Dockerfile): keeps the keys
// Portcullis depends on in the read-only gateway file while OpenClaw's other settings live, writable,
// in its state volume.
//
// OpenClaw's config is $OPENCLAW_CONFIG_PATH in the state volume; its `gateway` section is
// `{"$include": "<PORTCULLIS_GATEWAY_CONFIG>"}`, a read-only file outside the config directory
// (admitted by OPENCLAW_INCLUDE_ROOTS). OpenClaw itself refuses every write under `gateway` then
// (`openclaw config set gateway.…`, `openclaw configure`'s Gateway section, the control UI):
// "Config mutation cannot update external $include target". What it does not refuse, and this
// guard does, are the three ways around the include:
//   - a top-level "$include" (`openclaw config set '$include' ./x.json` is accepted): an included
//     file's `gateway` is deep-merged under ours, keys we do not set are added and arrays are
//     concatenated (trustedProxies ["0.0.0.0/0", "172.28.53.10"]), and hot reload applies it;
//   - keys beside the `$include` inside `gateway` (a hand edit of the file): they override it;
//   - environment variables the gateway reads for its auth and port (OPENCLAW_GATEWAY_TOKEN,
//     _PASSWORD, _PORT, …) or that the gateway file references (${PUBLIC_HOST}), set in the
//     config's `env.vars` or in the state directory's `.env`.
//
// The container's command line (ENTRYPOINT node portcullis-guard.mjs):
//   openclaw gateway run   (the default) creates the config if it is missing, refuses to start the
//                          gateway while the config breaks a rule (exit 78), and stops it (SIGKILL,
//                          exit 78) the moment a write breaks one while it runs
//   check                  the rules, exit 0 or 78
//   repair                 puts the config back (a copy of the old one is kept beside it):
//                          `docker compose run --rm --no-deps openclaw-gateway repair`
//   any other command      runs it (the config is created first if missing)
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

const TAG = '[portcullis-guard]';
const EX_CONFIG = 78;
const HOME = process.env.HOME || os.homedir();
const STATE_DIR = process.env.OPENCLAW_STATE_DIR || path.join(HOME, '.openclaw');
const CONFIG = process.env.OPENCLAW_CONFIG_PATH || path.join(STATE_DIR, 'openclaw.json');
const GATEWAY = process.env.PORTCULLIS_GATEWAY_CONFIG || '/etc/openclaw/gateway.json';
const DOTENV = path.join(STATE_DIR, '.env');
/** The variables through which OpenClaw's gateway takes its credentials and port. */
const GATEWAY_ENV = /^OPENCLAW_GATEWAY_/i;

// OpenClaw's own JSON5 parser (a dependency of the package), so that both read a file alike.
const JSON5 = (() => {
  const from = [import.meta.url, path.join(process.env.OPENCLAW_PACKAGE_DIR || '/usr/local/lib/node_modules/openclaw', 'package.json')];
  for (const base of from) {
    try { return createRequire(base)('json5'); } catch { /* next */ }
  }
  return { parse: JSON.parse };
})();

const log = (...lines) => { for (const l of lines) process.stderr.write(`${TAG} ${l}\n`); };
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const seed = () => ({ gateway: { $include: GATEWAY } });

/** The variables the gateway file reads (`${NAME}`, not the escaped `$${NAME}`). */
function referencedVariables() {
  const text = fs.readFileSync(GATEWAY, 'utf8');
  return new Set([...text.matchAll(/(?<!\$)\$\{([A-Z_][A-Z0-9_]*)\}/g)].map((m) => m[1]));
}

function protectedName(name, referenced) {
  const n = name.trim();
  return GATEWAY_ENV.test(n) || referenced.has(n.toUpperCase());
}

/** `NAME=` lines of the state directory's .env that set a protected variable. */
/**
 * The state directory's .env: '' when there is none; `{ error }` when something is there that
 * is not a readable regular file (OpenClaw skips such a file, and a guard that could not read
 * it would check nothing).
 */
function readDotenv() {
  let st;
  try { st = fs.lstatSync(DOTENV); } catch (e) {
    return e.code === 'ENOENT' ? '' : { error: `${DOTENV} cannot be examined (${e.code})` };
  }
  if (!st.isFile()) return { error: `${DOTENV} is not a regular file` };
  try { return fs.readFileSync(DOTENV, 'utf8'); } catch (e) {
    return { error: `${DOTENV} cannot be read (${e.code})` };
  }
}

/** `NAME=` (or `NAME:`, as dotenv also reads) lines of .env that set a protected variable. */
function dotenvLines(referenced, text = readDotenv()) {
  if (typeof text !== 'string') return [];
  return text.split(/\r\n|\r|\n/).flatMap((line, i) => {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*[=:]/.exec(line);
    return m && protectedName(m[1], referenced) ? [{ line: i + 1, name: m[1] }] : [];
  });
}

/** The keys of an object as dotted paths (values left out: they can be secrets). */
function paths(v, prefix) {
  if (!isObject(v) || Object.keys(v).length === 0) return [prefix];
  return Object.entries(v).flatMap(([k, x]) => paths(x, `${prefix}.${k}`));
}

/** What is wrong with `text` (the config's content) and .env, as log lines; [] when nothing. */
function problems(text, dotenv = readDotenv()) {
  const out = [];
  let referenced;
  try {
    JSON5.parse(fs.readFileSync(GATEWAY, 'utf8'));
    referenced = referencedVariables();
  } catch (e) {
    return [`the gateway file ${GATEWAY} cannot be read (${e.message.split('\n')[0]}): mount deploy/openclaw there, read-only (docker-compose.yaml)`];
  }
  let config;
  try { config = JSON5.parse(text); } catch (e) {
    return [`${CONFIG} is not valid JSON5 (${e.message.split('\n')[0]})`];
  }
  if (!isObject(config)) return [`${CONFIG} does not hold an object`];
  if (Object.prototype.hasOwnProperty.call(config, '__proto__')) {
    out.push(`${CONFIG} has a "__proto__" key: OpenClaw would read what is under it as the config's own keys`);
  }
  if ('$include' in config) {
    out.push(`${CONFIG} has a top-level "$include" (${JSON.stringify(config.$include)}): the gateway keys of an included file would be merged into the gateway section (arrays such as trustedProxies concatenated)`);
  }
  const g = config.gateway;
  if (!(isObject(g) && Object.keys(g).length === 1 && g.$include === GATEWAY)) {
    const found = g === undefined ? 'no "gateway"'
      : isObject(g) ? `"gateway" with ${paths(g, 'gateway').map((p) => p === 'gateway.$include' ? `$include ${JSON.stringify(g.$include)}` : p).join(', ')}`
        : `"gateway": ${typeof g}`;
    out.push(`${CONFIG} must have "gateway": {"$include": "${GATEWAY}"} and nothing else there; it has ${found}`);
  }
  const env = isObject(config.env) ? config.env : {};
  if ('$include' in env || (isObject(env.vars) && '$include' in env.vars)) {
    out.push(`${CONFIG} includes a file into "env": the gateway's variables are checked only where they are written out`);
  }
  for (const [where, vars] of [['env.vars', isObject(env.vars) ? env.vars : {}], ['env', env]]) {
    for (const name of Object.keys(vars)) {
      if (protectedName(name, referenced)) out.push(`${CONFIG} sets ${where}.${name}: the gateway's auth, port and the gateway file's variables come from the container's environment only`);
    }
  }
  if (typeof dotenv !== 'string') out.push(`${dotenv.error}: remove it (OpenClaw would skip it; the guard cannot check it)`);
  for (const { line, name } of dotenvLines(referenced, dotenv)) {
    out.push(`${DOTENV}:${line} sets ${name}: the gateway's auth, port and the gateway file's variables come from the container's environment only`);
  }
  return out;
}

function readConfig() {
  return fs.readFileSync(CONFIG, 'utf8');
}

/** Writes `text` to `file` as OpenClaw does: a temporary file renamed over it, mode 0600. */
function writeAtomically(file, text) {
  const tmp = `${file}.portcullis-guard.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/** Creates the config when there is none: the gateway section from the read-only file. */
function ensureConfig() {
  if (fs.existsSync(CONFIG)) return;
  fs.mkdirSync(path.dirname(CONFIG), { recursive: true });
  writeAtomically(CONFIG, `${JSON.stringify(seed(), null, 2)}\n`);
  log(`created ${CONFIG}: OpenClaw's settings (openclaw configure, openclaw config set), its gateway section from ${GATEWAY} (read-only)`);
}

function refuse(found, headline) {
  const service = process.env.PORTCULLIS_GUARD_SERVICE || 'openclaw-gateway';
  log(`${headline}: its config breaks the settings Portcullis depends on:`);
  log(...found.map((p) => `  - ${p}`));
  log(`The gateway section is edited in the read-only file on the host (${GATEWAY} here), never in the state volume.`,
    `Put the config back (a copy of the old one is kept) and start the gateway:  docker compose run --rm --no-deps ${service} repair && docker compose restart ${service}`);
}

function repair() {
  ensureConfig();
  const text = readConfig();
  let referenced = new Set();
  try { referenced = referencedVariables(); } catch { /* problems() says so below */ }
  let config;
  try { config = JSON5.parse(text); } catch (e) {
    log(`${CONFIG} is not valid JSON5 (${e.message.split('\n')[0]}); fix it with: openclaw doctor --fix`);
    return EX_CONFIG;
  }
  if (!isObject(config)) config = {};
  const changed = [];
  if ('$include' in config) { delete config.$include; changed.push('removed the top-level "$include"'); }
  const g = config.gateway;
  if (!(isObject(g) && Object.keys(g).length === 1 && g.$include === GATEWAY)) {
    if (isObject(g)) changed.push(`dropped ${paths(g, 'gateway').filter((p) => p !== 'gateway.$include').join(', ') || 'nothing'} from "gateway"`);
    config.gateway = { $include: GATEWAY };
    changed.push(`set "gateway" to {"$include": "${GATEWAY}"}`);
  }
  if (Object.prototype.hasOwnProperty.call(config, '__proto__')) { delete config.__proto__; changed.push('removed the "__proto__" key'); }
  if (isObject(config.env)) {
    for (const vars of [config.env.vars, config.env]) {
      if (isObject(vars) && '$include' in vars) { delete vars.$include; changed.push('removed the "$include" in "env"'); }
      if (!isObject(vars)) continue;
      for (const name of Object.keys(vars)) {
        if (protectedName(name, referenced)) { delete vars[name]; changed.push(`removed env${vars === config.env ? '' : '.vars'}.${name}`); }
      }
    }
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  if (changed.length) {
    fs.copyFileSync(CONFIG, `${CONFIG}.before-repair.${stamp}`);
    writeAtomically(CONFIG, `${JSON.stringify(config, null, 2)}\n`);
    log(`${CONFIG}: ${changed.join('; ')} (the old file: ${path.basename(CONFIG)}.before-repair.${stamp})`);
  }
  const lines = dotenvLines(referenced);
  if (lines.length) {
    const drop = new Set(lines.map((l) => l.line));
    const kept = fs.readFileSync(DOTENV, 'utf8').split(/\r\n|\r|\n/).filter((_, i) => !drop.has(i + 1));
    fs.copyFileSync(DOTENV, `${DOTENV}.before-repair.${stamp}`);
    writeAtomically(DOTENV, kept.join('\n'));
    log(`${DOTENV}: removed ${lines.map((l) => l.name).join(', ')} (the old file: .env.before-repair.${stamp})`);
  }
  const left = problems(readConfig());
  if (left.length) { log(...left); return EX_CONFIG; }
  if (!changed.length && !lines.length) log(`${CONFIG}: nothing to repair`);
  return 0;
}

/**
 * Runs `argv` with this process's stdio, passing signals on (but a terminal's Ctrl-C, which the
 * terminal sends to both); resolves its exit code.
 */
function run(argv, { group = false } = {}) {
  const child = spawn(argv[0], argv.slice(1), { stdio: 'inherit', detached: group });
  const fromTerminal = !group && process.stdin.isTTY;
  const forward = (sig) => { try { child.kill(sig); } catch { /* gone */ } };
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2']) {
    process.on(sig, () => { if (!(fromTerminal && sig === 'SIGINT')) forward(sig); });
  }
  const done = new Promise((resolve) => {
    child.on('error', (e) => { log(`${argv[0]}: ${e.message}`); resolve(127); });
    child.on('exit', (code, signal) => resolve(code ?? 128 + (os.constants.signals[signal] || 0)));
  });
  return { child, done };
}

/**
 * The optional SSH server (README "Administer OpenClaw from anywhere"): in an image built with
 * OPENCLAW_SSH=1, and only when the read-only authorized_keys file exists. It runs as `node`
 * (so it can only ever log in as `node`), on port 2222, keys only, with the host key kept in the
 * state volume; only Portcullis's TCP route reaches it (no port is published). Its sessions get
 * the variables OpenClaw's command line needs to read this config.
 */
function startSshd() {
  const sshd = '/usr/sbin/sshd';
  const keys = process.env.PORTCULLIS_SSH_AUTHORIZED_KEYS || '/etc/openclaw/ssh/authorized_keys';
  if (!fs.existsSync(sshd)) return null;
  if (!fs.existsSync(keys)) {
    log(`sshd: not started (no ${keys})`);
    return null;
  }
  const dir = path.join(STATE_DIR, 'ssh');
  const hostKey = path.join(dir, 'ssh_host_ed25519_key');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!fs.existsSync(hostKey)) {
    const made = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'openclaw-gateway', '-f', hostKey], { stdio: 'inherit' });
    if (made.status !== 0) { log('sshd: cannot make a host key; not started'); return null; }
  }
  const env = ['OPENCLAW_STATE_DIR', 'OPENCLAW_CONFIG_PATH', 'OPENCLAW_INCLUDE_ROOTS', 'PORTCULLIS_GATEWAY_CONFIG', 'PUBLIC_HOST']
    .filter((n) => process.env[n]).map((n) => `${n}=${process.env[n]}`).join(' ');
  const args = ['-D', '-e', '-p', '2222', '-h', hostKey, '-o', `AuthorizedKeysFile=${keys}`,
    '-o', 'PasswordAuthentication=no', '-o', 'KbdInteractiveAuthentication=no', '-o', 'UsePAM=no',
    // The keys file is on a read-only mount that nothing in the container can change; sshd's
    // ownership checks would refuse it for a host checkout made with umask 002 (group-writable
    // directories), which is common.
    '-o', 'StrictModes=no',
    '-o', `PidFile=${path.join(dir, 'sshd.pid')}`, '-o', 'PermitUserEnvironment=no', '-o', `SetEnv=${env}`];
  const child = spawn(sshd, args, { stdio: 'inherit' });
  child.on('error', (e) => log(`sshd: ${e.message}`));
  child.on('exit', (code, signal) => log(`sshd exited (${code ?? signal})`));
  log(`sshd: listening on port 2222 for the keys in ${keys} (user node)`);
  return child;
}

/** The gateway, stopped at once if its config comes to break a rule while it runs. */
async function supervise(argv) {
  const found = problems(readConfig());
  if (found.length) { refuse(found, 'REFUSING to start the OpenClaw gateway'); return EX_CONFIG; }
  log(`the gateway section is ${GATEWAY} (read-only); OpenClaw's other settings are ${CONFIG}`);
  const sshd = startSshd();
  const { child, done } = run(argv, { group: true });
  done.then(() => sshd?.kill('SIGTERM'));
  let last = '';
  let stopping = false;
  const check = () => {
    if (stopping) return;
    let config;
    let now;
    const dotenv = readDotenv();
    try { config = readConfig(); } catch (e) {
      // OpenClaw replaces the file by a rename, never leaving it missing: unreadable is a fault.
      now = [`${CONFIG} cannot be read (${e.code})`];
    }
    if (!now) {
      const text = `${config}\0${typeof dotenv === 'string' ? dotenv : dotenv.error}`;
      const digest = crypto.createHash('sha256').update(text).digest('hex');
      if (digest === last) return;
      last = digest;
      now = problems(config, dotenv);
    }
    // A file OpenClaw cannot parse is one it does not apply either; the next write is checked.
    if (now.length && !(now.length === 1 && now[0].includes('is not valid JSON5'))) {
      stopping = true;
      refuse(now, 'STOPPING the OpenClaw gateway: a write while it ran');
      try { process.kill(-child.pid, 'SIGKILL'); } catch { child.kill('SIGKILL'); }
    }
  };
  // Every write (OpenClaw renames a new file over the old one) and, should an event be missed,
  // every second.
  try {
    fs.watch(path.dirname(CONFIG), (_event, name) => {
      if (!name || name === path.basename(CONFIG) || name === '.env') check();
    });
    if (path.dirname(DOTENV) !== path.dirname(CONFIG)) fs.watch(STATE_DIR, (_e, name) => { if (name === '.env') check(); });
  } catch (e) {
    log(`cannot watch ${path.dirname(CONFIG)} (${e.message}); checking every second`);
  }
  setInterval(check, 1000).unref();
  check();
  return done.then((code) => (stopping ? EX_CONFIG : code));
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === 'check' && argv.length === 1) {
    const found = fs.existsSync(CONFIG) ? problems(readConfig()) : problems(JSON.stringify(seed()));
    if (found.length) { log(...found); return EX_CONFIG; }
    log(`${fs.existsSync(CONFIG) ? CONFIG : 'a new config'}: ok (gateway section from ${GATEWAY})`);
    return 0;
  }
  if (argv[0] === 'repair' && argv.length === 1) return repair();
  if (argv.length === 0) { log('usage: openclaw gateway run | check | repair | COMMAND…'); return 2; }
  ensureConfig();
  const gatewayRun = path.basename(argv[0]) === 'openclaw' && argv[1] === 'gateway'
    && (argv[2] === undefined || argv[2] === 'run' || argv[2].startsWith('-'));
  if (gatewayRun) return supervise(argv);
  return run(argv).done;
}

// Exits explicitly: the watchers would keep the event loop alive after the gateway's end.
process.exit(await main());
