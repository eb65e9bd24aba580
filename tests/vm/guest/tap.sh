# SPDX-License-Identifier: GPL-2.0-or-later
#
# tap.sh: TAP helpers for guest test scripts (busybox sh, no bash-isms).
# Sourced as /test/lib/tap.sh inside the guest. Numbers the checks, prints
# the plan at the end (TAP allows a trailing plan) and makes tap_done return
# non-zero when any check failed, which /init reports as the guest's rc.
# It does not run anything itself.

_tap_n=0
_tap_failed=0

# tap_ok CONDITION_STATUS DESCRIPTION: pass when the status is 0.
tap_ok() {
        _tap_n=$((_tap_n + 1))
        if [ "$1" -eq 0 ]; then
                echo "ok $_tap_n - $2"
        else
                echo "not ok $_tap_n - $2"
                _tap_failed=$((_tap_failed + 1))
        fi
}

# tap_check DESCRIPTION COMMAND...: pass when COMMAND exits 0.
tap_check() {
        _tap_desc=$1
        shift
        "$@"
        tap_ok $? "$_tap_desc"
}

# tap_is GOT EXPECTED DESCRIPTION
tap_is() {
        if [ "$1" = "$2" ]; then
                tap_ok 0 "$3"
        else
                tap_ok 1 "$3"
                echo "#   got:      '$1'"
                echo "#   expected: '$2'"
        fi
}

# tap_ge GOT MIN DESCRIPTION: integer GOT >= MIN.
tap_ge() {
        if [ "$1" -ge "$2" ] 2>/dev/null; then
                tap_ok 0 "$3"
        else
                tap_ok 1 "$3"
                echo "#   got:      '$1'"
                echo "#   expected: >= $2"
        fi
}

# tap_skip DESCRIPTION REASON
tap_skip() {
        _tap_n=$((_tap_n + 1))
        echo "ok $_tap_n - $1 # SKIP $2"
}

tap_diag() {
        echo "$*" | sed 's/^/# /'
}

# tap_diag_file FILE: a file's content as TAP comments (for failures).
tap_diag_file() {
        [ -r "$1" ] && sed 's/^/#   | /' "$1"
        return 0
}

tap_done() {
        echo "1..$_tap_n"
        [ "$_tap_failed" -eq 0 ]
}
