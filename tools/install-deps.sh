#!/bin/sh
# Installs the Debian 12 packages quantd builds and tests with (run as root).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
	build-essential pkg-config ca-certificates python3 python3-pip \
	libcunit1-dev libpcre2-dev \
	libprotobuf-c-dev protobuf-c-compiler liburing-dev libsystemd-dev systemd >/dev/null
echo "dependencies installed" >&2
