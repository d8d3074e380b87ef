#!/usr/bin/env bash
# Writes include/sllm.h, the one header users copy, from the parts in include/sllm/.
#   tools/amalgamate.sh           rewrite include/sllm.h
#   tools/amalgamate.sh --check   exit 1 if the committed include/sllm.h is stale
#
# Each layer has up to three parts: NAME.h (declarations), NAME_simd.h (Highway code,
# compiled once per SIMD target) and NAME_impl.h (compiled once, behind SLLM_IMPLEMENTATION).
# The single header lists all declarations first, then the SIMD code, then the implementation,
# each in layer order, so every layer sees only the layers below it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
parts="$root/include/sllm"
layers="base file gguf quant kernels matmul_q kv model unicode_tables tokenizer sampling session chat embed"

emit_section() {  # $1 = suffix
  for layer in $layers; do
    f="$parts/$layer$1.h"
    [ -f "$f" ] || continue
    printf '\n// ---- %s ----\n' "$(basename "$f")"
    cat "$f"
  done
}

generate() {
  cat "$parts/preamble.txt"
  printf '#ifndef SLLM_H_\n#define SLLM_H_\n'
  emit_section ""
  printf '\n#endif  // SLLM_H_\n\n'
  cat <<'HDR'
#ifdef SLLM_IMPLEMENTATION
// Highway compiles the SIMD section once per target by including this file again, so the
// directory holding sllm.h must be on the include path (or define SLLM_SELF_INCLUDE).
#ifndef SLLM_HWY_SETUP_
#define SLLM_HWY_SETUP_
#ifndef SLLM_SELF_INCLUDE
#define SLLM_SELF_INCLUDE "sllm.h"
#endif
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL  // Highway 1.0.3 compiles the AVX-512 VNNI target only when asked
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE SLLM_SELF_INCLUDE
#include <hwy/foreach_target.h>
#endif  // SLLM_HWY_SETUP_
#include <hwy/cache_control.h>        // Prefetch
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>  // Exp, per target like the code below

#if defined(SLLM_SIMD_TOGGLE_) == defined(HWY_TARGET_TOGGLE)
#ifdef SLLM_SIMD_TOGGLE_
#undef SLLM_SIMD_TOGGLE_
#else
#define SLLM_SIMD_TOGGLE_
#endif
HWY_BEFORE_NAMESPACE();
namespace sllm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
HDR
  emit_section "_simd"
  cat <<'HDR'

}  // namespace HWY_NAMESPACE
}  // namespace sllm
HWY_AFTER_NAMESPACE();
#endif  // SLLM_SIMD_TOGGLE_

#if HWY_ONCE
HDR
  emit_section "_impl"
  printf '\n#endif  // HWY_ONCE\n#endif  // SLLM_IMPLEMENTATION\n'
}

out="$root/include/sllm.h"
if [ "${1:-}" = "--check" ]; then
  if ! generate | cmp -s - "$out"; then
    echo "include/sllm.h is stale: run tools/amalgamate.sh and commit the result" >&2
    exit 1
  fi
  exit 0
fi
tmp="$out.tmp.$$"
generate >"$tmp"
if cmp -s "$tmp" "$out"; then rm -f "$tmp"; else mv "$tmp" "$out"; fi
