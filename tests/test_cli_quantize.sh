#!/bin/sh
# sllm quantize on the bundled stories260K: output that sllm loads and that generates the same
# greedy text as llama2.c's for its start, metadata kept, general.file_type, the per-tensor
# types and fallbacks of the mixes with ggml's sizes, and bad input.
# usage: test_cli_quantize.sh SLLM_BINARY TESTS_DATA_DIR
set -u
sllm=$1
data=$2
model=$data/stories260K.gguf
. "$(dirname "$0")/cli_test_lib.sh"

for type in q8_0 q4_0 q5_0 q4_k_m q4_k_s q6_k; do
  expect_status 0 "quantize $type" "$sllm" quantize "$model" "$tmp/$type.gguf" "$type"
  # ffn_down rows are 172 wide: not whole blocks of 32, so they fall back to F16, said per tensor.
  grep -q "blk.0.ffn_down.weight.*F32 -> F16.*not whole blocks" "$tmp/out" ||
    fail "$type: the fallback of ffn_down is not reported"
  "$sllm" info "$tmp/$type.gguf" >"$tmp/info" 2>&1 || fail "$type: sllm info failed"
  case $type in  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
    q8_0) want_ftype=7 ;;
    q4_0) want_ftype=2 ;;
    q5_0) want_ftype=8 ;;
    q4_k_m) want_ftype=15 ;;
    q4_k_s) want_ftype=14 ;;
    q6_k) want_ftype=18 ;;
  esac
  grep -q "general.file_type  *UINT32  *$want_ftype\$" "$tmp/info" ||
    fail "$type: general.file_type is not $want_ftype"
  grep -q "tokenizer.ggml.tokens" "$tmp/info" || fail "$type: the vocabulary was not kept"
  # Greedy text from BOS: the first sentence is llama2.c's (quantization changes later words).
  "$sllm" generate -m "$tmp/$type.gguf" -n 16 --temp 0 >"$tmp/text" 2>/dev/null ||
    fail "$type: the quantized model does not generate"
  grep -q "^Once upon a time, there was a little girl named Lily." "$tmp/text" ||
    fail "$type: greedy text starts '$(head -c 60 "$tmp/text")'"
done

# The K-quant mixes on rows of 64 (not whole super-blocks of 256): Q4_K falls back to Q5_0 and
# Q6_K to Q8_0 (rows of 32s), each reported. q4_k_m wants Q6_K for the output and for attn_v and
# ffn_down in layers 2 and 4 of 5 (llama.cpp's rule: the last eighth and every third layer).
expect_status 0 "quantize q4_k_m" "$sllm" quantize "$model" "$tmp/km.gguf" q4_k_m
for line in "blk.0.attn_q.weight .*F32 -> Q5_0 .*rows of 64 are not whole super-blocks of 256: Q5_0 for Q4_K" \
  "blk.2.attn_v.weight .*F32 -> Q8_0 .*rows of 64 are not whole super-blocks of 256: Q8_0 for Q6_K" \
  "blk.3.attn_v.weight .*F32 -> Q5_0 " "output.weight .*F32 -> Q8_0 .*Q8_0 for Q6_K" \
  "blk.4.ffn_down.weight .*F32 -> F16 .*rows of 172 are not whole blocks of 32: F16 for Q6_K" \
  "^37 of 37 weight matrices fell back to another type"; do
  grep -q "$line" "$tmp/out" || fail "q4_k_m: no line '$line' in the report"
done
# Types and sizes as ggml computes them: Q5_0 22 bytes per 32 values, Q8_0 34, F16 2 per value.
"$sllm" info "$tmp/km.gguf" >"$tmp/info" 2>&1 || fail "q4_k_m: sllm info failed"
for line in "token_embd.weight  *Q5_0  *\[64, 512\]  *22528$" "output_norm.weight  *F32  *\[64\]  *256$" \
  "output.weight  *Q8_0  *\[64, 512\]  *34816$" "blk.0.attn_v.weight  *Q5_0  *\[64, 32\]  *1408$" \
  "blk.2.attn_v.weight  *Q8_0  *\[64, 32\]  *2176$" "blk.4.attn_v.weight  *Q8_0  *\[64, 32\]  *2176$" \
  "blk.2.ffn_down.weight  *F16  *\[172, 64\]  *22016$" "blk.3.ffn_up.weight  *Q5_0  *\[64, 172\]  *7568$"; do
  grep -q "^  $line" "$tmp/info" || fail "q4_k_m: no tensor line '$line' in sllm info"
done

# Bad input.
expect_status 2 "unknown type" "$sllm" quantize "$model" "$tmp/x.gguf" q3_x
[ ! -e "$tmp/x.gguf" ] || fail "an unknown type left an output file"
grep -q "unknown quantization type 'q3_x' (known: q8_0, q4_0, q5_0, q2_k, q3_k_s, q3_k_m, q3_k, q3_k_l, q4_k_m, q4_k, q4_k_s, q5_k_m, q5_k, q5_k_s, q6_k)" "$tmp/err" ||
  fail "unknown type: the message does not list the known types ($(cat "$tmp/err"))"
cp "$model" "$tmp/in.gguf"
expect_status 1 "OUT equal to IN" "$sllm" quantize "$tmp/in.gguf" "$tmp/in.gguf" q8_0
cmp -s "$model" "$tmp/in.gguf" || fail "quantize changed its input"
expect_status 1 "missing input" "$sllm" quantize "$tmp/none.gguf" "$tmp/y.gguf" q8_0
[ ! -e "$tmp/y.gguf" ] || fail "a failed quantize left an output file"
expect_status 2 "missing TYPE" "$sllm" quantize "$model" "$tmp/z.gguf"

finish cli_quantize
