#!/usr/bin/env bash
# Refresh the vendored uPlot from its npm package: ES module build, CSS, licence, version.
#   web/vendor/refresh.sh            # the version in VERSION
#   web/vendor/refresh.sh 1.6.32     # another version (VERSION is updated)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:-$(cat "$here/VERSION")}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$version" >/dev/null && tar xzf uplot-*.tgz)
pkg="$tmp/package"
cp "$pkg/dist/uPlot.esm.js" "$here/uPlot.esm.js"
cp "$pkg/dist/uPlot.min.css" "$here/uPlot.min.css"
cp "$pkg/LICENSE" "$here/uPlot.LICENSE"
node -e 'process.stdout.write(require(process.argv[1]).version + "\n")' "$pkg/package.json" \
    > "$here/VERSION"
echo "uPlot $(cat "$here/VERSION") vendored into $here"
