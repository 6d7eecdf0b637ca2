#!/usr/bin/env bash
# Installs everything TotalRegistrator Node needs on a fresh Debian machine (Python 3.11, no GPU):
# the PACS and DICOM tools used by the tests, PostgreSQL, Chromium, the CPU build of torch and the package itself.
# Idempotent: what is present is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
pkgs=()
[ -x /usr/sbin/Orthanc ] || pkgs+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || pkgs+=(orthanc-dicomweb)
[ -x /usr/bin/storescu ] || pkgs+=(dcmtk)
[ -x /usr/bin/dciodvfy ] || pkgs+=(dicom3tools)
command -v pg_ctlcluster >/dev/null 2>&1 || pkgs+=(postgresql)
[ -x /usr/bin/chromium ] || pkgs+=(chromium)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${pkgs[*]}"
  $SUDO apt-get update -q
  # policy-rc.d may forbid starting services in containers; the tests start their own servers.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi
PY=${PYTHON:-python3}
# The CPU build of torch first (a plain 'torch' would pull a multi-GB CUDA build).
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e '.[test]'
# The console's viewer bundle (NiiVue from npm) is committed; build it only when it is missing.
if [ ! -s node/static/viewer/niivue.js ]; then
  command -v npm >/dev/null 2>&1 || { $SUDO apt-get update -q; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm; }
  bash scripts/build_viewer.sh
fi
echo "install.sh: done"
