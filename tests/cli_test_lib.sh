# Shared by the command-line tests (sourced): a scratch folder, failure counting, and
#   expect_status WANT NAME COMMAND...  runs COMMAND with stdout/stderr in $tmp/out, $tmp/err
#   finish NAME                         reports and exits 0 or 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

expect_status() {
  want=$1 name=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  [ "$got" -eq "$want" ] || fail "$name: exit status $got, want $want ($(head -c 300 "$tmp/err"))"
}

finish() {
  [ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
  echo "all $1 checks passed"
}
