#!/usr/bin/env bash
# System packages the build and tests need, from Debian. Skips apt when everything is already there.
set -euo pipefail
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v g++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
# the Python client's test (router-service/src/data-server.python.test.ts) runs it with Debian's python3
/usr/bin/python3 -c "import google.protobuf" 2>/dev/null || need+=(python3-protobuf)
/usr/bin/python3 -c "import numpy" 2>/dev/null || need+=(python3-numpy)
/usr/bin/python3 -c "import grpc" 2>/dev/null || need+=(python3-grpcio)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "install-system-deps: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian prometheus package starts a system service on install; tests start their own servers.
(systemctl stop prometheus prometheus-node-exporter 2>/dev/null || pkill -x prometheus 2>/dev/null) || true
echo "install-system-deps: ok"
