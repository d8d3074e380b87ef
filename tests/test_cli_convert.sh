#!/bin/sh
# `sllm convert` on the bundled Hugging Face checkpoint: the output loads and generates llama2.c's
# text; each mistake exits with its status and one line, and leaves no file behind.
# usage: test_cli_convert.sh SLLM CHECKPOINT_DIR
set -u
sllm=$1
checkpoint=$2
. "$(dirname "$0")/cli_test_lib.sh"
work=$tmp
err=$work/stderr

out=$("$sllm" convert "$checkpoint" -o "$work/s.gguf" 2>"$err") ||
  fail "sllm convert exited with $? ($(cat "$err"))"
case $out in
  "wrote $work/s.gguf: llama, 47 tensors, F32 matrices, "*", 512 tokens") ;;
  *) fail "sllm convert printed '$out'" ;;
esac
[ -s "$err" ] && fail "sllm convert wrote to stderr, not a terminal: $(cat "$err")"
"$sllm" info "$work/s.gguf" | grep -q "llama.attention.head_count_kv  *UINT32  *4" ||
  fail "the converted file lacks its hyperparameters"
text=$("$sllm" generate -m "$work/s.gguf" --temp 0 -n 15 2>/dev/null) ||
  fail "sllm generate on the converted file exited with $?"
[ "$text" = "Once upon a time, there was a little girl named Lily." ] ||
  fail "the converted file generates '$text'"

"$sllm" convert "$checkpoint" -o "$work/v.gguf" --vocab-only --type f16 >/dev/null ||
  fail "--vocab-only exited with $?"
"$sllm" info "$work/v.gguf" | grep -q "tensors: 0" || fail "--vocab-only wrote tensors"

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
expect 2 "sllm convert: option --type: 'q4_0' is not a type (f32, f16, bf16 or auto)" \
  "$sllm" convert "$checkpoint" -o "$work/x.gguf" --type q4_0
expect 2 "sllm convert: missing -o OUT.gguf" "$sllm" convert "$checkpoint"
expect 2 "sllm convert: missing DIR" "$sllm" convert -o "$work/x.gguf"
expect 2 "sllm convert: unknown option '--bogus'" "$sllm" convert "$checkpoint" --bogus
expect 1 "sllm: error: cannot open the folder '$work/none'" \
  "$sllm" convert "$work/none" -o "$work/x.gguf"
mkdir "$work/ckpt"
cp "$checkpoint"/config.json "$checkpoint"/tokenizer* "$checkpoint"/model.safetensors "$work/ckpt/"
expect 1 "sllm: error: refusing to write '$work/ckpt/model.safetensors': it is the input file" \
  "$sllm" convert "$work/ckpt" -o "$work/ckpt/model.safetensors"
cmp -s "$checkpoint/model.safetensors" "$work/ckpt/model.safetensors" ||
  fail "the refused conversion changed its input"
head -c 100000 "$checkpoint/model.safetensors" >"$work/ckpt/model.safetensors"
expect 1 "sllm: error: $work/ckpt/model.safetensors: tensor '" \
  "$sllm" convert "$work/ckpt" -o "$work/x.gguf"
[ -e "$work/x.gguf" ] && fail "a failed conversion left $work/x.gguf"
for f in "$work"/*.tmp.* "$work"/ckpt/*.tmp.*; do
  [ -e "$f" ] && fail "a failed conversion left $f"
done

help=$("$sllm" convert --help) || fail "sllm convert --help exited with $?"
case $help in
  *"usage: sllm convert"*) ;;
  *) fail "sllm convert --help printed no usage" ;;
esac
"$sllm" --help | grep -q "^  convert " || fail "sllm --help does not list convert"

finish cli_convert
