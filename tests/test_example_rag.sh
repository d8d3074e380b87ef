#!/bin/sh
# examples/rag end to end on the bundled models (the tiny BERT embeds, stories260K answers): an
# index built, saved and loaded, the passage equal to the question retrieved first, an answer
# with its sources; and damaged or foreign index files refused with a clear error.
# usage: test_example_rag.sh RAG_BINARY TESTS_DATA_DIR
set -u
rag=$1
data=$2
bert=$data/fixtures/ref-embd/bert_tiny_mean.Q8_0.gguf
chat=$data/stories260K.gguf
. "$(dirname "$0")/cli_test_lib.sh"

mkdir -p "$tmp/docs/more"
printf 'The cat sat on the mat.\n\nCats purr when they are happy.\n' >"$tmp/docs/cats.txt"
printf '# Banks\n\nThe central bank raised interest rates on Tuesday.\n' >"$tmp/docs/more/banks.md"
printf 'Dogs love to play fetch in the park.\n' >"$tmp/docs/dogs.txt"
printf 'not indexed\n' >"$tmp/docs/skip.csv"
# Three words a passage: "The cat sat" / "on the mat." / "Cats purr when" / ...
expect_status 0 "index" "$rag" index -e "$bert" -d "$tmp/docs" -o "$tmp/index" --words 3
grep -q "passages of .* indexed" "$tmp/err" || fail "index: $(cat "$tmp/err")"
n=$(sed -n 's/^rag: \([0-9]*\) passages.*/\1/p' "$tmp/err")
[ "$n" = 11 ] || fail "index: $n passages, want 11 (.txt and .md files, 3 words each)"

# A question that is a passage's text: that passage first (cosine 1), then the answer, sources.
expect_status 0 "ask" "$rag" ask -e "$bert" -i "$tmp/index" -m "$chat" -q "Dogs love to" -k 2 -n 8
head -1 "$tmp/err" | grep -q '^\[1\] 1.000 dogs.txt: Dogs love to' || fail "ask: retrieved $(head -1 "$tmp/err")"
grep -q '^Sources: \[1\] dogs.txt \[2\] ' "$tmp/out" || fail "ask: no sources in $(cat "$tmp/out")"
[ "$(wc -c <"$tmp/out")" -gt 30 ] || fail "ask: no answer in $(cat "$tmp/out")"

# Damaged and foreign index files: exit status 1, and the message says what is wrong.
size=$(wc -c <"$tmp/index")
damaged() {  # NAME FILE WANTED_MESSAGE
  expect_status 1 "$1" "$rag" ask -e "$bert" -i "$2" -m "$chat" -q "cats"
  grep -q "$3" "$tmp/err" || fail "$1: $(cat "$tmp/err")"
}
head -c $((size - 9)) "$tmp/index" >"$tmp/truncated"
damaged "truncated" "$tmp/truncated" "damaged index: a vector at byte .* runs past the end"
head -c 24 "$tmp/index" >"$tmp/header_only"
damaged "header only" "$tmp/header_only" "damaged index: .* passages cannot fit"
cp "$tmp/index" "$tmp/flipped"
printf '\377' | dd of="$tmp/flipped" bs=1 seek=$((size - 20)) conv=notrunc 2>/dev/null
damaged "flipped byte" "$tmp/flipped" "the checksum does not match"
{ cat "$tmp/index"; printf 'x'; } >"$tmp/trailing"
damaged "trailing byte" "$tmp/trailing" "1 bytes after its end"
cp "$tmp/index" "$tmp/version"
printf '\002' | dd of="$tmp/version" bs=1 seek=8 conv=notrunc 2>/dev/null
damaged "version 2" "$tmp/version" "index version 2; this program reads version 1"
printf 'GGUF and more bytes here' >"$tmp/foreign"
damaged "foreign file" "$tmp/foreign" "is not an sllm RAG index"
damaged "missing file" "$tmp/none" "cannot open $tmp/none"
: >"$tmp/empty"
damaged "empty file" "$tmp/empty" "damaged index: the magic at byte 0 runs past the end"

# Bad input to index.
expect_status 1 "no folder" "$rag" index -e "$bert" -d "$tmp/nowhere" -o "$tmp/x"
grep -q "is not a folder" "$tmp/err" || fail "no folder: $(cat "$tmp/err")"
mkdir "$tmp/empty_docs"
expect_status 1 "no text" "$rag" index -e "$bert" -d "$tmp/empty_docs" -o "$tmp/x"
[ ! -e "$tmp/x" ] || fail "a failed index left a file"
expect_status 2 "no question" "$rag" ask -e "$bert" -i "$tmp/index" -m "$chat"

finish example_rag
