#!/usr/bin/env bash
# What a CI job runs to build a Cargo project with kiln, the same on GitHub
# Actions (github-actions.yml) and GitLab CI (gitlab-ci.yml):
#
#   KILN_CACHE            the cache's URL, e.g. https://cache.example.org/main
#   KILN_CACHE_KEY        the cache's public signing key ("name:base64")
#   KILN_TOKEN            optional: a write token (a CI secret). With it, every
#                         unit this job builds is pushed as soon as it is built;
#                         without it (e.g. for forks' pull requests) the job only reads.
#   KILN_SECRET_KEY_FILE  optional: sign what is pushed (else the server signs
#                         uploads with its own key, if it is configured to)
#
# Any arguments go to `cargo kiln build` (e.g. --release, -p NAME).
set -euo pipefail
: "${KILN_CACHE:?set KILN_CACHE to the cache URL}"
: "${KILN_CACHE_KEY:?set KILN_CACHE_KEY to the cache public key}"

# Trust the cache: a substituter and its key in kiln's config file.
kiln use "$KILN_CACHE" --key "$KILN_CACHE_KEY"

push=()
if [ -n "${KILN_TOKEN:-}" ]; then
  # kiln reads the token from the environment; it is never printed.
  push=(--push-to "$KILN_CACHE")
fi
cargo kiln build --locked "${push[@]}" "$@"
