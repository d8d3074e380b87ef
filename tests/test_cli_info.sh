#!/bin/sh
# `sllm info` on the bundled model, and the exit status and one-line message of each mistake.
# usage: test_cli_info.sh SLLM MODEL
set -u
sllm=$1
model=$2
. "$(dirname "$0")/cli_test_lib.sh"
err=$tmp/stderr

out=$("$sllm" info "$model") || fail "sllm info exited with $?"
# 292800 parameters = 2 * 512*64 (embeddings, output) + 64 (final norm)
#   + 5 layers * (2 * 64*64 + 2 * 64*32 + 2 * 64 + 3 * 64*172)
for want in "GGUF version  3" "architecture  llama" "alignment     32" \
  "llama.block_count " "UINT32" "STRING[512]" '["<unk>", "<s>", "</s>"' "(512 in all)" \
  "tensors: 48" "token_embd.weight" "[64, 512]" "131072" "[172, 64]" \
  "parameters    292.8 K (292800)" "(1185376 bytes)" "4.0000 bytes (32.00 bits)"; do
  case $out in
    *"$want"*) ;;
    *) fail "sllm info output lacks '$want'" ;;
  esac
done

# expect STATUS MESSAGE-START COMMAND...: the status, and one line on stderr starting so.
expect() {
  want_status=$1
  want_message=$2
  shift 2
  "$@" >/dev/null 2>"$err"
  status=$?
  [ "$status" -eq "$want_status" ] || fail "'$*' exited with $status, expected $want_status"
  lines=$(wc -l <"$err")
  [ "$lines" -eq 1 ] || fail "'$*' wrote $lines lines to stderr, expected 1"
  case $(cat "$err") in
    "$want_message"*) ;;
    *) fail "'$*' said '$(cat "$err")', expected '$want_message...'" ;;
  esac
}
expect 1 "sllm: error: cannot open 'missing.gguf': No such file or directory" \
  "$sllm" info missing.gguf
expect 1 "sllm: error: $0: offset 0: not a GGUF file" "$sllm" info "$0"
expect 2 "sllm info: unknown option '--bogus' (see 'sllm info --help')" \
  "$sllm" info --bogus "$model"
expect 2 "sllm info: missing FILE" "$sllm" info
expect 2 "sllm info: unexpected argument 'second.gguf'" "$sllm" info "$model" second.gguf
expect 2 "sllm info: option --array-items: 'x' is not a valid integer" \
  "$sllm" info -a x "$model"
expect 2 "sllm info: option -a needs a value" "$sllm" info "$model" -a
expect 2 "sllm: unknown command 'bogus' (see 'sllm --help')" "$sllm" bogus
expect 2 "sllm: unknown option '--bogus'" "$sllm" --bogus
expect 2 "sllm: missing command" "$sllm"

for args in "--help" "help" "info --help"; do
  # shellcheck disable=SC2086
  help=$("$sllm" $args) || fail "sllm $args exited with $?"
  case $help in
    *"usage: sllm"*) ;;
    *) fail "sllm $args printed no usage" ;;
  esac
done
"$sllm" info -a 2 "$model" | grep -q '\["<unk>", "<s>", \.\.\. (512 in all)\]' ||
  fail "sllm info -a 2 does not cut arrays after 2 elements"

finish cli_info
