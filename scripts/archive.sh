#!/usr/bin/env bash
# Archives each binary that `deno task compile:all` left in dist/<target>/, with its checksum, into
# dist/release/: switchyard-<tag>-<target>.tar.gz (.zip for Windows, whose users have no tar by habit),
# <archive>.sha256 in `sha256sum --check` form, and SHA256SUMS with them all. The release workflow runs it.
#
#   scripts/archive.sh v0.1.0
set -euo pipefail
tag=${1:?usage: scripts/archive.sh TAG, e.g. v0.1.0}
cd "$(dirname "$0")/.."
out=dist/release
rm -rf "$out"
mkdir -p "$out"
count=0
for dir in dist/*/; do
  target=$(basename "$dir")
  [ "$target" = release ] && continue
  name="switchyard-$tag-$target"
  if [ -f "$dir/switchyard.exe" ]; then
    archive="$name.zip"
    (cd "$dir" && zip -q -X "../release/$archive" switchyard.exe)
  elif [ -f "$dir/switchyard" ]; then
    archive="$name.tar.gz"
    tar --owner=0 --group=0 --numeric-owner -C "$dir" -czf "$out/$archive" switchyard
  else
    continue
  fi
  (cd "$out" && sha256sum "$archive" >"$archive.sha256")
  count=$((count + 1))
done
if [ "$count" = 0 ]; then
  echo "archive: no binary in dist/<target>/; run deno task compile:all first" >&2
  exit 1
fi
(cd "$out" && cat ./*.sha256 >SHA256SUMS)
echo "archive: $count archives in $out"
ls -l "$out"
