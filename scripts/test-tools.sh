#!/usr/bin/env bash
# Installs what the HTTP and WebSocket tests need, when it is missing: the Debian
# packages `prometheus` (for `promtool check metrics`, which validates /metrics) and
# `chromium` (the headless browser the live page's test drives), and websocat (below).
# Idempotent: what is already installed is left as it is. Says what it installs on
# stderr; needs root (apt-get) only to install the packages.
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

# websocat, the command-line WebSocket client whose examples docs/websocket.md shows and
# tests/e2e.rs runs. Debian 12 has no package: cargo builds it (TLS left out, so no
# OpenSSL headers are needed) into cargo's bin directory.
WEBSOCAT_VERSION=1.14.1
websocat_bin="${CARGO_HOME:-$HOME/.cargo}/bin/websocat"
if [ -x "$websocat_bin" ] && [ "$("$websocat_bin" --version 2>/dev/null)" = "websocat $WEBSOCAT_VERSION" ]; then
    echo "test-tools: websocat $WEBSOCAT_VERSION is installed" >&2
else
    echo "test-tools: installing websocat $WEBSOCAT_VERSION (cargo install --locked, without TLS)" >&2
    cargo install websocat --version "$WEBSOCAT_VERSION" --locked --quiet \
        --no-default-features --features signal_handler,tokio-process,unix_stdio >&2
fi
