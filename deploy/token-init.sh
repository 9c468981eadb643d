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
#   DEV_CLIENT_DIR where the dev client certificate goes (default /var/lib/broker-dev-client)
#   DEV_CLIENT_ID  its SPIFFE ID                   (default spiffe://example.org/dev-client)
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

# 1. the token (softhsm/init-token.sh reads both PINs from their files; audited as
#    keys.init_token in the ceremony log, on every run)
"${BROKER_HOME:-/opt/broker}/softhsm/init-token.sh" "$hsm_dir" "$token" "$so_pin" "$user_pin" "$audit_log"
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
# 5. the dev client certificate (gRPC mTLS caller and the image's HEALTHCHECK), signed by the
# client CA when its key is a secret here (dev only), reissued when it has < 7 days left
ca_cert=$secrets_dir/grpc_client_ca ca_key=$secrets_dir/grpc_client_ca_key
if [[ -r $ca_cert && -s $ca_key ]]; then
    DEV_CLIENT_DIR=${DEV_CLIENT_DIR:-/var/lib/broker-dev-client} \
    DEV_CLIENT_ID=${DEV_CLIENT_ID:-spiffe://example.org/dev-client} \
    CA_CERT=$ca_cert CA_KEY=$ca_key python3 - <<'PY'
import datetime as dt, os, pathlib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

out = pathlib.Path(os.environ["DEV_CLIENT_DIR"])
spiffe_id = os.environ["DEV_CLIENT_ID"]
now = dt.datetime.now(dt.UTC)
cert_file, key_file = out / "cert.pem", out / "key.pem"
if cert_file.exists() and key_file.exists():
    old = x509.load_pem_x509_certificate(cert_file.read_bytes())
    if old.not_valid_after_utc - now > dt.timedelta(days=7):
        raise SystemExit(0)
ca = x509.load_pem_x509_certificate(pathlib.Path(os.environ["CA_CERT"]).read_bytes())
ca_key = serialization.load_pem_private_key(pathlib.Path(os.environ["CA_KEY"]).read_bytes(), None)
key = ec.generate_private_key(ec.SECP256R1())
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([]))
    .issuer_name(ca.subject)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - dt.timedelta(minutes=5))
    .not_valid_after(min(now + dt.timedelta(days=30), ca.not_valid_after_utc))
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    .add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
    )
    .sign(ca_key, hashes.SHA256())
)
out.mkdir(parents=True, exist_ok=True)
tmp = out / ".key.pem.tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "wb") as f:
    f.write(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
os.replace(tmp, key_file)
cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
print(f"token-init: dev client certificate for {spiffe_id} in {out}")
PY
else
    echo "token-init: grpc_client_ca_key is empty or missing: no dev client certificate (the HEALTHCHECK needs one)" >&2
fi
echo "token-init: done"
