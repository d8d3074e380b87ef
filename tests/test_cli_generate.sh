#!/bin/sh
# sllm generate / tokenize / logits on the bundled stories260K model: llama2.c's greedy text,
# exact output formats, and bad input (each a one-line error and exit status 1, or 2 for usage).
# usage: test_cli_generate.sh SLLM_BINARY TESTS_DATA_DIR
set -u
sllm=$1
data=$2
model=$data/stories260K.gguf
expected=$data/fixtures/models/stories260K/expected
. "$(dirname "$0")/cli_test_lib.sh"

# Greedy text from BOS equals llama2.c's (its file ends with the newline run.c prints).
expect_status 0 "greedy from BOS" "$sllm" generate -m "$model" -n 256 --temp 0
printf '\n' >>"$tmp/out"
cmp -s "$tmp/out" "$expected/greedy_bos_n256.txt" || fail "greedy text from BOS differs from llama2.c's"
grep -q "generated 256 tokens" "$tmp/err" || fail "timing line missing on stderr: $(cat "$tmp/err")"

# With a prompt: stdout holds only the generated text.
expect_status 0 "greedy with a prompt" "$sllm" generate -m "$model" -p "Lily and Tom went to the park" \
  -n 53 --temp 0
{ printf 'Lily and Tom went to the park'; cat "$tmp/out"; printf '\n'; } >"$tmp/full"
cmp -s "$tmp/full" "$expected/greedy_prompt_lily_tom_n64.txt" || fail "greedy text after the prompt differs"

# Same seed, same text.
"$sllm" generate -m "$model" -p "Once upon a time" -n 40 --seed 7 >"$tmp/a" 2>/dev/null
"$sllm" generate -m "$model" -p "Once upon a time" -n 40 --seed 7 >"$tmp/b" 2>/dev/null
cmp -s "$tmp/a" "$tmp/b" || fail "the same seed gave different text"

# --parallel 3 --seed 7: completion 1 is the text of seed 7, completion 3 that of seed 9, each
# printed under its header (the batch decodes them together).
expect_status 0 "parallel completions" "$sllm" generate -m "$model" -p "Once upon a time" -n 40 \
  --seed 7 --parallel 3
"$sllm" generate -m "$model" -p "Once upon a time" -n 40 --seed 9 >"$tmp/c" 2>/dev/null
for i in 1 3; do
  seed=$((6 + i))
  awk -v h="--- completion $i (seed $seed," 'index($0, h) == 1 { on = 1; next } /^--- completion / { on = 0 } on' \
    "$tmp/out" >"$tmp/got$i"
done
[ "$(cat "$tmp/got1")" = "$(cat "$tmp/a")" ] || fail "--parallel completion 1 differs from seed 7 alone"
[ "$(cat "$tmp/got3")" = "$(cat "$tmp/c")" ] || fail "--parallel completion 3 differs from seed 9 alone"
grep -q "3 completions" "$tmp/err" || fail "--parallel summary missing: $(cat "$tmp/err")"

# --kv-type: f32 entries give llama2.c's greedy text too; q8_0 (int8) and its aliases run, also in
# a batch; an unknown type is a usage error naming the allowed ones.
expect_status 0 "--kv-type f32" "$sllm" generate -m "$model" -n 256 --temp 0 --kv-type f32
printf '\n' >>"$tmp/out"
cmp -s "$tmp/out" "$expected/greedy_bos_n256.txt" || fail "greedy text with F32 KV differs from llama2.c's"
for type in q8_0 q8 i8 int8 f16; do
  expect_status 0 "--kv-type $type" "$sllm" generate -m "$model" -p "Once upon a time" -n 16 \
    --temp 0 --kv-type "$type"
  [ -s "$tmp/out" ] || fail "--kv-type $type generated no text"
done
expect_status 0 "--kv-type q8_0 --parallel 2" "$sllm" generate -m "$model" -p "Once upon a time" \
  -n 16 --seed 3 --parallel 2 --kv-type q8_0
grep -q "2 completions" "$tmp/err" || fail "--kv-type q8_0 --parallel 2: $(cat "$tmp/err")"
expect_status 2 "unknown --kv-type" "$sllm" generate -m "$model" -p hi --kv-type q4_0
grep -q "unknown type 'q4_0'; use f16, q8_0 (int8; also q8, i8, int8) or f32" "$tmp/err" ||
  fail "the --kv-type error does not name the allowed types: $(cat "$tmp/err")"

# tokenize: run.c's ids for the prompt (with BOS), and without BOS.
expect_status 0 "tokenize" "$sllm" tokenize -m "$model" -p "Lily and Tom went to the park"
[ "$(cat "$tmp/out")" = "$(cat "$expected/greedy_prompt_lily_tom_n64.prompt_ids")" ] ||
  fail "tokenize printed '$(cat "$tmp/out")'"
expect_status 0 "tokenize --no-bos" "$sllm" tokenize -m "$model" -p "Lily" --no-bos
[ "$(cat "$tmp/out")" = "317" ] || fail "tokenize --no-bos printed '$(cat "$tmp/out")'"

# logits: n_ids x n_vocab float32.
expect_status 0 "logits" "$sllm" logits -m "$model" --ids 1,403,407 -o "$tmp/l.f32"
[ "$(wc -c <"$tmp/l.f32")" -eq $((3 * 512 * 4)) ] || fail "logits file has the wrong size"

# Bad input: exit 1 with one line naming the problem, no output file.
expect_status 1 "token id past the vocabulary" "$sllm" logits -m "$model" --ids 1,512 -o "$tmp/bad.f32"
grep -q "512" "$tmp/err" || fail "the token id error does not name the id: $(cat "$tmp/err")"
[ ! -e "$tmp/bad.f32" ] || fail "a failed logits run left its output file"
expect_status 1 "prompt past the context" "$sllm" generate -m "$model" -c 8 \
  -p "Lily and Tom went to the park to play with a ball"
grep -q "context" "$tmp/err" || fail "the context error does not say so: $(cat "$tmp/err")"
expect_status 1 "missing file" "$sllm" generate -m "$tmp/none.gguf" -p hi
[ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "a missing file gave more than one line"

# Damaged copies of the model: unknown architecture, missing tensor, shape against metadata.
patch() {  # patch OUT PERL_SUBSTITUTION
  perl -0777 -pe "$2" "$model" >"$1"
}
patch "$tmp/arch.gguf" 's/(general\.architecture\x08\x00\x00\x00\x05\x00{7})llama/$1llamx/'
expect_status 1 "unknown architecture" "$sllm" generate -m "$tmp/arch.gguf" -p hi
grep -q "llamx" "$tmp/err" || fail "the architecture error does not name it: $(cat "$tmp/err")"
patch "$tmp/tensor.gguf" 's/output_norm\.weight/output_norX.weight/'
expect_status 1 "missing tensor" "$sllm" generate -m "$tmp/tensor.gguf" -p hi
grep -q "output_norm.weight" "$tmp/err" || fail "the missing tensor is not named: $(cat "$tmp/err")"
patch "$tmp/shape.gguf" 's/(llama\.embedding_length\x04\x00\x00\x00)\x40\x00\x00\x00/$1\x48\x00\x00\x00/'
expect_status 1 "shape against metadata" "$sllm" generate -m "$tmp/shape.gguf" -p hi
grep -q "shape" "$tmp/err" || fail "the shape error does not say so: $(cat "$tmp/err")"

# Usage errors: exit 2.
expect_status 2 "missing -m" "$sllm" generate -p hi
expect_status 2 "unknown flag" "$sllm" generate -m "$model" --bogus
expect_status 2 "bad number" "$sllm" generate -m "$model" -n many
expect_status 2 "bad id list" "$sllm" logits -m "$model" --ids 1,x -o "$tmp/x.f32"
expect_status 0 "help" "$sllm" generate --help
grep -q "usage: sllm generate" "$tmp/out" || fail "generate --help printed no usage"

finish cli_generate
