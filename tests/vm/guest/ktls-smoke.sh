# SPDX-License-Identifier: GPL-2.0-or-later
#
# ktls-smoke.sh: guest half of the ktls-vm test (busybox sh, runs as the
# guest's only job). Proves that this kernel + OpenSSL pair really offloads
# TLS records to the kernel, using the openssl CLI on 127.0.0.1 for a
# matrix of protocol x cipher cases, as the host kernel cannot (no
# CONFIG_TLS there, and OpenSSL falls back to userspace records silently).
#
# Per case it moves a random file both ways (server -> client with
# s_server -WWW -sendfile, client -> server with s_client stdin), compares
# sha256 sums, and checks /proc/net/tls_stat deltas, which count sockets
# whose TX/RX was switched to kernel records: a TLS 1.2 connection with
# both ends offloaded adds 2 to TlsTxSw and 2 to TlsRxSw. A control case
# without the KTLS option must leave the counters alone, which shows the
# counter checks can fail.
#
# Inputs (put there by ktls-smoke on the host): /test/ktls.cnf (OpenSSL
# config setting Options = KTLS, i.e. SSL_OP_ENABLE_KTLS; the 3.0 CLI has
# no -ktls switch), /test/rsa.{crt,key}, /test/ecdsa.{crt,key}.
# Output: TAP on stdout; exit status non-zero when a check failed.

. /test/lib/tap.sh

# 1 MiB: 64 full TLS records (RFC 8446 5.1: at most 2^14 bytes each), so
# the transfer crosses many record boundaries, yet takes ~1 s under TCG.
DATA_SIZE=1048576
# How long to wait for s_server to listen, in 0.1 s steps.
LISTEN_WAIT_STEPS=100

WORK=/tmp/ktls
mkdir -p "$WORK/srv"
cd "$WORK" || exit 1
head -c "$DATA_SIZE" /dev/urandom >"$WORK/srv/data.bin"
DATA_SUM=$(sha256sum <"$WORK/srv/data.bin" | cut -d' ' -f1)
port=4430

tls_stat() {
        awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat
}

# wait_listen PORT: until something listens on 127.0.0.1:PORT.
wait_listen() {
        _i=0
        while [ "$_i" -lt "$LISTEN_WAIT_STEPS" ]; do
                netstat -ltn 2>/dev/null | grep -q "127.0.0.1:$1 " && return 0
                usleep 100000
                _i=$((_i + 1))
        done
        return 1
}

# sum_tail FILE: sha256 of the last DATA_SIZE bytes (the HTTP body).
sum_tail() {
        tail -c "$DATA_SIZE" "$1" | sha256sum | cut -d' ' -f1
}

# run_case NAME KTLS(0|1) EXPECT_RX(0|1) PROTO_REGEX CERT CIPHER_ARGS...
# CIPHER_ARGS go to both s_server and s_client (version + cipher choice).
run_case() {
        name=$1 ktls=$2 expect_rx=$3 proto=$4 cert=$5
        shift 5
        d=$WORK/$name
        mkdir -p "$d"
        if [ "$ktls" = 1 ]; then
                export OPENSSL_CONF=/test/ktls.cnf
        else
                export OPENSSL_CONF=/dev/null
        fi

        tx0=$(tls_stat TlsTxSw) rx0=$(tls_stat TlsRxSw)
        err0=$(tls_stat TlsDecryptError)

        # Server -> client: s_server -WWW -sendfile answers with
        # SSL_sendfile(), which only works on a kTLS TX socket.
        port=$((port + 1))
        (cd "$WORK/srv" && exec openssl s_server -accept "127.0.0.1:$port" \
                -naccept 1 -cert "/test/$cert.crt" -key "/test/$cert.key" \
                -WWW -sendfile "$@" >"$d/get-srv.out" 2>"$d/get-srv.err") &
        srv=$!
        if ! wait_listen "$port"; then
                tap_ok 1 "$name: s_server listens"
                tap_diag_file "$d/get-srv.err"
                kill "$srv" 2>/dev/null
                return
        fi
        printf 'GET /data.bin HTTP/1.0\r\n\r\n' |
                openssl s_client -connect "127.0.0.1:$port" -quiet -ign_eof \
                -nocommands "$@" >"$d/get-cli.out" 2>"$d/get-cli.err"
        wait "$srv"
        tap_is "$(sum_tail "$d/get-cli.out")" "$DATA_SUM" \
                "$name: download through s_server -WWW arrives intact"
        if [ "$ktls" = 1 ]; then
                grep -q "^KTLS SENDFILE 'data.bin' OK" "$d/get-srv.err"
                tap_ok $? "$name: server sent the file with kTLS sendfile"
                grep -q "^Using Kernel TLS for sending" "$d/get-cli.err"
                tap_ok $? "$name: client reports kTLS TX"
                if [ "$expect_rx" = 1 ]; then
                        grep -q "^Using Kernel TLS for receiving" "$d/get-cli.err"
                        tap_ok $? "$name: client reports kTLS RX"
                fi
        else
                ! grep -q "Kernel TLS" "$d/get-cli.err"
                tap_ok $? "$name: client reports no kTLS"
        fi

        # Client -> server: s_client writes its stdin, s_server -quiet
        # writes what it reads to stdout. s_server also reads its own stdin
        # and would spin on EOF, so a fifo held open by a sleeper feeds it.
        port=$((port + 1))
        rm -f "$d/hold"
        mkfifo "$d/hold"
        sleep 600 >"$d/hold" &
        holder=$!
        openssl s_server -accept "127.0.0.1:$port" -naccept 1 -quiet \
                -cert "/test/$cert.crt" -key "/test/$cert.key" "$@" \
                <"$d/hold" >"$d/put-srv.out" 2>"$d/put-srv.err" &
        srv=$!
        if wait_listen "$port"; then
                openssl s_client -connect "127.0.0.1:$port" -nocommands "$@" \
                        <"$WORK/srv/data.bin" >"$d/put-cli.out" 2>"$d/put-cli.err"
                wait "$srv"
        else
                kill "$srv" 2>/dev/null
        fi
        kill "$holder" 2>/dev/null
        wait "$holder" 2>/dev/null
        tap_is "$(sha256sum <"$d/put-srv.out" | cut -d' ' -f1)" "$DATA_SUM" \
                "$name: upload through s_client arrives intact"
        grep -Eq "^New, $proto, Cipher is " "$d/put-cli.out"
        tap_ok $? "$name: negotiated $proto"
        tap_diag "$name: $(grep -E '^New, ' "$d/put-cli.out")"

        tx=$(($(tls_stat TlsTxSw) - tx0))
        rx=$(($(tls_stat TlsRxSw) - rx0))
        err=$(($(tls_stat TlsDecryptError) - err0))
        tap_diag "$name: tls_stat TlsTxSw +$tx TlsRxSw +$rx TlsDecryptError +$err"
        if [ "$ktls" = 1 ]; then
                # 2 connections x 2 ends, each switching TX to kernel records.
                tap_is "$tx" 4 "$name: TlsTxSw grew by 4 (both ends, both connections)"
                # OpenSSL 3.0 installs TLS_RX for TLS 1.2 only; kernel 6.1
                # could do 1.3 RX, but nothing asks it to here.
                tap_is "$rx" $((4 * expect_rx)) "$name: TlsRxSw grew by $((4 * expect_rx))"
        else
                tap_is "$tx" 0 "$name: without the KTLS option TlsTxSw stays put"
                tap_is "$rx" 0 "$name: without the KTLS option TlsRxSw stays put"
        fi
        tap_is "$err" 0 "$name: no kernel TLS decrypt errors"
        # All sockets closed: the kernel's per-socket contexts are gone.
        tap_is "$(tls_stat TlsCurrTxSw)/$(tls_stat TlsCurrRxSw)" 0/0 \
                "$name: no kTLS sockets left open"
}

test -r /proc/net/tls_stat
tap_ok $? "tls module loaded (/proc/net/tls_stat exists)"
if [ ! -r /proc/net/tls_stat ]; then
        tap_done
        exit 1
fi
tap_diag "kernel $(uname -r), $(openssl version)"

run_case tls12-aes128gcm-rsa 1 1 TLSv1.2 rsa \
        -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256
run_case tls12-chacha20-ecdsa 1 1 TLSv1.2 ecdsa \
        -tls1_2 -cipher ECDHE-ECDSA-CHACHA20-POLY1305
run_case tls13-aes128gcm 1 0 TLSv1.3 ecdsa \
        -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256
run_case tls13-aes256gcm 1 0 TLSv1.3 rsa \
        -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384
run_case control-no-ktls 0 0 TLSv1.2 rsa \
        -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256

tap_diag "$(cat /proc/net/tls_stat)"
tap_done
