#!/usr/bin/env bash
# Lint the Dockerfile: dockerfile_lint (npm) with the project's rules, then
# the per-stage rules it cannot express (its rules count instructions over
# the whole file): every runtime stage, that is every stage not named
# build*, runs as a non-root USER and has a HEALTHCHECK.
#
#   scripts/lint-dockerfile.sh [DOCKERFILE]
#   REQUIRE_DIGESTS=1 scripts/lint-dockerfile.sh   # a release: every base image pinned by digest
#
# Runtime stages must also name their USER by number (Kubernetes'
# runAsNonRoot cannot check a name) with group 0 (OpenShift's arbitrary
# UIDs write through the group).
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-Dockerfile}
npx --yes dockerfile_lint@0.3.4 -f "$file" -r deploy/dockerfile-lint-rules.yaml
awk '
  function check() {
    if (stage == "" || stage ~ /^build/) return
    if (!user) { printf "%s: stage %s has no USER (runtime stages run as non-root)\n", FILENAME, stage; bad = 1 }
    if (root)  { printf "%s: stage %s ends as USER root\n", FILENAME, stage; bad = 1 }
    if (!health) { printf "%s: stage %s has no HEALTHCHECK\n", FILENAME, stage; bad = 1 }
  }
  toupper($1) == "FROM" {
    check()
    stage = "(unnamed, line " NR ")"
    for (i = 2; i < NF; i++) if (toupper($i) == "AS") stage = $(i + 1)
    user = 0; root = 0; health = 0; n++
  }
  toupper($1) == "USER" {
    user = 1; root = ($2 == "root" || $2 ~ /^0(:|$)/)
    if (stage !~ /^build/ && $2 !~ /^[0-9]+:0$/) { printf "%s: stage %s: USER %s is not UID:0 (numeric, group 0)\n", FILENAME, stage, $2; bad = 1 }
  }
  toupper($1) == "HEALTHCHECK" { health = 1 }
  END { check(); if (bad) exit 1; printf "%s: %d stages, runtime stages run as non-root with a health check\n", FILENAME, n }
' "$file"
if [ "${REQUIRE_DIGESTS:-}" = 1 ]; then
  unpinned=$(grep -E '^ARG [A-Z_]+_IMAGE=' "$file" | grep -v '@sha256:[0-9a-f]\{64\}' || true)
  if [ -n "$unpinned" ]; then
    printf '%s: base images not pinned by digest:\n%s\n' "$file" "$unpinned"
    exit 1
  fi
fi
