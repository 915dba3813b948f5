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
  # Debian's prometheus package starts its system service on install (a server on :9090 scraping itself), which
  # the tests do not use: they start their own Prometheus on free ports, and on a 2-core machine the service only
  # takes CPU. So the service this run's install started is stopped, and nothing else: only when this run installed
  # the package, and through the package's own service (invoke-rc.d: systemctl under systemd, else the init script,
  # which stops the daemon of its pidfile; where policy-rc.d kept the service from starting, it denies this too).
  # A Prometheus the user runs (the package installed before, one started by hand) is left alone: no kill by name.
  # --no-install-recommends leaves out prometheus-node-exporter, so there is no second service to stop.
  if [[ " ${need[*]} " == *" prometheus "* ]]; then
    $SUDO invoke-rc.d prometheus stop >/dev/null 2>&1 || true
  fi
fi
echo "install-system-deps: ok"
