#!/usr/bin/env bash
# Prints the unit graph's units and features of this workspace (resolver 1) and of a scratch
# copy switched to resolver 2.
set -euo pipefail
cd "$(dirname "$0")"
units() {
  RUSTC_BOOTSTRAP=1 cargo build --offline --unit-graph -Z unstable-options | python3 -c '
import json, sys
g = json.load(sys.stdin)
print(len(g["units"]), "units")
for u in g["units"]:
    print(" ", u["pkg_id"].split("/")[-1], u["target"]["kind"][0], u["mode"], u["features"])'
}
echo "resolver 1:"; units
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp -r Cargo.toml Cargo.lock common r1-app "$tmp"/
sed -i 's/resolver = "1"/resolver = "2"/' "$tmp/Cargo.toml"
echo "resolver 2:"; (cd "$tmp" && units)
