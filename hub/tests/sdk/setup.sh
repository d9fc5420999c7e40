#!/usr/bin/env bash
# Creates the Python virtualenv the SDK conformance test (hub/tests/integration/sdk_conformance.rs) uses:
# Microsoft's official Azure IoT SDKs for Python, pinned to the versions the wire contract
# (shared/reference/iothub-protocol.md) was observed with.
#
#   hub/tests/sdk/setup.sh            # creates <repo>/target/sdk-venv
#   SDK_VENV=/some/dir hub/tests/sdk/setup.sh
#
# The test finds Python at $CASEMENT_SDK_PYTHON, else <repo>/target/sdk-venv/bin/python.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="${SDK_VENV:-$repo/target/sdk-venv}"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup.sh: $python not found; install Python 3.9-3.12 or set PYTHON=/path/to/python3" >&2
    exit 2
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# azure-iot-hub 2.7.0 imports `six` without declaring it (reference §7).
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
"$venv/bin/python" - <<'PY'
import azure.iot.device, azure.iot.hub
print("azure-iot-device", azure.iot.device.__version__ if hasattr(azure.iot.device, "__version__") else "?")
PY
echo "SDK venv ready: $venv/bin/python"
