# SPDX-License-Identifier: GPL-2.0-or-later
#
# ktls-daemon.sh: guest half of the ktls-daemon-vm test (busybox sh). The
# real tlsgwd under a kernel with kTLS: gateway A receives a message over
# STARTTLS (TLS 1.2 and TLS 1.3 in turn) and relays it over STARTTLS to
# gateway B, which delivers it into a maildir. Checked from the gateways'
# own mail log (stderr: there is no journald in the guest), from
# /proc/net/tls_stat deltas and from the delivered bytes:
#   - TLS 1.2 inbound sessions are offloaded TX and RX ("ktls tx rx"),
#   - TLS 1.3 sessions TX only (OpenSSL 3.0 installs no TLS 1.3 RX keys),
#   - A's delivery to B sends the spooled body with SSL_sendfile,
#   - the body arrives intact.
# The openssl clients run without the KTLS option, so the counters move
# only for the gateways' sockets.
#
# Inputs (from the host): /usr/bin/tlsgwd, /test/tlsgwd.conf (A),
# /test/tlsgwd-b.conf (B). Output: TAP on stdout.

. /test/lib/tap.sh

LISTEN_WAIT_STEPS=200           # 0.1 s steps: TCG is slow to start two daemons
DELIVERY_WAIT_STEPS=600         # 0.1 s steps for A -> B -> maildir
BODY_BYTES=131072               # random bytes, hex-encoded: 256 KiB of text

export OPENSSL_CONF=/dev/null
mkdir -p /tmp/gw-a /tmp/gw-b /tmp/mail-b /tmp/kd
cd /tmp/kd || exit 1

tls_stat() {
        awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat
}

wait_listen() {
        _i=0
        while [ "$_i" -lt "$LISTEN_WAIT_STEPS" ]; do
                netstat -ltn 2>/dev/null | grep -q "127.0.0.1:$1 " && return 0
                usleep 100000
                _i=$((_i + 1))
        done
        return 1
}

# wait_file PATTERN: until a delivered file in B's maildir contains PATTERN.
wait_file() {
        _i=0
        while [ "$_i" -lt "$DELIVERY_WAIT_STEPS" ]; do
                _f=$(grep -l "$1" /tmp/mail-b/new/* 2>/dev/null | head -n 1)
                if [ -n "$_f" ]; then
                        echo "$_f"
                        return 0
                fi
                usleep 100000
                _i=$((_i + 1))
        done
        return 1
}

tlsgwd --config /test/tlsgwd-b.conf 2>/tmp/gw-b.log &
tlsgwd --config /test/tlsgwd.conf 2>/tmp/gw-a.log &
tap_check "gateway B listens" wait_listen 2526
tap_check "gateway A listens" wait_listen 2525

head -c "$BODY_BYTES" /dev/urandom | hexdump -v -e '32/1 "%02x" "\n"' >/tmp/kd/body.txt
BODY_SUM=$(sha256sum </tmp/kd/body.txt | cut -d' ' -f1)

# run_case NAME EXPECT_IN_KTLS EXPECT_TX EXPECT_RX CLIENT_ARGS...
#   EXPECT_IN_KTLS: the words A's inbound TLS line must end with
#   EXPECT_TX/RX: expected /proc/net/tls_stat deltas for the whole flow
run_case() {
        name=$1 in_ktls=$2 want_tx=$3 want_rx=$4
        shift 4
        tx0=$(tls_stat TlsTxSw) rx0=$(tls_stat TlsRxSw) err0=$(tls_stat TlsDecryptError)
        {
                printf 'EHLO client.test\n'
                printf 'MAIL FROM:<sender@client.test>\n'
                printf 'RCPT TO:<user@b.test>\n'
                printf 'DATA\n'
                printf 'Subject: ktls %s\n\n' "$name"
                cat /tmp/kd/body.txt
                printf '.\nQUIT\n'
        } >"/tmp/kd/$name.in"
        timeout 120 openssl s_client -starttls smtp -connect 127.0.0.1:2525 -quiet -crlf \
                -nocommands "$@" <"/tmp/kd/$name.in" >"/tmp/kd/$name.out" 2>"/tmp/kd/$name.err"
        tap_check "$name: message accepted over STARTTLS" grep -q "^250 2.0.0 Ok: queued as MID" "/tmp/kd/$name.out"

        f=$(wait_file "Subject: ktls $name")
        tap_ok $? "$name: delivered through gateway B into the maildir"
        if [ -n "$f" ]; then
                got=$(sed -n '/^\r$/,$p' "$f" | sed 1d | tr -d '\r' | sha256sum | cut -d' ' -f1)
                tap_is "$got" "$BODY_SUM" "$name: body arrived byte for byte"
        else
                tap_ok 1 "$name: body arrived byte for byte"
        fi
        # Let A log the delivery and both close their sockets.
        usleep 500000

        tap_check "$name: A logs the inbound session as offloaded ($in_ktls)" \
                grep -Eq "ICID [0-9]+ TLS success protocol $in_ktls\$" /tmp/gw-a.log
        tap_check "$name: A logs the delivery session to B as offloaded (TLSv1.3 ktls tx)" \
                grep -Eq "DCID [0-9]+ TLS success protocol TLSv1.3 cipher [A-Z0-9_]+ ktls tx\$" /tmp/gw-a.log
        tap_check "$name: A sent the spooled body with SSL_sendfile" \
                grep -Eq "Message done DCID [0-9]+ MID [0-9]+ to RID \[0\] .* via SSL_sendfile\$" /tmp/gw-a.log
        tap_check "$name: B logs its inbound session as offloaded (ktls tx)" \
                grep -Eq "ICID [0-9]+ TLS success protocol TLSv1.3 cipher [A-Z0-9_]+ ktls tx\$" /tmp/gw-b.log
        tap_is "$(( $(tls_stat TlsTxSw) - tx0 ))" "$want_tx" "$name: TlsTxSw delta (kernel encrypted sockets)"
        tap_is "$(( $(tls_stat TlsRxSw) - rx0 ))" "$want_rx" "$name: TlsRxSw delta (kernel decrypted sockets)"
        tap_is "$(( $(tls_stat TlsDecryptError) - err0 ))" 0 "$name: no kernel decrypt errors"
        # Next case: fresh log lines only, and a new A->B connection: A keeps
        # an idle delivery connection 2 s for reuse, so wait it out.
        : >/tmp/gw-a.log
        : >/tmp/gw-b.log
        sleep 3
}

# TLS 1.2: A's inbound socket TX+RX, A->B (TLS 1.3) A TX and B TX: 3 TX, 1 RX.
run_case tls12 "TLSv1.2 cipher ECDHE-ECDSA-AES128-GCM-SHA256 ktls tx rx" 3 1 \
        -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256
# TLS 1.3: every socket TX only.
run_case tls13 "TLSv1.3 cipher TLS_AES_256_GCM_SHA384 ktls tx" 3 0 \
        -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384

tap_diag "gateway A log of the last case:"
tap_diag_file /tmp/gw-a.log 2>/dev/null || true
tap_done
