#!/bin/sh
# sllm quantize on the bundled stories260K: output that sllm loads and that generates the same
# greedy text as llama2.c's for its start, metadata kept, per-tensor fallback, and bad input.
# usage: test_cli_quantize.sh SLLM_BINARY TESTS_DATA_DIR
set -u
sllm=$1
data=$2
model=$data/stories260K.gguf
. "$(dirname "$0")/cli_test_lib.sh"

for type in q8_0 q4_0; do
  expect_status 0 "quantize $type" "$sllm" quantize "$model" "$tmp/$type.gguf" "$type"
  # ffn_down rows are 172 wide: not whole blocks of 32, so they fall back to F16, said per tensor.
  grep -q "blk.0.ffn_down.weight.*F32 -> F16.*not whole blocks" "$tmp/out" ||
    fail "$type: the fallback of ffn_down is not reported"
  "$sllm" info "$tmp/$type.gguf" >"$tmp/info" 2>&1 || fail "$type: sllm info failed"
  want_ftype=7
  [ "$type" = q4_0 ] && want_ftype=2
  grep -q "general.file_type.*$want_ftype" "$tmp/info" || fail "$type: general.file_type is not $want_ftype"
  grep -q "tokenizer.ggml.tokens" "$tmp/info" || fail "$type: the vocabulary was not kept"
  # Greedy text from BOS: the first sentence is llama2.c's (quantization changes later words).
  "$sllm" generate -m "$tmp/$type.gguf" -n 16 --temp 0 >"$tmp/text" 2>/dev/null ||
    fail "$type: the quantized model does not generate"
  grep -q "^Once upon a time, there was a little girl named Lily." "$tmp/text" ||
    fail "$type: greedy text starts '$(head -c 60 "$tmp/text")'"
done

# Bad input.
expect_status 2 "unknown type" "$sllm" quantize "$model" "$tmp/x.gguf" q3_x
[ ! -e "$tmp/x.gguf" ] || fail "an unknown type left an output file"
cp "$model" "$tmp/in.gguf"
expect_status 1 "OUT equal to IN" "$sllm" quantize "$tmp/in.gguf" "$tmp/in.gguf" q8_0
cmp -s "$model" "$tmp/in.gguf" || fail "quantize changed its input"
expect_status 1 "missing input" "$sllm" quantize "$tmp/none.gguf" "$tmp/y.gguf" q8_0
[ ! -e "$tmp/y.gguf" ] || fail "a failed quantize left an output file"
expect_status 2 "missing TYPE" "$sllm" quantize "$model" "$tmp/z.gguf"

finish cli_quantize
