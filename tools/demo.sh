#!/usr/bin/env bash
# The main job on the model that ships in models/ (no download): describe it, convert it between formats.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-venv.sh quant
E=.venv/bin/entrenar
OUT=demo-output
rm -rf "$OUT"; mkdir -p "$OUT"
set -x
$E info models/tiny-llama --tensors
$E convert models/tiny-llama/model.safetensors "$OUT/tiny-llama.yaml"
$E convert "$OUT/tiny-llama.yaml" "$OUT/tiny-llama.json.gz"
$E convert "$OUT/tiny-llama.json.gz" "$OUT/roundtrip.safetensors"
$E info "$OUT/roundtrip.safetensors"
{ set +x; } 2>/dev/null
echo "demo finished: outputs in $OUT/"
