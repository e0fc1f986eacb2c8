# shellcheck shell=bash
# Finding and installing the engines herald runs on (sourced by scripts/test.sh
# and deploy/local/cluster.sh). Debian packages for redis-server, nats-server and
# etcd; tansu (a Kafka-compatible broker) from crates.io; Chromium and
# chromedriver for the browser tests; mosquitto, the MQTT peer of the benchmarks
# (its clients are tested against it).

# engine_bin NAME: prints the path of NAME (PATH, sbin directories, cargo's bin).
engine_bin() {
  local d
  if command -v "$1" 2>/dev/null; then return 0; fi
  for d in /usr/sbin /usr/bin /usr/local/bin "${CARGO_HOME:-$HOME/.cargo}/bin"; do
    if [ -x "$d/$1" ]; then echo "$d/$1"; return 0; fi
  done
  return 1
}

# ensure_engines WHAT...: installs what is missing. WHAT is any of redis, nats,
# etcd (with etcdctl), kafka (tansu), mqtt (mosquitto), postgres (PostgreSQL's
# server binaries; the tests run their own instance as the postgres user), tls-proxy (socat: the TLS terminator the
# Kafka TLS tests put in front of tansu), build (make, a C compiler, pkg-config
# and OpenSSL's headers, for librdkafka with TLS and SASL) and browser (headless
# Chromium and its WebDriver, chromedriver, for the SDK's browser tests).
ensure_engines() {
  local pkgs=() w sudo_cmd=""
  for w in "$@"; do
    case "$w" in
      redis) engine_bin redis-server >/dev/null || pkgs+=(redis-server) ;;
      nats) engine_bin nats-server >/dev/null || pkgs+=(nats-server) ;;
      etcd)
        engine_bin etcd >/dev/null || pkgs+=(etcd-server)
        engine_bin etcdctl >/dev/null || pkgs+=(etcd-client)
        ;;
      tls-proxy) engine_bin socat >/dev/null || pkgs+=(socat) ;;
      mqtt) engine_bin mosquitto >/dev/null || pkgs+=(mosquitto) ;;
      # Debian keeps initdb and postgres under /usr/lib/postgresql/<version>/bin.
      postgres) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || pkgs+=(postgresql) ;;
      browser)
        engine_bin chromium >/dev/null || pkgs+=(chromium)
        engine_bin chromedriver >/dev/null || pkgs+=(chromium-driver)
        ;;
      build)
        command -v make >/dev/null 2>&1 || pkgs+=(make)
        command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
        command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
        # librdkafka links the system OpenSSL (Kafka TLS and SASL/SCRAM).
        [ -f /usr/include/openssl/ssl.h ] || pkgs+=(libssl-dev)
        ;;
      kafka) ;;
      *) echo "ensure_engines: unknown engine $w" >&2; return 2 ;;
    esac
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "installing: ${pkgs[*]}"
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
      || { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; }
  fi
  for w in "$@"; do
    if [ "$w" = kafka ] && ! engine_bin tansu >/dev/null; then
      # Built once (about 9 minutes); without dynostore it cannot use memory storage.
      echo "installing tansu (Kafka-compatible broker; about 9 minutes, once)"
      cargo install tansu --locked --features dynostore
    fi
  done
}
