#!/usr/bin/env bash
# Usage: softhsm/init-token.sh DIR LABEL SO_PIN_FILE USER_PIN_FILE
#
# Idempotent. Creates DIR/tokens and DIR/softhsm2.conf (from softhsm2.conf.in) and initialises a
# SoftHSM2 token labelled LABEL unless one already exists. The PINs are read from the files by
# `python -m broker.keys.inittoken` (C_InitToken + C_InitPIN): they never appear in argv, unlike
# `softhsm2-util --init-token --so-pin ... --pin ...`.
# Then: export SOFTHSM2_CONF=DIR/softhsm2.conf
set -euo pipefail

if [[ $# -ne 4 ]]; then
    echo "usage: $0 DIR LABEL SO_PIN_FILE USER_PIN_FILE" >&2
    exit 64
fi
dir=$1 label=$2 so_pin_file=$3 user_pin_file=$4
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

SOFTHSM2_CONF=$conf PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m broker.keys.inittoken \
    --label "$label" --so-pin-file "$so_pin_file" --user-pin-file "$user_pin_file"
