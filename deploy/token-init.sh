#!/usr/bin/env bash
# One-shot (docker compose service "token-init"): initialise the SoftHSM2 token on the named
# volume, generate the client key and the sealing key once, and write the dev verifier's
# client registration (the public JWK of our did:key). Idempotent: a second run changes nothing.
#
# PINs come from docker secrets (files under /run/secrets), never from the environment or argv.
# Inputs (environment, none secret):
#   HSM_DIR        token directory volume         (default /var/lib/broker-hsm)
#   TOKEN_LABEL    token label                    (default broker)
#   KEY_LABEL      client key label               (default client-2026)
#   SEALING_LABEL  sealing key label              (default sealing-2026)
#   AUDIT_LOG      ceremony audit log             (default /var/lib/broker/audit.jsonl)
#   PEER_DIR       where the verifier's config goes (default /var/lib/peer-config)
#   PEER_HOST, PEER_PORT, REDIRECT_URI            the dev verifier's listener and our callback
#   SECRETS_DIR    where the PIN files are        (default /run/secrets; tests point it elsewhere)
#   BROKER_HOME    the source tree (softhsm/)     (default /opt/broker)
set -euo pipefail

hsm_dir=${HSM_DIR:-/var/lib/broker-hsm}
token=${TOKEN_LABEL:-broker}
key_label=${KEY_LABEL:-client-2026}
sealing_label=${SEALING_LABEL:-sealing-2026}
audit_log=${AUDIT_LOG:-/var/lib/broker/audit.jsonl}
peer_dir=${PEER_DIR:-/var/lib/peer-config}
secrets_dir=${SECRETS_DIR:-/run/secrets}
so_pin=$secrets_dir/broker_so_pin
user_pin=$secrets_dir/broker_user_pin
module=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

for f in "$so_pin" "$user_pin"; do
    [[ -r $f ]] || { echo "token-init: secret $f is missing (see deploy/README.md)" >&2; exit 66; }
done

# 1. the token (softhsm/init-token.sh reads both PINs from their files)
"${BROKER_HOME:-/opt/broker}/softhsm/init-token.sh" "$hsm_dir" "$token" "$so_pin" "$user_pin"
export SOFTHSM2_CONF=$hsm_dir/softhsm2.conf

key_uri="pkcs11:token=$token;object=$key_label?module-path=$module&pin-source=file:$user_pin"
sealing_uri="pkcs11:token=$token;object=$sealing_label?module-path=$module&pin-source=file:$user_pin"

# 2. the client key, once
if ! broker keys show --key "$key_uri" --audit-log "$audit_log" >/dev/null 2>&1; then
    broker keys generate --key "$key_uri" --audit-log "$audit_log" --operator token-init
fi
# 3. the sealing key, once (a marker on the token volume records it)
if [[ ! -e $hsm_dir/.sealing-key-generated ]]; then
    broker keys generate-sealing-key --key "$sealing_uri" --audit-log "$audit_log" --operator token-init
    touch "$hsm_dir/.sealing-key-generated"
fi

# 4. the dev verifier's registration of our client (public data only)
mkdir -p "$peer_dir"
broker keys show --key "$key_uri" --audit-log "$audit_log" --json >"$peer_dir/key.json"
PEER_HOST=${PEER_HOST:-verifier} PEER_PORT=${PEER_PORT:-3000} \
REDIRECT_URI=${REDIRECT_URI:-https://broker:8443/callback} PEER_DIR=$peer_dir python3 - <<'PY'
import json, os, pathlib

peer = pathlib.Path(os.environ["PEER_DIR"])
key = json.loads((peer / "key.json").read_text())
config = {
    "host": os.environ["PEER_HOST"],
    "port": int(os.environ["PEER_PORT"]),
    "tls_cert": "/run/secrets/verifier_tls_cert",
    "tls_key": "/run/secrets/verifier_tls_key",
    "client": {
        "client_id": key["did"],
        "jwk": key["public_jwk"],
        "redirect_uris": [os.environ["REDIRECT_URI"]],
    },
    "pkce_required": True,
    "vc_file": "/peer/learcredential-employee.json",
}
(peer / "peer-config.json").write_text(json.dumps(config, indent=2) + "\n")
print(f"token-init: client {key['did']} registered with the dev verifier")
PY
echo "token-init: done"
