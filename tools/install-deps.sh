#!/bin/sh
# Installs the Debian 12 packages quantd builds and tests with (as root, or through sudo).
set -eu
if [ "$(id -u)" -ne 0 ]; then
	exec sudo sh "$0" "$@"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
	build-essential pkg-config ca-certificates python3 python3-pip \
	libcunit1-dev libpcre2-dev \
	libprotobuf-c-dev protobuf-c-compiler liburing-dev libsystemd-dev systemd >/dev/null
echo "dependencies installed" >&2
