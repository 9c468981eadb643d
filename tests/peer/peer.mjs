// oidc-provider 8.8.1 configured like the DOME Verifier, for the broker's integration tests.
//
// Usage: node peer.mjs <config.json>
// The config file (written by tests/integration/conftest.py) holds:
//   host, port (0 = any), tls_cert, tls_key            HTTPS listener (test CA)
//   client: { client_id, jwk, redirect_uris }          our did:key client and its public JWK, or
//   clients: [{ client_id, jwk, redirect_uris }, ...]  several (a key rotation: the old and the new did);
//                                                      `client` and `clients` may be given together
//   pkce_required (bool), access_token_ttl (s), id_token_ttl (s), refresh_token_ttl (s)
//   token_delay_ms                                     artificial delay before /token (env PEER_TOKEN_DELAY_MS wins)
//   token_delay_after_ms (default 0)                   delay after /token was processed (tokens issued, refresh
//                                                      token rotated), before the response is sent
//   refresh_grace_seconds (default 0)                  refresh-token reuse grace: a rotated-out refresh token
//                                                      is still accepted ONCE within this many seconds of its
//                                                      rotation (Cognito/Connect2id-style grace; 0 = oidc-provider's
//                                                      strict rotation: reuse -> invalid_grant + grant revoked)
//   account_id, vc_file                                the user and the LEARCredentialEmployee sample
//   store_max_entries (default 1000000)                size of the in-memory store (oidc-provider's own: 1000)
//   public_port (optional)                             the port the issuer URL (and so discovery) names when
//                                                      clients reach the peer through a proxy on that port;
//                                                      the peer still listens on `port`
//   bulk_grants (default false)                        enables POST /admin/grants (benchmarks and their smoke
//                                                      test only; devtools.peer.PeerSettings.bulk_grants)
// When listening it prints one JSON line to stdout: {"ready": true, "issuer": "...", "port": N}.
//
// Test-only admin endpoints (never part of a real AS):
//   GET  /admin/log    everything the AS received: token requests (form + decoded client assertion,
//                      request headers, and the tokens the AS issued in the response),
//                      authorization requests (query), request objects fetched by reference, PAR bodies
//   POST /admin/reset  clears the log
//   POST /admin/ttl    {"access_token_ttl": N}: access tokens issued from now on live N seconds (lets a
//                      test make a short-lived token stale, then keep the next one fresh whatever the load)
//   POST /admin/m2m    {"trusted_issuers": [did, ...] | null}: the issuers of LEARCredentialMachines
//                      the client_credentials grant trusts (null, the default: any)
//   POST /admin/clients {client_id, jwk, redirect_uris}: registers one more client from now on. It
//                      stands for "add the did to the TSL and restart the Verifier" WITHOUT losing the
//                      Verifier's state (a real restart drops every refresh token, DOME bug 3), so a
//                      key-rotation test can keep the old client's grants refreshing throughout.
//                      409 when the client_id is registered already.
//   POST /admin/grants {count, client_id?}: ONLY when the config sets `bulk_grants` (404 otherwise).
//                      Mints `count` (1..50000) grants of the user for the client (default: the first
//                      configured), each with one refresh token, with oidc-provider's own models (Grant,
//                      RefreshToken) as a completed login leaves them: the token endpoint's refresh_token
//                      grant accepts and rotates them. Answers {account_id, grants: [{grant_id,
//                      refresh_token}, ...]}. Lets bench/storm.py start from 10,000 grants in a second
//                      instead of 10,000 logins.
//   GET  /admin/token_counts  the token requests received, counted: {total, by_status: {"200": n, ...},
//                      by_grant: {grant_id: n}} (refresh_token requests by the oidc-provider grant of the
//                      presented refresh token); far smaller than /admin/log after thousands of requests.
//
// Machine-to-machine (client_credentials) in DOME's shape (DOME-PROFILE.md): before oidc-provider
// sees the request, the front checks what the DOME Verifier checks: the client assertion's `aud`
// is the issuer as one string, `exp` is after now (no skew allowance), `vp_token` is Base64 of a
// VP JWT signed ES256 by the client's key (header kid = the did, a #fragment stripped), holder =
// the did, one LEARCredentialMachine JWT (RS256 by its x5c certificate) bound to the did
// (credentialSubject.id, else sub, else mandatee.id), within validFrom..validUntil, from a
// trusted issuer. A VP @context that is not an array of strings is 400 invalid_request; any
// other failure is an EMPTY 403, like DOME (the log says why: token_requests[].m2m_reason).
// oidc-provider then authenticates the client (private_key_jwt, one-time jti) and issues the token.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';

import Provider, { errors as oidcErrors } from 'oidc-provider';
import RequestUriCache from 'oidc-provider/lib/helpers/request_uri_cache.js';
import { setStorage } from 'oidc-provider/lib/adapters/memory_adapter.js';
import QuickLRU from 'quick-lru';
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: node peer.mjs <config.json>\n');
  process.exit(2);
}
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
// oidc-provider's in-memory adapter is an LRU of 1000 entries (sessions, interactions, codes,
// grants, refresh tokens - rotated-out ones included): with a few hundred grants it silently
// evicts live grants and refresh tokens, and their refreshes get invalid_grant. A test AS must
// not lose state on its own: the store holds `store_max_entries` entries (default 1,000,000).
setStorage(new QuickLRU({ maxSize: Number(cfg.store_max_entries ?? 1000000) }));
const vc = JSON.parse(fs.readFileSync(cfg.vc_file, 'utf8'));
let accessTokenTtl = Number(cfg.access_token_ttl ?? 120);
let m2mTrustedIssuers = cfg.m2m_trusted_issuers ?? null;
const tokenDelayMs = Number(process.env.PEER_TOKEN_DELAY_MS ?? cfg.token_delay_ms ?? 0);
const tokenDelayAfterMs = Number(cfg.token_delay_after_ms ?? 0);
const refreshGraceMs = Number(cfg.refresh_grace_seconds ?? 0) * 1000;
const bulkGrants = cfg.bulk_grants === true;
const BULK_GRANTS_MAX = 50000;
const accountId = cfg.account_id ?? 'did:key:zDnaeVYnWTZu5nbrH1qmBVMvNwSrtKnkRbCZ4xH5h2LQPnzdr';
const RESOURCE = 'urn:dome:verifier';
// The registered clients by client_id (the did): `client` and/or `clients` from the config, and
// those added through POST /admin/clients.
const clients = new Map();
for (const c of [...(cfg.client ? [cfg.client] : []), ...(cfg.clients ?? [])]) {
  if (clients.has(c.client_id)) throw new Error(`client ${c.client_id} listed twice`);
  clients.set(c.client_id, c);
}
const SCOPE = 'openid learcredential';

// --- what the AS received --------------------------------------------------------------------
const log = {
  token_requests: [], authorizations: [], request_objects: [], par_requests: [], grace_events: [],
};

function decodeVpToken(vpToken) {
  if (typeof vpToken !== 'string') return null;
  const jws = Buffer.from(vpToken, 'base64').toString('ascii');
  const vp = { jws, ...decodeJwt(jws) };
  const vcJwt = vp.claims?.vp?.verifiableCredential?.[0];
  return { vp, vc: typeof vcJwt === 'string' ? decodeJwt(vcJwt) : null };
}

function verifyJws(jws, key, alg) {
  const [h, p, s] = jws.split('.');
  const data = Buffer.from(`${h}.${p}`, 'ascii');
  const sig = Buffer.from(s, 'base64url');
  if (alg === 'ES256') return crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
  if (alg === 'RS256') return crypto.verify('sha256', data, key, sig);
  return false;
}

// What DOME's Verifier checks for client_credentials; returns null when the request may go on,
// else {status, reason, body}.
function checkMachineRequest(form, issuer) {
  const client = clients.get(form.client_id);
  const fail = (reason, status = 403, body = null) => ({ status, reason, body });
  // An unknown client fails client authentication first: oidc-provider answers 401 invalid_client.
  if (!client) return null;
  const did = client.client_id;
  const assertion = decodeJwt(form.client_assertion);
  const claims = assertion.claims ?? {};
  if (typeof claims.aud !== 'string' || claims.aud !== issuer) return fail('aud_not_issuer_string');
  if (!(Number(claims.exp) > Date.now() / 1000)) return fail('assertion_expired');
  const decoded = decodeVpToken(claims.vp_token);
  if (!decoded || !decoded.vp.header) return fail('no_vp_token');
  const { vp, vc } = decoded;
  const holderKid = String(vp.header.kid ?? vp.claims.iss ?? vp.claims.sub ?? '').split('#')[0];
  if (vp.header.alg !== 'ES256' || holderKid !== did) return fail('vp_holder');
  const clientKey = crypto.createPublicKey({ key: client.jwk, format: 'jwk' });
  if (!verifyJws(vp.jws, clientKey, 'ES256')) return fail('vp_signature');
  const body = vp.claims.vp ?? {};
  const context = body['@context'];
  if (!Array.isArray(context) || !context.every((c) => typeof c === 'string')) {
    return fail('vp_context', 400, { error: 'invalid_request', error_description: '@context must be an array of strings' });
  }
  if (!Array.isArray(body.type) || !body.type.includes('VerifiablePresentation') || body.holder !== did) return fail('vp_shape');
  const vcs = body.verifiableCredential;
  if (!Array.isArray(vcs) || vcs.length !== 1 || typeof vcs[0] !== 'string' || !vc?.header) return fail('vp_credentials');
  let certKey;
  try {
    certKey = new crypto.X509Certificate(Buffer.from(vc.header.x5c[0], 'base64')).publicKey;
  } catch {
    return fail('vc_certificate');
  }
  if (vc.header.alg !== 'RS256' || !verifyJws(vcs[0], certKey, 'RS256')) return fail('vc_signature');
  const cred = vc.claims.vc ?? {};
  if (!Array.isArray(cred.type) || !cred.type.includes('LEARCredentialMachine')) return fail('vc_type');
  const subject = cred.credentialSubject ?? {};
  const bound = subject.id ?? vc.claims.sub ?? subject.mandate?.mandatee?.id;
  if (bound !== did) return fail('vc_binding');
  const now = Date.now();
  if (!(Date.parse(cred.validFrom) <= now && now <= Date.parse(cred.validUntil))) return fail('vc_time');
  if (m2mTrustedIssuers !== null && !m2mTrustedIssuers.includes(vc.claims.iss)) return fail('untrusted_issuer');
  return null;
}

function decodeJwt(jwt) {
  try {
    const [h, p] = String(jwt).split('.');
    return {
      header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
      claims: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
    };
  } catch {
    return { header: null, claims: null };
  }
}

// Record every request object fetched by reference (oidc-provider caches by URI: a cache hit is
// not a fetch, so `fetched` tells the two apart).
const originalResolve = RequestUriCache.prototype.resolve;
RequestUriCache.prototype.resolve = async function resolve(requestUri) {
  const cacheKey = crypto.createHash('sha256').update(requestUri).digest('hex');
  const fetched = !this.cache.has(cacheKey);
  try {
    const body = await originalResolve.call(this, requestUri);
    log.request_objects.push({ request_uri: requestUri, fetched, ok: true, jws: body, ...decodeJwt(body) });
    return body;
  } catch (err) {
    log.request_objects.push({ request_uri: requestUri, fetched, ok: false, error: err.message });
    throw err;
  }
};

// --- the AS's own signing key: a fresh EC P-256 JWK -------------------------------------------
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const asJwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256', kid: 'peer-es256' };

// oidc-provider's metadata for one of our clients (the key's kid is the did, like DOME's).
function clientMetadata(client) {
  return {
    client_id: client.client_id,
    redirect_uris: client.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    request_object_signing_alg: 'ES256',
    id_token_signed_response_alg: 'ES256',
    jwks: { keys: [{ ...client.jwk, kid: client.client_id }] },
  };
}

function buildProvider(issuer) {
  const configuration = {
    clients: [...clients.values()].map(clientMetadata),
    jwks: { keys: [asJwk] },
    cookies: { keys: ['broker-test-peer-cookie-key'] },
    clientAuthMethods: ['private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['ES256'],
      idTokenSigningAlgValues: ['ES256'],
      requestObjectSigningAlgValues: ['ES256'],
    },
    scopes: ['openid', 'offline_access', 'learcredential'],
    claims: { openid: ['sub'], learcredential: ['name', 'email', 'vc_json'] },
    conformIdTokenClaims: false,
    pkce: { required: () => Boolean(cfg.pkce_required), methods: ['S256'] },
    ttl: {
      AccessToken: () => accessTokenTtl,
      IdToken: Number(cfg.id_token_ttl ?? 60),
      RefreshToken: Number(cfg.refresh_token_ttl ?? 3600),
      ClientCredentials: () => accessTokenTtl,
      AuthorizationCode: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      PushedAuthorizationRequest: 60,
    },
    issueRefreshToken: async () => true,
    rotateRefreshToken: true,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      requestObjects: {
        // `request` by value is needed for PAR with signed request objects (the pushed body
        // carries `request=`); the authorization endpoint itself is driven by reference.
        request: true,
        requestUri: true,
        requireUriRegistration: false,
        requireSignedRequestObject: true,
        mode: 'strict',
      },
      pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator, client) => ({
          scope: 'learcredential machine',
          audience: client.clientId,
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    extraTokenClaims: async (ctx, token) => (token.kind === 'AccessToken' ? { vc, scope: SCOPE } : undefined),
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({
        sub: id,
        name: 'Jane Doe',
        email: 'jane.doe@example.org',
        vc_json: JSON.stringify(vc),
      }),
    }),
    // No consent step: the grant is created with the requested scopes (DOME has no consent).
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(SCOPE);
      grant.addOIDCClaims(['name', 'email', 'vc_json']);
      grant.addResourceScope(RESOURCE, 'learcredential');
      await grant.save();
      return grant;
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };

  const provider = new Provider(issuer, configuration);

  // Refresh-token reuse grace (off by default). oidc-provider 8.8.1's refresh_token grant
  // (lib/actions/grants/refresh_token.js) rejects a token whose `consumed` flag is set (and
  // revokes the grant), and sets that flag through RefreshToken#consume() when it rotates. With a
  // grace, the first rotation only notes the time and leaves the old token unconsumed; the next
  // presentation of that old token consumes it for good and is accepted only within the grace.
  // A third presentation finds it consumed: oidc-provider's own reuse detection applies.
  if (refreshGraceMs > 0) {
    const rotatedAt = new Map(); // refresh token jti -> ms of its first rotation
    const consumeForGood = provider.RefreshToken.prototype.consume;
    provider.RefreshToken.prototype.consume = async function consumeWithGrace() {
      const first = rotatedAt.get(this.jti);
      if (first === undefined) {
        rotatedAt.set(this.jti, Date.now());
        log.grace_events.push({ event: 'rotated_kept', at: Date.now() });
        return;
      }
      await consumeForGood.call(this);
      if (Date.now() - first > refreshGraceMs) {
        log.grace_events.push({ event: 'reuse_after_grace', at: Date.now() });
        throw new oidcErrors.InvalidGrant('refresh token already used (reuse grace period over)');
      }
      log.grace_events.push({ event: 'reused_within_grace', at: Date.now() });
    };
  }

  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.path === '/token' && tokenDelayMs > 0) {
      await new Promise((resolve) => { setTimeout(resolve, tokenDelayMs); });
    }
    await next();
    const route = ctx.oidc?.route;
    if (route === 'token') {
      const body = { ...(ctx.oidc.body ?? {}) };
      const issued = ctx.status === 200 && ctx.body && typeof ctx.body === 'object'
        ? {
          access_token: ctx.body.access_token ?? null,
          refresh_token: ctx.body.refresh_token ?? null,
          id_token: ctx.body.id_token ?? null,
        }
        : null;
      const assertion = decodeJwt(body.client_assertion);
      const entry = {
        grant_type: body.grant_type ?? null,
        grant_id: ctx.oidc.entities?.Grant?.jti ?? null,
        form: body,
        assertion,
        presentation: body.grant_type === 'client_credentials' ? decodeVpToken(assertion.claims?.vp_token) : undefined,
        status: ctx.status,
        error: ctx.body?.error ?? null,
        headers: { ...ctx.headers },
        issued,
        at: Date.now(),
      };
      log.token_requests.push(entry);
      process.stderr.write(`peer: token request #${log.token_requests.length} grant_type=${entry.grant_type} status=${entry.status} error=${entry.error}\n`);
      if (tokenDelayAfterMs > 0) {
        await new Promise((resolve) => { setTimeout(resolve, tokenDelayAfterMs); });
      }
    } else if (route === 'authorization') {
      log.authorizations.push({ query: { ...ctx.query }, status: ctx.status, location: ctx.response.get('location') || null });
    } else if (route === 'pushed_authorization_request') {
      const body = { ...(ctx.oidc.body ?? {}) };
      log.par_requests.push({
        form: body,
        assertion: decodeJwt(body.client_assertion),
        request: decodeJwt(body.request),
        status: ctx.status,
        error: ctx.body?.error ?? null,
      });
    }
  });
  return provider;
}

// --- bulk grants (bulk_grants only) ------------------------------------------------------------
// What a completed login leaves for the client: a grant (scopes and claims as loadExistingGrant
// gives them) and a refresh token bound to it, as the authorization_code grant creates it.
async function mintGrants(clientId, count) {
  const client = await provider.Client.find(clientId);
  if (!client) return null;
  const authTime = Math.floor(Date.now() / 1000);
  const grants = [];
  for (let i = 0; i < count; i += 1) {
    const grant = new provider.Grant({ accountId, clientId });
    grant.addOIDCScope(SCOPE);
    grant.addOIDCClaims(['name', 'email', 'vc_json']);
    grant.addResourceScope(RESOURCE, 'learcredential');
    const grantId = await grant.save();
    const refreshToken = new provider.RefreshToken({
      accountId,
      authTime,
      client,
      expiresWithSession: false,
      grantId,
      gty: 'authorization_code',
      resource: RESOURCE,
      rotations: 0,
      scope: SCOPE,
    });
    grants.push({ grant_id: grantId, refresh_token: await refreshToken.save() });
  }
  return grants;
}

function tokenCounts() {
  const byStatus = {};
  const byGrant = {};
  for (const entry of log.token_requests) {
    byStatus[entry.status] = (byStatus[entry.status] ?? 0) + 1;
    if (entry.grant_type === 'refresh_token' && entry.grant_id) {
      byGrant[entry.grant_id] = (byGrant[entry.grant_id] ?? 0) + 1;
    }
  }
  return { total: log.token_requests.length, by_status: byStatus, by_grant: byGrant };
}

// --- HTTP(S) front: admin, auto-login interaction, then the provider ---------------------------
let provider;
let callback;

function sendJson(res, status, obj) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(obj));
}

async function handle(req, res) {
  const url = new URL(req.url, 'https://peer.invalid');
  if (url.pathname === '/admin/log' && req.method === 'GET') {
    return sendJson(res, 200, log);
  }
  if (url.pathname === '/admin/reset' && req.method === 'POST') {
    for (const key of Object.keys(log)) log[key] = [];
    return sendJson(res, 200, { ok: true });
  }
  if (url.pathname === '/admin/token_counts' && req.method === 'GET') {
    return sendJson(res, 200, tokenCounts());
  }
  if (bulkGrants && url.pathname === '/admin/grants' && req.method === 'POST') {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const count = Number(body.count);
    if (!Number.isInteger(count) || count < 1 || count > BULK_GRANTS_MAX) {
      return sendJson(res, 400, { error: 'invalid_count' });
    }
    const clientId = body.client_id ?? clients.keys().next().value;
    const grants = await mintGrants(clientId, count);
    if (grants === null) return sendJson(res, 404, { error: 'unknown_client' });
    process.stderr.write(`peer: ${count} grants minted for ${clientId}\n`);
    return sendJson(res, 200, { account_id: accountId, grants });
  }
  if (url.pathname === '/admin/ttl' && req.method === 'POST') {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const ttl = Number(JSON.parse(Buffer.concat(chunks).toString('utf8')).access_token_ttl);
    if (!Number.isInteger(ttl) || ttl < 1) return sendJson(res, 400, { error: 'invalid_ttl' });
    accessTokenTtl = ttl;
    return sendJson(res, 200, { ok: true, access_token_ttl: ttl });
  }
  if (url.pathname === '/admin/m2m' && req.method === 'POST') {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const trusted = JSON.parse(Buffer.concat(chunks).toString('utf8')).trusted_issuers;
    if (trusted !== null && !Array.isArray(trusted)) return sendJson(res, 400, { error: 'invalid_trusted_issuers' });
    m2mTrustedIssuers = trusted;
    return sendJson(res, 200, { ok: true, trusted_issuers: trusted });
  }
  if (url.pathname === '/token' && req.method === 'POST') {
    // Read the body once; oidc-provider takes it from req.body (selective_body's fallback).
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    req.body = Buffer.concat(chunks);
    const form = Object.fromEntries(new URLSearchParams(req.body.toString('utf8')));
    if (form.grant_type === 'client_credentials') {
      const refused = checkMachineRequest(form, provider.issuer);
      if (refused) {
        const assertion = decodeJwt(form.client_assertion);
        log.token_requests.push({
          grant_type: form.grant_type,
          form,
          assertion,
          presentation: decodeVpToken(assertion.claims?.vp_token),
          status: refused.status,
          error: refused.body?.error ?? null,
          m2m_reason: refused.reason,
          headers: { ...req.headers },
          issued: null,
          at: Date.now(),
        });
        process.stderr.write(`peer: client_credentials refused (${refused.reason}) -> ${refused.status}\n`);
        if (refused.body) return sendJson(res, refused.status, refused.body);
        res.writeHead(refused.status, { 'content-length': '0' });
        return res.end();
      }
    }
  }
  if (url.pathname === '/admin/clients' && req.method === 'POST') {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const client = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (typeof client.client_id !== 'string' || typeof client.jwk !== 'object'
      || !Array.isArray(client.redirect_uris)) {
      return sendJson(res, 400, { error: 'invalid_client_metadata' });
    }
    if (clients.has(client.client_id)) return sendJson(res, 409, { error: 'client_exists' });
    // A static client like the configured ones (oidc-provider's own registry; never evicted).
    instance(provider).clientAddStatic(clientMetadata(client));
    clients.set(client.client_id, client);
    process.stderr.write(`peer: client registered: ${client.client_id}\n`);
    return sendJson(res, 200, { ok: true, client_id: client.client_id });
  }
  if (url.pathname.startsWith('/interaction/') && req.method === 'GET') {
    try {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'login') {
        return await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
      }
      // The grant comes from loadExistingGrant: confirm it for any other prompt.
      const grantId = details.grantId ?? (await (async () => {
        const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        grant.addOIDCScope(SCOPE);
        grant.addResourceScope(RESOURCE, 'learcredential');
        return grant.save();
      })());
      return await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    } catch (err) {
      return sendJson(res, 400, { error: 'interaction_failed', error_description: err.message });
    }
  }
  return callback(req, res);
}

const server = https.createServer({
  cert: fs.readFileSync(cfg.tls_cert),
  key: fs.readFileSync(cfg.tls_key),
}, (req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: err.message });
  });
});

server.listen(Number(cfg.port ?? 0), cfg.host ?? '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `https://${cfg.host ?? '127.0.0.1'}:${Number(cfg.public_port ?? 0) || port}`;
  provider = buildProvider(issuer);
  provider.on('server_error', (ctx, err) => { process.stderr.write(`peer: server_error ${err.stack}\n`); });
  callback = provider.callback();
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
