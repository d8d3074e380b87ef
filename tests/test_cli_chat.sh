#!/bin/sh
# sllm chat with stdin a pipe, on the bundled stories260K model (which has no chat template; the
# "raw" format writes the conversation as one running text). Each answer must equal what
# `sllm generate` writes after the whole conversation so far, computed from scratch.
# usage: test_cli_chat.sh SLLM_BINARY TESTS_DATA_DIR
set -u
sllm=$1
model=$2/stories260K.gguf
. "$(dirname "$0")/cli_test_lib.sh"

# chat NAME INPUT ARGS...: runs sllm chat with INPUT on stdin; stdout/stderr to $tmp/out, $tmp/err.
chat() {
  name=$1 input=$2
  shift 2
  printf '%s' "$input" | "$sllm" chat -m "$model" "$@" >"$tmp/out" 2>"$tmp/err"
  status=$?
  [ "$status" -eq 0 ] || fail "$name: exit status $status ($(head -c 300 "$tmp/err"))"
}
# generate PROMPT_FILE OUT: greedy text after the prompt, from scratch.
generate() {
  "$sllm" generate -m "$model" -p "$(cat "$1")" -n 20 --temp 0 >"$2" 2>/dev/null ||
    fail "sllm generate failed"
}

# Two lines, two answers, each followed by a newline and nothing else (no prompts).
printf 'Once upon a time' >"$tmp/p1"
generate "$tmp/p1" "$tmp/a1"
{ cat "$tmp/p1" "$tmp/a1"; printf ' Lily went'; } >"$tmp/p2"
generate "$tmp/p2" "$tmp/a2"
{ cat "$tmp/a1"; echo; cat "$tmp/a2"; echo; } >"$tmp/want"
chat "two turns" 'Once upon a time
 Lily went
' --chat-template raw --temp 0 -n 20
cmp -s "$tmp/out" "$tmp/want" || fail "two turns: got '$(cat "$tmp/out")', want '$(cat "$tmp/want")'"
[ ! -s "$tmp/err" ] || fail "stderr is not quiet in a pipe: $(cat "$tmp/err")"

# /reset starts over: the first answer again. Empty lines are skipped.
{ cat "$tmp/a1"; echo; cat "$tmp/a1"; echo; } >"$tmp/want"
chat "/reset" 'Once upon a time

/reset
Once upon a time
' --chat-template raw --temp 0 -n 20
cmp -s "$tmp/out" "$tmp/want" || fail "/reset: got '$(cat "$tmp/out")'"

# /exit leaves at once; a last line without a newline is a message too.
{ cat "$tmp/a1"; echo; } >"$tmp/want"
chat "/exit" 'Once upon a time
/exit
 Lily went
' --chat-template raw --temp 0 -n 20
cmp -s "$tmp/out" "$tmp/want" || fail "/exit: got '$(cat "$tmp/out")'"
chat "no final newline" 'Once upon a time' --chat-template raw --temp 0 -n 20
cmp -s "$tmp/out" "$tmp/want" || fail "a last line without newline: got '$(cat "$tmp/out")'"

# --verbose: the speed of each answer on stderr.
chat "--verbose" 'Once upon a time
 Lily went
' --chat-template raw --temp 0 -n 20 --verbose
[ "$(grep -c 'tok/s' "$tmp/err")" -eq 2 ] || fail "--verbose: $(cat "$tmp/err")"

# After /reset the system prompt's whole blocks (16 tokens each) come from the prefix cache: the
# first answer computes all of its prompt, the second takes a block and computes the rest.
chat "prefix cache" 'Once upon a time
/reset
Once upon a time
' --chat-template raw --temp 0 -n 20 --verbose \
  --system 'Lily and Tom went to the park. They saw a big dog and a little cat.'
sed -n 1p "$tmp/err" | grep -q " 0 from the prefix cache" || fail "first answer: $(cat "$tmp/err")"
sed -n 2p "$tmp/err" | grep -q " 16 from the prefix cache" || fail "after /reset: $(cat "$tmp/err")"
[ "$(sed -n 1p "$tmp/out")" = "$(sed -n 2p "$tmp/out")" ] || fail "the answer after /reset differs"

# --kv-type: f32 entries answer as F16 ones do here; an unknown type is a usage error.
{ cat "$tmp/a1"; echo; } >"$tmp/want"
chat "--kv-type f32" 'Once upon a time
' --chat-template raw --temp 0 -n 20 --kv-type f32
cmp -s "$tmp/out" "$tmp/want" || fail "--kv-type f32: got '$(cat "$tmp/out")'"
"$sllm" chat -m "$model" --kv-type bf16 </dev/null >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] || fail "an unknown --kv-type did not exit with status 2"
grep -q "unknown type 'bf16'; use f16, q8_0" "$tmp/err" || fail "--kv-type error: $(cat "$tmp/err")"

# No template in the model: an explicit fallback to ChatML, with a warning.
chat "fallback" 'Hello
' --temp 0 -n 8
grep -q "no chat template.*using ChatML" "$tmp/err" || fail "no fallback warning: $(cat "$tmp/err")"

# Errors: a conversation past the context (exit 1), bad arguments (exit 2).
printf 'Lily and Tom went to the park to play with a ball\n' |
  "$sllm" chat -m "$model" --chat-template raw -c 8 >"$tmp/out" 2>"$tmp/err"
[ $? -eq 1 ] || fail "a message past the context did not exit with status 1"
grep -q "context" "$tmp/err" || fail "the context error does not say so: $(cat "$tmp/err")"
"$sllm" chat -m "$model" --chat-template llama9 </dev/null >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] || fail "an unknown template did not exit with status 2"
grep -q "unknown chat template 'llama9'; the known ones are chatml, llama2" "$tmp/err" ||
  fail "the template error does not list the names: $(cat "$tmp/err")"
"$sllm" chat </dev/null >/dev/null 2>&1
[ $? -eq 2 ] || fail "a missing -m did not exit with status 2"
"$sllm" chat --help >"$tmp/out" 2>&1 || fail "chat --help failed"
grep -q "usage: sllm chat" "$tmp/out" || fail "chat --help printed no usage"

finish cli_chat
