#!/usr/bin/env bash
# Browser test prerequisites (tests/filter/test_browser.py): Debian's Chromium and the Python playwright package.
# Idempotent; never downloads a browser through playwright (`playwright install` is not used).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
# playwright itself comes with the dev extra (`make env`); top it up only in an existing older venv
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
    .venv/bin/pip install "playwright>=1.45"
fi
