#!/usr/bin/env bash
# Re-vendor Swagger UI from the npm registry into the package (needs npm on the
# machine that updates it; users and CI never run this).
set -euo pipefail
version="${1:?usage: $0 <swagger-ui-dist version>}"
target="$(dirname "$0")/../services/healthscore/api/static/vendor/swagger-ui"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "swagger-ui-dist@$version" --silent >/dev/null && tar xzf ./*.tgz)
sha256sum "$work"/*.tgz
for file in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
  cp "$work/package/$file" "$target/$file"
done
echo "vendored swagger-ui-dist $version into $target; update VENDORED.md"
