# Shared by scripts/demo and scripts/test. Sourced, not run.

# Installs the Debian packages named, if any is missing (one apt-get update, then install).
ensure_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    # Packages with a daemon (dovecot-imapd, interimap's local side) must not start it: a
    # policy-rc.d that refuses every start, for the length of the install.
    local policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
        policy=1
    fi
    local status=0
    "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null ||
        status=$?
    [ "$policy" -eq 1 ] && "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    return "$status"
}

# Build settings shared by every script: one target folder outside the checkout, so that the
# RocksDB build (~17 minutes on 2 cores) happens once per machine, and sccache when present.
setup_build_env() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sealpost-target}"
    if command -v sccache >/dev/null 2>&1; then
        export RUSTC_WRAPPER="${RUSTC_WRAPPER:-sccache}"
    fi
    # Build packages that the RocksDB bindings need: clang for bindgen, a C++ compiler.
    ensure_packages clang libclang-dev g++ sccache
}

# What the end-to-end tests run as real clients: Python 3 (imaplib, the shared harness),
# mbsync (isync), interimap with Dovecot's imap binary as its local side, swaks and msmtp
# (the harness's real_clients.sh and the SMTP tests), dnsmasq (a DNS server on loopback for
# SPF, DKIM, DMARC and MX), dkimpy (signs test messages with Debian's python3), aiosmtpd
# (receiving servers for outbound tests), openssl, for DANE a DNSSEC-signed zone (nsd serving
# it, ldnsutils signing it, unbound validating it), and for the web pages Debian's chromium
# driven by playwright-core under Node.js (tests/browser; npm fetches playwright-core, never a
# browser); for deployment (tests/deploy.rs) pebble, a test ACME CA, systemd-analyze, and
# cargo-deb.
setup_test_clients() {
    ensure_packages python3 isync interimap dovecot-imapd swaks msmtp dnsmasq-base python3-dkim python3-aiosmtpd openssl \
        nsd ldnsutils unbound chromium nodejs pebble systemd adduser rspamd redis-server
    # The Debian package's test builds it with cargo-deb, from crates.io once per machine.
    command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
    # Debian's nodejs comes without npm; NodeSource's carries its own.
    command -v npm >/dev/null 2>&1 || ensure_packages npm
}
