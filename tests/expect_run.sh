#!/usr/bin/env bash
# expect_run.sh zero|nonzero REGEX -- COMMAND...: runs COMMAND, checks its exit status and that
# its combined output matches REGEX (extended grep). Used by ctest for the drivers.
set -u
want=$1 regex=$2
shift 3
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$want" = zero ] && [ $rc -ne 0 ]; then echo "expected exit 0, got $rc"; exit 1; fi
if [ "$want" = nonzero ] && [ $rc -eq 0 ]; then echo "expected a non-zero exit"; exit 1; fi
printf '%s\n' "$out" | grep -Eq -- "$regex" || { echo "output does not match: $regex"; exit 1; }
