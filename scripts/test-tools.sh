#!/usr/bin/env bash
# Installs the Debian packages the HTTP tests need, when they are missing: `prometheus`
# (for `promtool check metrics`, which validates /metrics) and `chromium` (the headless
# browser the live page's test drives). Idempotent: a package already installed is left
# as it is. Says what it installs on stderr; needs root (apt-get) only to install.
set -euo pipefail
PACKAGES=(prometheus chromium)
missing=()
for p in "${PACKAGES[@]}"; do
    if dpkg -s "$p" >/dev/null 2>&1; then
        echo "test-tools: $p $(dpkg-query -W -f='${Version}' "$p") is installed" >&2
    else
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test-tools: installing ${missing[*]} (Debian packages, apt-get --no-install-recommends)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    for p in "${missing[@]}"; do
        echo "test-tools: installed $p $(dpkg-query -W -f='${Version}' "$p")" >&2
    done
fi
