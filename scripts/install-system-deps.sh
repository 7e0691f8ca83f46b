#!/bin/sh
# Installs the Debian packages that the test suite and benchmarks drive,
# skipping whatever is already there.  Needs root (or sudo) when something
# is missing.
set -eu

need=""
command -v mosquitto_pub >/dev/null 2>&1 || need="$need mosquitto-clients"
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
command -v taskset >/dev/null 2>&1 || need="$need util-linux"
command -v chromium >/dev/null 2>&1 || need="$need chromium"  # dashboard tests (headless)
command -v amqp-publish >/dev/null 2>&1 || need="$need amqp-tools"
command -v kcat >/dev/null 2>&1 || need="$need kcat"  # Kafka tests (librdkafka CLI)
command -v etcd >/dev/null 2>&1 || need="$need etcd-server"  # placement etcd backend tests
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need="$need iproute2"  # off-loopback tests (network namespaces)

[ -z "$need" ] && exit 0

echo "==> installing Debian packages:$need (apt-get; a minute or more the first time)"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: need root or sudo to install:$need" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "==> apt-get update"
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q $need
echo "==> Debian packages installed"
# The mosquitto package starts a system broker on 1883; the tests run their
# own brokers on free ports, and `make run` needs 1883, so stop it.
if [ -x /usr/sbin/mosquitto ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
