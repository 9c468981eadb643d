#!/usr/bin/env bash
# Usage: softhsm/init-token.sh DIR LABEL SO_PIN_FILE USER_PIN_FILE [AUDIT_LOG]
#
# Idempotent. Creates DIR/tokens and DIR/softhsm2.conf (from softhsm2.conf.in) and initialises a
# SoftHSM2 token labelled LABEL unless one already exists (C_InitToken + C_InitPIN). The PINs are
# read from the files in Python: they never appear in argv, unlike
# `softhsm2-util --init-token --so-pin ... --pin ...`.
#
# AUDIT_LOG (or $BROKER_AUDIT_LOG when the argument is left out): the token is initialised by
# `broker keys init-token`, which appends its `keys.init_token` record to that hash-chained log,
# on every run (a token already there is recorded as left alone), like the command run by hand.
# Without either, `python -m broker.keys.inittoken` initialises it and no record is written (a
# throwaway test token); a note on stderr says so.
# Then: export SOFTHSM2_CONF=DIR/softhsm2.conf
set -euo pipefail

if [[ $# -ne 4 && $# -ne 5 ]]; then
    echo "usage: $0 DIR LABEL SO_PIN_FILE USER_PIN_FILE [AUDIT_LOG]" >&2
    exit 64
fi
dir=$1 label=$2 so_pin_file=$3 user_pin_file=$4 audit_log=${5:-${BROKER_AUDIT_LOG:-}}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3

for f in "$so_pin_file" "$user_pin_file"; do
    [[ -r $f ]] || { echo "$0: PIN file $f is missing or unreadable" >&2; exit 66; }
done

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf=$dir/softhsm2.conf
if [[ ! -f $conf ]]; then
    tmp=$(mktemp "$dir/.softhsm2.conf.XXXXXX")
    sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.in" >"$tmp"
    mv "$tmp" "$conf"
fi

export SOFTHSM2_CONF=$conf PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n $audit_log ]]; then
    exec "$python" -m broker.cli keys init-token --token "$label" \
        --so-pin-file "$so_pin_file" --pin-file "$user_pin_file" \
        --softhsm-conf "$conf" --audit-log "$audit_log"
fi
echo "$0: no AUDIT_LOG argument and no \$BROKER_AUDIT_LOG: no audit record is written" >&2
"$python" -m broker.keys.inittoken \
    --label "$label" --so-pin-file "$so_pin_file" --user-pin-file "$user_pin_file"
