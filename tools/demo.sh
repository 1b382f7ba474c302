#!/usr/bin/env bash
# The main job on the models that ship in models/ (no download): describe the model, convert it,
# merge its three fine-tuned variants, quantize the merge to GGUF files that llama.cpp runs (and JSON; and merged and
# quantized in one pass), and read it back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-venv.sh quant
E=.venv/bin/entrenar
OUT=demo-output
rm -rf "$OUT"; mkdir -p "$OUT"
set -x
$E info models/tiny-llama --tensors
$E convert models/tiny-llama/model.safetensors "$OUT/tiny-llama.yaml"
$E convert "$OUT/tiny-llama.yaml" "$OUT/roundtrip.safetensors"
$E merge models/tiny-llama-a models/tiny-llama-b models/tiny-llama-c --base models/tiny-llama \
    --method ties --density 0.5 --output "$OUT/merged-ties"
$E merge models/tiny-llama-a models/tiny-llama-b models/tiny-llama-c --base models/tiny-llama \
    --method dare --density 0.5 --seed 0 --output "$OUT/merged-dare.safetensors"
$E merge models/tiny-llama-a models/tiny-llama-b --method slerp --t 0.3 --output "$OUT/merged-slerp.safetensors"
$E info "$OUT/merged-ties"
$E quantize "$OUT/merged-ties" --bits 4 --method symmetric --report --output "$OUT/merged-q4_0.gguf"   # llama.cpp runs it
$E quantize "$OUT/merged-ties" --type Q8_0 --output "$OUT/merged-q8_0.gguf"
$E info "$OUT/merged-q4_0.gguf"
$E quantize "$OUT/merged-ties" --bits 8 --method symmetric --output "$OUT/merged-q8_0.json"
$E merge models/tiny-llama-a models/tiny-llama-b models/tiny-llama-c --base models/tiny-llama \
    --method ties --density 0.5 --type q4_k_m --check --output "$OUT/merged-ties-q4_k_m.gguf"   # merge + quantize in one pass
$E dequantize "$OUT/merged-q4_0.gguf" --output "$OUT/merged-q4_0-dequantized.safetensors"
$E info "$OUT/merged-q4_0-dequantized.safetensors"
{ set +x; } 2>/dev/null
ls -la "$OUT"
echo "demo finished: outputs in $OUT/"
