// Try Portcullis with no Docker engine and no account anywhere (demo-only values):
// builds nothing itself (scripts/demo does), starts the test suite's identity provider
// (oidc-provider) and the Rust echo upstream, runs Portcullis on https://localhost:8443 with a
// self-signed certificate, prints the URL and the demo login, and stops everything on Ctrl-C.
import crypto from 'node:crypto';
import path from 'node:path';
import { startEcho, startIdp, startPortcullis, tmpdir, USERS } from './lib.mjs';

const port = Number(process.env.DEMO_PORT || 8443);
const idpPort = Number(process.env.DEMO_IDP_PORT || 9071);
const host = 'localhost';
const dir = tmpdir('portcullis-demo-');

const echo = await startEcho('demo-upstream');
const idp = await startIdp({
  port: idpPort,
  redirectUris: [`https://${host}:${port}/.portcullis/callback`],
  postLogoutRedirectUris: [`https://${host}:${port}/.portcullis/signed_out`],
});
// Demo-only secret, fresh each run: never reuse it.
const cookieSecret = crypto.randomBytes(32).toString('base64');
const yaml = `# Demo only (scripts/demo): generated ${new Date().toISOString()}
address: 127.0.0.1:${port}
data_dir: ${path.join(dir, 'data')}
cookie_secret: ${cookieSecret}
idp_provider_url: ${idp.issuer}
idp_client_id: portcullis
idp_client_secret: e2e-client-secret
jwt_claims_headers:
  X-Forwarded-User: email
routes:
  - from: https://${host}
    to: ${echo.url}
    allow_websockets: true
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - domain: { is: example.com }
`;
const proxy = await startPortcullis({ dir, yaml, port });
console.log(`
Portcullis demo is running.
  Open:    https://${host}:${port}/   (self-signed certificate: accept the browser's warning)
  Sign in: login "alice" (allowed, ${USERS.alice.email}) or "bob" (refused, ${USERS.bob.email}); any password
  Who am I: https://${host}:${port}/.portcullis/     Sign out: https://${host}:${port}/.portcullis/sign_out
  Config:  ${path.join(dir, 'config.yaml')}
The upstream is the Rust echo: it shows the headers Portcullis sends it. Ctrl-C stops everything.
`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await proxy.stop();
  echo.stop();
  await idp.close();
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
proxy.child.on('exit', () => { if (!stopping) { console.error(proxy.logs.join('')); stop(); } });
