#!/bin/sh
# sllm bench on the bundled stories260K model: the table and JSON lines llama-bench prints, the KV
# entry type among them, and usage errors (exit status 2).
# usage: test_cli_bench.sh SLLM_BINARY TESTS_DATA_DIR
set -u
sllm=$1
model=$2/stories260K.gguf
. "$(dirname "$0")/cli_test_lib.sh"

# The default table: pp and tg rows, no KV columns (F16 is the default, as llama-bench omits
# defaults).
expect_status 0 "table" "$sllm" bench -m "$model" -p 16 -n 4 -r 2 -t 1
grep -q "^| model | size | params | threads | test | t/s |$" "$tmp/out" ||
  fail "table header: $(cat "$tmp/out")"
grep -q "| pp16 | " "$tmp/out" || fail "no pp16 row: $(cat "$tmp/out")"
grep -q "| tg4 | " "$tmp/out" || fail "no tg4 row: $(cat "$tmp/out")"

# --kv-type q8_0: the type in the table and in JSON.
expect_status 0 "--kv-type q8_0" "$sllm" bench -m "$model" -p 16 -n 4 -r 1 -t 1 --kv-type q8_0
grep -q "| 1 | q8_0 | q8_0 | pp16 | " "$tmp/out" || fail "--kv-type q8_0 table: $(cat "$tmp/out")"
expect_status 0 "json" "$sllm" bench -m "$model" -p 16 -n 0 -r 1 -t 1 -o json --kv-type i8
grep -q '"type_k": "q8_0", "type_v": "q8_0", "test": "pp16"' "$tmp/out" ||
  fail "json: $(cat "$tmp/out")"
[ "$(grep -c '"test"' "$tmp/out")" -eq 1 ] || fail "-n 0 did not skip tg: $(cat "$tmp/out")"

# Usage errors.
expect_status 2 "unknown --kv-type" "$sllm" bench -m "$model" --kv-type f8
grep -q "unknown type 'f8'" "$tmp/err" || fail "--kv-type error: $(cat "$tmp/err")"
expect_status 2 "bad format" "$sllm" bench -m "$model" -o csv
expect_status 2 "missing -m" "$sllm" bench

finish cli_bench
