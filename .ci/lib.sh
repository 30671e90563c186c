# Shared by .ci/run, .ci/smoke and .ci/floors (sourced, not run).
#
# Package downloads here go through a network that sometimes cuts a transfer off (seen in CI:
# "Download failed after 6 attempts ... nvidia_cusolver ... 202.9 MB/227.9 MB"). pip resumes a
# cut download itself where it can (PIP_RESUME_RETRIES, pip >= 25.1; older pips ignore it) and
# keeps what finished in its cache, so a second try only fetches what is missing.
export PIP_RESUME_RETRIES=${PIP_RESUME_RETRIES:-20} PIP_RETRIES=${PIP_RETRIES:-10}

NET_ERRORS='incomplete-download|Connection (interrupted|reset|refused|aborted|broken)|Read ?timed ?out|ReadTimeoutError|ConnectTimeoutError|NewConnectionError|RemoteDisconnected|ProtocolError|IncompleteRead|ChunkedEncodingError|HTTP error 5[0-9][0-9]|Temporary failure in name resolution|Failed to fetch|Hash Sum mismatch'

# net_retry CMD...: run CMD (its output shown as it comes). When it fails, the output shows a
# network error, and no test session had started (a failing test is never retried), wait and run
# it again: 3 tries in all. Any other failure returns CMD's exit code at once.
net_retry() {
  local try rc log wait=${NET_RETRY_WAIT_S:-30}
  for try in 1 2 3; do
    log=$(mktemp /tmp/raystyle-ci.XXXXXX.log)
    set +e
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 0 ]; then rm -f "$log"; return 0; fi
    if grep -q 'test session starts' "$log" || ! grep -qE "$NET_ERRORS" "$log" || [ "$try" -eq 3 ]; then
      rm -f "$log"; return "$rc"
    fi
    rm -f "$log"
    echo "ci: network error (exit $rc); trying again in $((wait * try)) s (try $((try + 1)) of 3)" >&2
    sleep $((wait * try))
  done
}

# Each of .ci/run, .ci/smoke and .ci/floors builds a venv of ~7-9 GB (torch pulls its CUDA
# wheels; smoke and floors remove theirs when done). Say plainly when the disk cannot hold one,
# before an install fails half-way with "No space left on device".
free_gib=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
echo "ci: ${free_gib} GiB free here ($(basename "$0"); a venv takes about 9)"
[ "$free_gib" -ge 12 ] || echo "ci: WARNING: under 12 GiB free: an install may fail with 'No space left on device'" >&2
