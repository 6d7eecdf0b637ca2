#!/usr/bin/env bash
# Build the console's job viewer bundle: NiiVue from the npm registry (version pinned by viewer/package-lock.json)
# copied into node/static/viewer/ with its licence and the licences of what it bundles. The result is committed,
# so a clone or a wheel works without npm and nothing is fetched at run time (no CDN).
# Usage: bash scripts/build_viewer.sh            (needs npm and the registry, only here)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$ROOT/viewer"
OUT="$ROOT/node/static/viewer"
command -v npm >/dev/null || { echo "build_viewer: npm is not installed (apt-get install -y npm)" >&2; exit 1; }
cd "$SRC"
npm ci --no-audit --no-fund --ignore-scripts
NV="$SRC/node_modules/@niivue/niivue"
VERSION="$(node -p "require('$NV/package.json').version")"
mkdir -p "$OUT"
# dist/index.js is NiiVue's self-contained ES module (its dependencies are inlined; no imports, no workers)
cp "$NV/dist/index.js" "$OUT/niivue.js"
{
  echo "This folder bundles NiiVue $VERSION (https://github.com/niivue/niivue), BSD-2-Clause, and the packages"
  echo "it inlines. Their licences follow."
  echo
  echo "==== @niivue/niivue $VERSION (BSD-2-Clause) ===="
  cat "$SRC/LICENSE-niivue.txt"
  for dep in "$SRC"/node_modules/*/ "$SRC"/node_modules/@*/*/; do
    name="${dep#"$SRC"/node_modules/}"; name="${name%/}"
    [ "$name" = "@niivue/niivue" ] && continue
    case "$name" in @rollup/*) continue ;; esac  # a build tool of NiiVue's, not in the bundle
    lic="$(ls "$dep" | grep -i -m1 '^licen[cs]e' || true)"
    [ -n "$lic" ] || continue
    v="$(node -p "require('$dep/package.json').version")"
    echo
    echo "==== $name $v ===="
    cat "$dep/$lic"
  done
} > "$OUT/LICENSES.txt"
echo "$VERSION" > "$OUT/NIIVUE_VERSION"
echo "build_viewer: NiiVue $VERSION -> $OUT ($(du -k "$OUT/niivue.js" | cut -f1) KB)"
