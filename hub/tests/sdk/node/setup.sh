#!/usr/bin/env bash
# Installs Microsoft's Node service SDK (azure-iothub 1.16.6) into <repo>/target/node-sdk for
# hub/tests/integration/sdk_node.rs. Needs node and npm (Node 20 was used).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
dest="${NODE_SDK_DIR:-$repo/target/node-sdk}"
mkdir -p "$dest"
cp "$here/package.json" "$dest/package.json"
(cd "$dest" && npm install --no-audit --no-fund)
echo "Node SDK ready: $dest/node_modules/azure-iothub"
