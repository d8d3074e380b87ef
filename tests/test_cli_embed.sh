#!/bin/sh
# sllm embed on the bundled tiny BERT (Q8_0, mean pooling) and tiny llama: --no-normalize prints
# llama.cpp's vectors (ref-embd/, within its bounds) in each output format, normalized vectors
# have unit length, empty lines are empty texts, and bad input fails clearly.
# usage: test_cli_embed.sh SLLM_BINARY TESTS_DATA_DIR
set -u
sllm=$1
data=$2/fixtures/ref-embd
bert=$data/bert_tiny_mean.Q8_0.gguf
llama=$data/a_llama.F32.gguf
. "$(dirname "$0")/cli_test_lib.sh"

cat >"$tmp/texts" <<'EOF'
The cat sat on the mat.
A cat was sitting on the rug.
Dogs love to play fetch in the park.
My kitten sleeps on the sofa all afternoon.
Purring cats are unbelievably domesticated animals.
The central bank raised interest rates by 0.5% on Tuesday.
EOF

# The reference vectors: the F32 tensor [128, 6] that ends each reference file, one row a line.
ref_rows() { tail -c 3072 "$1" | od -An -v -tf4 -w512; }

# Compares rows of numbers (one vector a line) with the reference rows: per row cosine >= 0.9999
# and max |diff| <= 1e-3 * max |ref| (ref-embd/README.md).
check_rows() {  # NAME GOT_ROWS REF_ROWS
  awk -v name="$1" '
    NR == FNR { n_ref = FNR; for (i = 1; i <= NF; i++) ref[FNR, i] = $i; dims = NF; next }
    {
      n_got = FNR
      if (NF != dims) { printf "FAIL: %s: row %d has %d values, want %d\n", name, FNR, NF, dims; bad++; next }
      dot = 0; gg = 0; rr = 0; max_ref = 0; max_diff = 0
      for (i = 1; i <= NF; i++) {
        g = $i; r = ref[FNR, i]; dot += g * r; gg += g * g; rr += r * r
        if ((r < 0 ? -r : r) > max_ref) max_ref = (r < 0 ? -r : r)
        d = g - r; if ((d < 0 ? -d : d) > max_diff) max_diff = (d < 0 ? -d : d)
      }
      cosine = dot / sqrt(gg * rr)
      if (cosine < 0.9999 || max_diff > 1e-3 * max_ref) {
        printf "FAIL: %s: row %d: cosine %.6f, max|diff|/max|ref| %.2e\n", name, FNR, cosine, max_diff / max_ref
        bad++
      }
    }
    END {
      if (n_got != n_ref) { printf "FAIL: %s: %d rows, want %d\n", name, n_got, n_ref; bad++ }
      exit bad > 0
    }' "$3" "$2" || failures=$((failures + 1))
}

ref_rows "$data/bert_tiny_mean.Q8_0.embd.gguf" >"$tmp/ref_bert"
ref_rows "$data/a_llama.F32.mean.embd.gguf" >"$tmp/ref_llama"

# The default text output, --json and -o FILE: the same vectors.
expect_status 0 "text output" "$sllm" embed -m "$bert" -f "$tmp/texts" --no-normalize
sed 's/^embedding [0-9]*: //' "$tmp/out" >"$tmp/text_rows"
check_rows "text output" "$tmp/text_rows" "$tmp/ref_bert"
grep -q "6 texts embedded.*128 dimensions, mean pooling, not normalized" "$tmp/err" ||
  fail "statistics on stderr: $(cat "$tmp/err")"
expect_status 0 "json output" "$sllm" embed -m "$bert" -f "$tmp/texts" --no-normalize --json
head -c 2 "$tmp/out" | grep -q '^\[\[' || fail "--json does not start with [["
tr -d '[]' <"$tmp/out" | tr ',' ' ' | sed 's/^ *//' | grep -v '^$' >"$tmp/json_rows"
check_rows "json output" "$tmp/json_rows" "$tmp/ref_bert"
expect_status 0 "binary output" "$sllm" embed -m "$bert" -f "$tmp/texts" --no-normalize \
  -o "$tmp/out.f32"
od -An -v -tf4 -w512 "$tmp/out.f32" >"$tmp/f32_rows"
check_rows "binary output" "$tmp/f32_rows" "$tmp/ref_bert"
# One text at a time, and from standard input: the same again.
expect_status 0 "one text per pass" sh -c "'$sllm' embed -m '$bert' -f - --no-normalize -b 1 <'$tmp/texts'"
sed 's/^embedding [0-9]*: //' "$tmp/out" >"$tmp/b1_rows"
check_rows "-b 1" "$tmp/b1_rows" "$tmp/ref_bert"
# A decoder with a pooling choice.
expect_status 0 "llama, mean" "$sllm" embed -m "$llama" -f "$tmp/texts" --pooling mean --no-normalize
sed 's/^embedding [0-9]*: //' "$tmp/out" >"$tmp/llama_rows"
check_rows "llama mean" "$tmp/llama_rows" "$tmp/ref_llama"

# Normalized by default: unit length.
expect_status 0 "normalized" "$sllm" embed -m "$bert" -f "$tmp/texts"
sed 's/^embedding [0-9]*: //' "$tmp/out" |
  awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i * $i; if (s < 0.9999 || s > 1.0001) bad++ }
       END { exit bad > 0 }' || fail "normalized vectors are not of unit length"

# Lines: a final newline ends the last line; an empty line is an empty text ([CLS] [SEP]).
printf 'a\n\nb\n' >"$tmp/three"
expect_status 0 "empty line" "$sllm" embed -m "$bert" -f "$tmp/three"
[ "$(wc -l <"$tmp/out")" -eq 3 ] || fail "a\\n\\nb\\n gave $(wc -l <"$tmp/out") vectors, want 3"
sed -n 2p "$tmp/out" | sed 's/^embedding 1: //' >"$tmp/empty_in_file"
printf '\n' >"$tmp/one_empty"
expect_status 0 "empty text" "$sllm" embed -m "$bert" -f "$tmp/one_empty"
sed 's/^embedding 0: //' "$tmp/out" >"$tmp/empty_alone"
# (Equal up to float rounding: a batch of 6 tokens and one of 2 take different matmul kernels.)
paste -d '\n' "$tmp/empty_in_file" "$tmp/empty_alone" |
  awk 'NR == 1 { for (i = 1; i <= NF; i++) a[i] = $i; next }
       { for (i = 1; i <= NF; i++) if ((a[i] - $i > 1e-5) || ($i - a[i] > 1e-5)) bad++; if (NF < 128) bad++ }
       END { exit bad > 0 }' || fail "the empty line's vector differs from an empty text's"
printf 'a\nb' >"$tmp/no_final_newline"
expect_status 0 "no final newline" "$sllm" embed -m "$bert" -f "$tmp/no_final_newline"
[ "$(wc -l <"$tmp/out")" -eq 2 ] || fail "a\\nb gave $(wc -l <"$tmp/out") vectors, want 2"

# Bad input.
expect_status 1 "missing input file" "$sllm" embed -m "$bert" -f "$tmp/none.txt"
grep -q "cannot open $tmp/none.txt" "$tmp/err" || fail "missing file: $(cat "$tmp/err")"
expect_status 1 "missing model" "$sllm" embed -m "$tmp/none.gguf" -p a
: >"$tmp/empty_file"
expect_status 1 "empty file" "$sllm" embed -m "$bert" -f "$tmp/empty_file"
grep -q "no lines" "$tmp/err" || fail "empty file: $(cat "$tmp/err")"
expect_status 1 "decoder without --pooling" "$sllm" embed -m "$llama" -p a
grep -q "choose mean, cls or last" "$tmp/err" || fail "no pooling: $(cat "$tmp/err")"
long=$(awk 'BEGIN { for (i = 0; i < 600; i++) printf "cat "; }')
expect_status 1 "line too long" "$sllm" embed -m "$bert" -p "a
$long"
grep -q "text 1 (counting from 0) has 602 tokens, more than the 512 positions" "$tmp/err" ||
  fail "too long: $(cat "$tmp/err")"
expect_status 2 "both -p and -f" "$sllm" embed -m "$bert" -p a -f "$tmp/texts"
expect_status 2 "neither -p nor -f" "$sllm" embed -m "$bert"
expect_status 2 "-o and --json" "$sllm" embed -m "$bert" -p a -o "$tmp/x.f32" --json
expect_status 2 "bad pooling" "$sllm" embed -m "$bert" -p a --pooling max
expect_status 2 "-b 0" "$sllm" embed -m "$bert" -p a -b 0

finish cli_embed
