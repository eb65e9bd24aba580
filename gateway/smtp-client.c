/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Outbound SMTP client: one DeliveryJob, one connection at a time, driven
 * by sd-event I/O and timer sources; never blocks.
 *
 * Targets are tried in order (RFC 5321 5.1): a failed connect, a greeting
 * other than 2xx, or a failure before the first MAIL moves on to the next
 * one. Once a transaction has started, a lost connection or a timeout
 * defers every recipient still pending. Per message: MAIL FROM (SIZE= when
 * offered, RFC 1870), RCPT TO per recipient, DATA; with PIPELINING (RFC
 * 2920) all of them go out in one write and the replies are matched in
 * order. The body is the spooled wire form (dot-stuffed, CRLF) sent as is
 * with sendfile(2), then ".". Messages share the connection; RSET is sent
 * only when a transaction was left open. QUIT at the end, unless the
 * connection is kept for the next job (below).
 *
 * Connection cache: a job that ends cleanly (every reply of its last
 * transaction 2xx, nothing unread or unsent, TLS up or never asked for)
 * leaves its connection idle in a process-wide cache instead of sending
 * QUIT. A later job for the same domain, HELO name, TLS mode and SSL_CTX,
 * whose targets include the cached address (and host), takes it: RSET, and
 * on 2xx straight to MAIL with what the EHLO reply and TLS handshake of the
 * opening job established. A failed RSET (or a dead peer) closes it and the
 * job connects as usual; that is not a target failure. Idle connections
 * carry no I/O source: the taking job registers the fd on its own loop.
 * Each has a floating timer on the loop that cached it, which closes it
 * (QUIT) after CLIENT_CACHE_TIME_LIMIT if nobody took it, and whose destroy
 * callback closes it when that loop is freed (daemon shutdown).
 *
 * STARTTLS (RFC 3207) follows the job's TlsOutbound mode (smtp-client.h):
 * after the EHLO reply the client sends STARTTLS when it is offered and
 * the mode asks for it, runs the handshake on the same socket and sends
 * EHLO again over TLS (RFC 3207 4.2). Whatever the server sent in clear
 * after its 220 ends the target (CVE-2011-0411). A policy that cannot be
 * met (required*: not offered, refused, no ESMTP; required-verify: not
 * verified) is a target failure; a handshake failure is one in every
 * mode: after the 220 there is never a fallback to clear text.
 *
 * Socket I/O goes through the transport_*() functions only; with a
 * TlsSession up they read and write through it. The body then goes out
 * with SSL_sendfile() when the kernel encrypts (kTLS TX), else in chunks
 * read from the spool file.
 *
 * Logs the DCID events (new connection, delivery start, connection errors,
 * close); the per-recipient outcomes are logged by the queue. SIGPIPE must
 * be ignored by the process (sendfile(2) has no MSG_NOSIGNAL).
 * Returns negative errno from smtp_client_start(); all later failures end
 * up as recipient statuses.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "local-delivery.h"
#include "log.h"
#include "smtp-client.h"
#include "smtp-parse.h"
#include "tls.h"
#include "util/buf.h"
#include "util/macro.h"
#include "util/parse.h"

/* Unparsed server input: a complete reply is at most SMTP_REPLY_MAX; room
 * for two lets a pipelined batch drain without stalling. */
#define CLIENT_INPUT_MAX (2 * SMTP_REPLY_MAX)
/* Queued commands: a pipelined MAIL + RCPTs + DATA for one message. A
 * RCPT line is at most 8 + 256 + 2 octets (RFC 5321 4.5.3.1.3) and
 * RFC 5321 4.5.3.1.8 requires servers to take only 100 recipients. */
#define CLIENT_OUTPUT_MAX (1024 * 1024)
/* Stored reply text: one reply line (RFC 5321 4.5.3.1.5, 512 octets). */
#define DELIVERY_REPLY_MAX 512
/* Body bytes per sendfile(2) call, so one connection does not hog the loop. */
#define CLIENT_SENDFILE_CHUNK (256 * 1024)
/* Reads per wakeup before yielding to other sources. */
#define CLIENT_READ_CHUNK 4096
/* Body octets read from the spool per TLS write when the kernel does not
 * encrypt: four full TLS records (RFC 8446 5.1, 2^14 octets each). */
#define CLIENT_TLS_CHUNK (64 * 1024)
/* Reads of unasked-for input before closing a TLS connection: a few
 * session tickets fit; anything more is the server's problem. */
#define CLIENT_TLS_DRAIN_READS 4
/* How long an idle connection waits for the next job, as Postfix's
 * smtp_connection_cache_time_limit: enough to bridge mail that trickles
 * in, well below the 5 minutes a server may wait for the next command
 * (RFC 5321 4.5.3.2.7), so the peer does not drop it under us. */
#define CLIENT_CACHE_TIME_LIMIT (2 * USEC_PER_SEC)
/* Idle connections per destination: more than the concurrent deliveries
 * a destination usually gets; beyond that they would only hold the
 * server's session slots. */
#define CLIENT_CACHE_PER_DESTINATION 16
/* All idle connections: each holds an fd and perhaps a TLS session (tens
 * of KB); bounded so many destinations cannot pile them up. */
#define CLIENT_CACHE_MAX 256

typedef enum ClientState {
        CLIENT_CONNECTING,
        CLIENT_GREETING,
        CLIENT_EHLO,
        CLIENT_HELO,
        CLIENT_STARTTLS,        /* reply to STARTTLS */
        CLIENT_TLS_START,       /* 220 seen, handshake starts once it is consumed */
        CLIENT_HANDSHAKE,
        CLIENT_TRANSACTION,     /* replies to MAIL, RCPT..., DATA */
        CLIENT_BODY,            /* sending the body and "." */
        CLIENT_DOT,             /* reply to "." */
        CLIENT_RSET,
        CLIENT_REUSE,           /* reply to the RSET on a cached connection */
        CLIENT_IDLE,            /* last reply in; cache the connection once it is consumed */
        CLIENT_QUIT,
        CLIENT_FINISHED,
} ClientState;

typedef struct Client {
        sd_event *event;
        DeliveryJob *job;
        smtp_client_done_fn_t done;
        void *userdata;

        ClientState state;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;
        sd_event_source *defer;
        Buf in;
        Buf out;

        size_t target;                  /* index into job->targets */
        char peer[INET6_ADDRSTRLEN];
        char iface[INET6_ADDRSTRLEN];
        char *last_reason;              /* for DEFERRED when all targets fail */
        bool began;                     /* a MAIL was sent on this connection */
        bool greeted;                   /* a 2xx greeting on this connection (probe) */
        bool need_rset;                 /* a transaction may be open */
        bool unclean;                   /* an error reply: not worth keeping */
        uint64_t opened_dcid;           /* a cached connection: the DCID that opened it; 0 = ours */
        uint32_t conn_messages;         /* transactions the connection carried, reuse included */

        /* ESMTP (RFC 5321 4.1.1.1) */
        bool pipelining;
        uint64_t size_max;              /* 0: no SIZE limit advertised */

        /* STARTTLS (RFC 3207) */
        TlsSession *tls;                /* set from the 220 to STARTTLS on */
        bool tls_up;                    /* handshake done: I/O goes through tls */
        int tls_verified;               /* as logged: -1 not checked, 0 no, 1 yes */
        char *tls_verify_detail;        /* why not verified (for the log), or NULL */
        uint32_t tls_read_events;       /* what the last TLS read/write/handshake */
        uint32_t tls_write_events;      /* waits for (EPOLLIN/EPOLLOUT), 0: none */
        /* Staging for TLS writes: OpenSSL wants a retried write with the same
         * buffer and length, so commands and body chunks are copied here and
         * stay until written. */
        char *tls_wbuf;
        size_t tls_wlen, tls_woff;

        /* The current message's transaction. */
        size_t msg;                     /* index into job->messages */
        size_t *tx_rcpts;               /* indices of the recipients sent */
        bool *tx_accepted;
        size_t n_tx_rcpts;
        size_t n_accepted;
        size_t n_sent;                  /* commands written: MAIL, RCPTs, DATA */
        size_t n_replied;
        bool mail_ok;
        bool discard_dot;               /* "." only closes a 354 nobody can use */
        uint64_t body_offset;
        uint64_t body_left;
        bool body_needs_crlf;           /* data does not end in CRLF */
} Client;

static void client_free(Client *c) {
        if (!c)
                return;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        sd_event_source_disable_unref(c->defer);
        tls_session_free(c->tls);
        safe_close(c->fd);
        free(c->tls_wbuf);
        buf_done(&c->in);
        buf_done(&c->out);
        free(c->last_reason);
        free(c->tls_verify_detail);
        free(c->tx_rcpts);
        free(c->tx_accepted);
        sd_event_unref(c->event);
        free(c);
}

static void delivery_probe_done(DeliveryProbe *p) {
        free(p->host);
        free(p->protocol);
        free(p->cipher);
        free(p->verify_error);
        strv_free(p->names);
        strv_free(p->chain);
        free(p->error);
        *p = (DeliveryProbe) {};
}

void delivery_job_free(DeliveryJob *j) {
        if (!j)
                return;
        for (size_t i = 0; i < j->n_messages; i++) {
                DeliveryMessage *m = j->messages + i;

                free(m->sender);
                safe_close(m->data_fd);
                for (size_t k = 0; k < m->n_rcpts; k++) {
                        free(m->rcpts[k].address);
                        free(m->rcpts[k].reply);
                }
                free(m->rcpts);
        }
        free(j->messages);
        resolved_targets_free(j->targets, j->n_targets);
        free(j->domain);
        free(j->helo_name);
        free(j->maildir);
        SSL_CTX_free(j->tls_ctx);
        free(j->tls_failure_details);
        delivery_probe_done(&j->probe_result);
        free(j);
}

/* ---- reply text ---- */

/* "CODE ENH text" from the first line of a reply: printable ASCII only,
 * at most DELIVERY_REPLY_MAX octets. */
static char *reply_format(const SmtpReply *r) {
        const char *p = r->text.p ?: "";
        size_t n = r->text.len, i = 0, o;
        char *s;

        for (size_t k = 0; k < n; k++)
                if (p[k] == '\r' || p[k] == '\n') {
                        n = k;
                        break;
                }
        /* The view starts after "CODE "; tolerate one that includes it. */
        char code[4];
        (void) snprintf(code, sizeof(code), "%03d", r->code);
        if (n >= 3 && memcmp(p, code, 3) == 0 && (n == 3 || p[3] == ' ' || p[3] == '-'))
                i = MIN(n, (size_t) 4);
        /* And the enhanced code, which is printed from r->enhanced. */
        size_t el = strlen(r->enhanced);
        if (el > 0 && n - i >= el && memcmp(p + i, r->enhanced, el) == 0 &&
            (n - i == el || p[i + el] == ' '))
                i += el;
        while (i < n && p[i] == ' ')
                i++;

        s = malloc(DELIVERY_REPLY_MAX + 1);
        if (!s)
                return NULL;
        o = (size_t) snprintf(s, DELIVERY_REPLY_MAX + 1, "%03d%s%s", r->code, el > 0 ? " " : "", r->enhanced);
        if (i < n && o + 1 < DELIVERY_REPLY_MAX)
                s[o++] = ' ';
        for (; i < n && o < DELIVERY_REPLY_MAX; i++) {
                unsigned char ch = (unsigned char) p[i];
                s[o++] = ch >= 0x20 && ch < 0x7f ? (char) ch : '?';
        }
        s[o] = '\0';
        return s;
}

static char *reason_new(const char *fmt, ...) _printf_(1, 2);
static char *reason_new(const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (s && strlen(s) > DELIVERY_REPLY_MAX)
                s[DELIVERY_REPLY_MAX] = '\0';
        return s;
}

static void rcpt_set(DeliveryRcpt *r, DeliveryStatus status, const char *reply) {
        char *s = strdup(reply ?: "");

        /* Out of memory leaves the old text; the status is what counts. */
        if (s) {
                free(r->reply);
                r->reply = s;
        }
        r->status = status;
}

static DeliveryStatus status_from_code(int code) {
        if (code >= 200 && code < 300)
                return DELIVERY_DELIVERED;
        if (code >= 500 && code < 600)
                return DELIVERY_FAILED;
        return DELIVERY_DEFERRED;       /* 4xx, and anything unexpected */
}

/* Every recipient still pending, in this and all later messages. */
static void defer_all_pending(Client *c, const char *reason) {
        DeliveryJob *j = c->job;

        for (size_t m = 0; m < j->n_messages; m++)
                for (size_t k = 0; k < j->messages[m].n_rcpts; k++)
                        if (j->messages[m].rcpts[k].status == DELIVERY_PENDING)
                                rcpt_set(j->messages[m].rcpts + k, DELIVERY_DEFERRED, reason);
}

/* ---- transport: the plain socket, or the TLS session once it is up ---- */

static bool transport_tls(const Client *c) {
        return c->tls && c->tls_up;
}

static ssize_t transport_read(Client *c) {
        ssize_t n;

        if (!transport_tls(c)) {
                n = buf_read_fd(&c->in, c->fd, CLIENT_READ_CHUNK);
                return n == -EINTR ? -EAGAIN : n;
        }

        size_t room = c->in.max - buf_len(&c->in);
        if (room == 0)
                return -ENOBUFS;
        size_t want = MIN(room, (size_t) CLIENT_READ_CHUNK);
        int r = buf_reserve(&c->in, want);
        if (r < 0)
                return r;
        n = tls_session_read(c->tls, buf_tail(&c->in), want, &c->tls_read_events);
        if (n > 0) {
                buf_commit(&c->in, (size_t) n);
                c->tls_read_events = 0;
        }
        return n;
}

/* Writes the staged TLS bytes; 0 when the stage is empty afterwards. */
static ssize_t transport_tls_flush(Client *c) {
        while (c->tls_woff < c->tls_wlen) {
                ssize_t n = tls_session_write(c->tls, c->tls_wbuf + c->tls_woff, c->tls_wlen - c->tls_woff,
                                              &c->tls_write_events);
                if (n < 0)
                        return n;
                if (n == 0)
                        return -EIO;
                c->tls_write_events = 0;
                c->tls_woff += (size_t) n;
        }
        c->tls_woff = c->tls_wlen = 0;
        return 0;
}

static bool transport_tls_staged(const Client *c) {
        return c->tls_woff < c->tls_wlen;
}

static int transport_tls_stage_alloc(Client *c) {
        if (!c->tls_wbuf) {
                c->tls_wbuf = malloc(CLIENT_TLS_CHUNK);
                if (!c->tls_wbuf)
                        return -ENOMEM;
        }
        return 0;
}

static ssize_t transport_write(Client *c) {
        ssize_t n;

        if (transport_tls(c)) {
                size_t total = 0;
                int r;

                for (;;) {
                        n = transport_tls_flush(c);
                        if (n < 0)
                                return n;
                        if (buf_empty(&c->out))
                                return (ssize_t) total;
                        r = transport_tls_stage_alloc(c);
                        if (r < 0)
                                return r;
                        c->tls_wlen = MIN(buf_len(&c->out), (size_t) CLIENT_TLS_CHUNK);
                        memcpy(c->tls_wbuf, buf_peek(&c->out), c->tls_wlen);
                        buf_consume(&c->out, c->tls_wlen);
                        total += c->tls_wlen;
                }
        }

        if (buf_empty(&c->out))
                return 0;
        n = send(c->fd, buf_peek(&c->out), buf_len(&c->out), MSG_NOSIGNAL);
        if (n < 0)
                return errno == EINTR ? -EAGAIN : -errno;
        buf_consume(&c->out, (size_t) n);
        return n;
}

/* Nothing queued for the peer, in the buffer or in the TLS stage. */
static bool transport_output_empty(const Client *c) {
        return buf_empty(&c->out) && !transport_tls_staged(c);
}

/* Sends up to `len` body octets from the spool fd; returns the octets
 * taken from the file (with TLS in userspace they may still sit in the
 * stage, which is flushed before anything else is written). */
static ssize_t transport_send_body(Client *c, int fd, uint64_t *offset, size_t len) {
        off_t off = (off_t) *offset;
        ssize_t n;

        if (transport_tls(c) && tls_session_ktls_tx(c->tls)) {
                /* The kernel encrypts: the file pages go out as they are. */
                c->job->sendfile_used = true;
                n = tls_session_sendfile(c->tls, fd, off, len, &c->tls_write_events);
                if (n < 0)
                        return n;
                if (n == 0)
                        return -EIO;
                c->tls_write_events = 0;
                *offset += (uint64_t) n;
                return n;
        }

        if (transport_tls(c)) {
                int r;

                n = transport_tls_flush(c);
                if (n < 0)
                        return n;
                r = transport_tls_stage_alloc(c);
                if (r < 0)
                        return r;
                n = pread(fd, c->tls_wbuf, MIN(len, (size_t) CLIENT_TLS_CHUNK), off);
                if (n < 0)
                        return errno == EINTR ? -EAGAIN : -errno;
                if (n == 0)
                        return -EIO;    /* spool file shorter than the envelope says */
                c->tls_wlen = (size_t) n;
                c->tls_woff = 0;
                *offset += (uint64_t) n;
                r = (int) transport_tls_flush(c);
                if (r < 0 && r != -EAGAIN)
                        return r;
                return n;
        }

        n = sendfile(c->fd, fd, &off, len);
        if (n < 0)
                return errno == EINTR ? -EAGAIN : -errno;
        if (n == 0)
                return -EIO;    /* spool file shorter than the envelope says */
        *offset = (uint64_t) off;
        return n;
}

/* Ends the TLS session (close_notify when it was up) and frees it. What
 * the server sent and we did not read (TLS 1.3 session tickets, RFC 8446
 * 4.6.1) is drained first: closing a socket with unread input makes the
 * kernel send RST, which can destroy our QUIT before the server reads it. */
static void transport_tls_close(Client *c) {
        if (c->tls && c->tls_up) {
                char scratch[CLIENT_READ_CHUNK];
                uint32_t events;

                for (unsigned i = 0; i < CLIENT_TLS_DRAIN_READS; i++)
                        if (tls_session_read(c->tls, scratch, sizeof(scratch), &events) <= 0)
                                break;
                tls_session_shutdown(c->tls);
        }
        c->tls = tls_session_free(c->tls);
        c->tls_up = false;
        c->tls_read_events = c->tls_write_events = 0;
        c->tls_wlen = c->tls_woff = 0;
}

/* ---- plumbing ---- */

static const ResolvedTarget *client_target(Client *c) {
        return c->job->targets + c->target;
}

static const char *client_host(Client *c) {
        const char *h = client_target(c)->host;
        return isempty(h) ? c->peer : h;
}

static int client_update_io(Client *c) {
        uint32_t events = 0;

        if (!c->io)
                return 0;
        if (c->state == CLIENT_HANDSHAKE)
                /* OpenSSL says what it waits for. */
                events = c->tls_read_events | c->tls_write_events;
        else if (transport_tls(c)) {
                /* A TLS read may wait for the socket to become writable and
                 * a write for it to become readable (RFC 8446 4.6). */
                if (!transport_output_empty(c) || c->state == CLIENT_BODY)
                        events |= c->tls_write_events ?: EPOLLOUT;
                if (c->state != CLIENT_BODY)
                        events |= c->tls_read_events ?: EPOLLIN;
        } else {
                if (c->state == CLIENT_CONNECTING || !buf_empty(&c->out) || c->state == CLIENT_BODY)
                        events |= EPOLLOUT;
                if (c->state != CLIENT_CONNECTING && c->state != CLIENT_BODY)
                        events |= EPOLLIN;
        }
        if (events == 0)
                events = EPOLLIN;       /* never leave the connection unwatched */
        return sd_event_source_set_io_events(c->io, events);
}

static int client_arm_timer(Client *c, uint64_t usec) {
        int r;

        if (usec == 0 || usec == USEC_INFINITY)
                return sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        r = sd_event_source_set_time_relative(c->timer, usec);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
}

static int client_send(Client *c, const char *fmt, ...) _printf_(2, 3);
static int client_send(Client *c, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (n < 0) {
                s = NULL;
                return -ENOMEM;
        }
        return buf_append(&c->out, s, (size_t) n);
}

static void client_close_connection(Client *c) {
        c->conn_messages = 0;
        transport_tls_close(c);
        c->io = sd_event_source_disable_unref(c->io);
        c->fd = safe_close(c->fd);
        buf_clear(&c->in);
        buf_clear(&c->out);
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
}

static void client_finish(Client *c) {
        client_close_connection(c);
        c->state = CLIENT_FINISHED;
        log_dcid_close(c->job->dcid);
}

static int client_connect_next(Client *c);
static int client_next_message(Client *c);
static int client_reuse_failed(Client *c, const char *why);

static void client_log_connection_error(Client *c, const char *details, const char *reason) {
        const ResolvedTarget *t = client_target(c);

        log_connection_error(c->job->dcid, c->job->domain, c->peer, sockaddr_port((const struct sockaddr *) &t->addr),
                             details, c->iface[0] ? c->iface : "unknown", reason);
}

/* Leaves the current target (already logged) for the next one; `text` is
 * the recipients' reason should every target fail. */
static int client_next_target(Client *c, const char *text) {
        free(c->last_reason);
        c->last_reason = strdup(text);

        /* A probe reports what went wrong with the server that answered,
         * rather than hiding it behind the next one. */
        bool probe_stop = c->job->probe && c->greeted;
        if (c->job->probe) {
                free(c->job->probe_result.error);
                c->job->probe_result.error = strdup(text);
        }

        /* Courtesy QUIT, not waited for (RFC 5321 3.1); never in clear
         * once the server expects a handshake, and not into a TLS stream
         * that is not up. */
        if (c->fd >= 0 && c->state != CLIENT_CONNECTING && c->state != CLIENT_TLS_START &&
            c->state != CLIENT_HANDSHAKE) {
                buf_clear(&c->out);
                if (client_send(c, "QUIT\r\n") >= 0)
                        (void) transport_write(c);
        }
        if (probe_stop) {
                client_finish(c);
                return 0;
        }
        client_close_connection(c);
        c->target++;
        return client_connect_next(c);
}

/* The connection to the current target failed before any transaction:
 * log it and go on with the next target. */
static int client_target_failed(Client *c, const char *details, const char *reason, const char *text) {
        client_log_connection_error(c, details, reason);
        return client_next_target(c, text);
}

/* ---- TLS policy ---- */

static bool tls_mode_required(TlsOutbound m) {
        return m == TLS_OUT_REQUIRED || m == TLS_OUT_REQUIRED_VERIFY;
}

static bool tls_mode_verifies(TlsOutbound m) {
        return m == TLS_OUT_PREFERRED_VERIFY || m == TLS_OUT_REQUIRED_VERIFY;
}

/* The policy is met on this target (TLS as asked, or clear text allowed). */
static void client_tls_policy_met(Client *c) {
        c->job->tls_failure = NULL;
        c->job->tls_failure_details = mfree(c->job->tls_failure_details);
}

/* The TLS policy cannot be met on this target (or the handshake failed,
 * in any mode): record why, log it, and go on with the next target. */
static int client_tls_failed(Client *c, const char *reason, const char *details) {
        DeliveryJob *j = c->job;
        _cleanup_free_ char *text = NULL;

        log_dcid_tls_failed(j->dcid, j->domain, reason, details);
        free(j->tls_failure_details);
        j->tls_failure_details = details ? strdup(details) : NULL;
        j->tls_failure = reason;

        /* RFC 3463 X.7.5: cryptographic failure. */
        if (tls_mode_required(j->tls_mode))
                text = reason_new("451 4.7.5 TLS required but %s at %s[%s]", reason, client_host(c), c->peer);
        else
                text = reason_new("451 4.7.5 %s at %s[%s]", reason, client_host(c), c->peer);
        if (!text)
                return -ENOMEM;
        return client_next_target(c, text);
}

/* The connection is gone or unusable. Before the first MAIL that is a
 * target failure; afterwards every pending recipient is deferred. */
static int client_connection_failed(Client *c, const char *what) {
        _cleanup_free_ char *reason = NULL;

        if (c->state == CLIENT_QUIT) {
                client_finish(c);
                return 0;
        }
        if (c->state == CLIENT_REUSE)
                return client_reuse_failed(c, what);

        reason = reason_new("451 4.4.2 %s with %s[%s] %s", what, client_host(c), c->peer,
                            c->state == CLIENT_GREETING ? "while waiting for the greeting" :
                            c->state == CLIENT_EHLO || c->state == CLIENT_HELO ? "after HELO/EHLO" :
                            c->state == CLIENT_STARTTLS ? "after STARTTLS" :
                            c->state == CLIENT_TRANSACTION ? "during MAIL/RCPT/DATA" :
                            c->state == CLIENT_BODY ? "while sending the message" :
                            c->state == CLIENT_DOT ? "after the end of data" : "between messages");
        if (!reason)
                return -ENOMEM;

        if (!c->began)
                return client_target_failed(c, reason, what, reason);

        defer_all_pending(c, reason);
        client_finish(c);
        return 0;
}

/* ---- connection cache ---- */

static int client_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

/* An idle connection. The connection itself (fd, tls) and `linked` are
 * under cache_lock until a job takes it; the rest is fixed once linked.
 * The struct belongs to its expiry timer, a floating source on the loop
 * that cached it: freeing that source (expiry, or the loop going away)
 * frees the struct and closes whatever connection is still in it. */
typedef struct CachedConnection CachedConnection;
struct CachedConnection {
        CachedConnection *next;         /* cache_list */
        bool linked;
        int fd;
        TlsSession *tls;                /* NULL: clear text */
        uint64_t idle_since;            /* CLOCK_MONOTONIC usec */

        uint64_t dcid;                  /* the job that opened the connection */
        uint32_t messages;              /* transactions it carried so far */
        char *domain;
        char *helo_name;
        char *host;                     /* the target's host, "" for a literal */
        TlsOutbound tls_mode;
        SSL_CTX *tls_ctx;               /* a reference: the pointer stays unique while cached */
        struct sockaddr_storage addr;
        socklen_t addrlen;
        char peer[INET6_ADDRSTRLEN];
        char iface[INET6_ADDRSTRLEN];
        bool pipelining;
        uint64_t size_max;
        int tls_verified;
        char *tls_verify_detail;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static CachedConnection *cache_list;    /* newest first */
static size_t cache_size;
static _Atomic uint64_t cache_time_limit = CLIENT_CACHE_TIME_LIMIT;

void smtp_client_set_cache_time_limit(uint64_t usec) {
        atomic_store(&cache_time_limit, usec);
}

/* An idle connection's end: QUIT, not waited for (RFC 5321 3.1); with TLS
 * the unread input (session tickets) is drained first and close_notify
 * follows, as in transport_tls_close(). */
static void cached_close(int fd, TlsSession *tls) {
        static const char quit[] = "QUIT\r\n";

        if (tls && fd >= 0) {
                char scratch[CLIENT_READ_CHUNK];
                uint32_t events;

                for (unsigned i = 0; i < CLIENT_TLS_DRAIN_READS; i++)
                        if (tls_session_read(tls, scratch, sizeof(scratch), &events) <= 0)
                                break;
                (void) tls_session_write(tls, quit, strlen(quit), &events);
                tls_session_shutdown(tls);
        } else if (fd >= 0)
                (void) send(fd, quit, strlen(quit), MSG_NOSIGNAL | MSG_DONTWAIT);
        tls_session_free(tls);
        safe_close(fd);
}

static void cached_free(CachedConnection *cc) {
        cached_close(cc->fd, cc->tls);
        free(cc->domain);
        free(cc->helo_name);
        free(cc->host);
        SSL_CTX_free(cc->tls_ctx);
        free(cc->tls_verify_detail);
        free(cc);
}

static void cache_unlink_locked(CachedConnection *cc) {
        for (CachedConnection **p = &cache_list; *p; p = &(*p)->next)
                if (*p == cc) {
                        *p = cc->next;
                        break;
                }
        cc->next = NULL;
        cc->linked = false;
        cache_size--;
}

/* The expiry timer is being freed: on expiry, or with its loop at
 * shutdown (then on whatever thread frees the loop). */
static void cached_destroy(void *userdata) {
        CachedConnection *cc = userdata;

        pthread_mutex_lock(&cache_lock);
        if (cc->linked)
                cache_unlink_locked(cc);
        pthread_mutex_unlock(&cache_lock);
        /* Taken: fd and tls were moved out under the lock. */
        cached_free(cc);
}

static int cached_expired(sd_event_source *s, uint64_t usec, void *userdata) {
        /* The loop holds the only reference: dropping it frees the source
         * once this callback returns, and cached_destroy() closes the
         * connection unless a job took it meanwhile. */
        (void) sd_event_source_set_floating(s, false);
        return 0;
}

static bool cached_matches_target(const CachedConnection *cc, const ResolvedTarget *t) {
        if (t->addr.ss_family != cc->addr.ss_family || t->addrlen != cc->addrlen || !streq(t->host ?: "", cc->host))
                return false;
        if (t->addr.ss_family == AF_INET) {
                const struct sockaddr_in *a = (const struct sockaddr_in *) &t->addr, *b = (const struct sockaddr_in *) &cc->addr;

                return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
        }
        if (t->addr.ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) &t->addr,
                        *b = (const struct sockaddr_in6 *) &cc->addr;

                return a->sin6_port == b->sin6_port && a->sin6_scope_id == b->sin6_scope_id &&
                       memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
        }
        return false;
}

/* Whether the connection may outlive the job: nothing went wrong on it,
 * no transaction is open and TLS, if it was started, is up. */
static bool client_may_cache(Client *c) {
        uint32_t limit = c->job->connection_message_limit;

        return atomic_load(&cache_time_limit) > 0 && !c->job->probe && !c->unclean && !c->need_rset &&
               c->fd >= 0 && c->io && (!c->tls || c->tls_up) && transport_output_empty(c) &&
               (limit == 0 || c->conn_messages < limit);
}

/* Hands the connection to the cache; on success the client has no
 * connection any more. -ENOSPC when the cache is full. */
static int client_cache_put(Client *c) {
        DeliveryJob *j = c->job;
        const ResolvedTarget *t = client_target(c);
        uint64_t limit = atomic_load(&cache_time_limit), now;
        sd_event_source *timer = NULL;
        CachedConnection *cc;
        size_t n_dest = 0;
        int r;

        if (limit == 0)
                return -EOPNOTSUPP;
        /* Unread input or decrypted bytes nobody asked for: out of step. */
        if (!buf_empty(&c->in) || (c->tls && tls_session_pending(c->tls) > 0))
                return -EBADMSG;

        pthread_mutex_lock(&cache_lock);
        for (CachedConnection *i = cache_list; i; i = i->next)
                n_dest += strcaseeq(i->domain, j->domain);
        bool full = cache_size >= CLIENT_CACHE_MAX || n_dest >= CLIENT_CACHE_PER_DESTINATION;
        pthread_mutex_unlock(&cache_lock);
        /* Checked before the connection leaves the loop, so that QUIT can
         * still go out; puts racing on other threads may pass the bounds
         * by at most one each. */
        if (full)
                return -ENOSPC;

        cc = calloc(1, sizeof(CachedConnection));
        if (!cc)
                return -ENOMEM;
        cc->fd = -EBADF;
        cc->dcid = c->opened_dcid ?: j->dcid;
        cc->messages = c->conn_messages;
        cc->domain = strdup(j->domain);
        cc->helo_name = strdup(j->helo_name);
        cc->host = strdup(t->host ?: "");
        cc->tls_mode = j->tls_mode;
        if (j->tls_ctx && SSL_CTX_up_ref(j->tls_ctx) == 1)
                cc->tls_ctx = j->tls_ctx;
        memcpy(&cc->addr, &t->addr, sizeof(cc->addr));
        cc->addrlen = t->addrlen;
        memcpy(cc->peer, c->peer, sizeof(cc->peer));
        memcpy(cc->iface, c->iface, sizeof(cc->iface));
        cc->pipelining = c->pipelining;
        cc->size_max = c->size_max;
        cc->tls_verified = c->tls_verified;
        cc->tls_verify_detail = c->tls_verify_detail ? strdup(c->tls_verify_detail) : NULL;
        if (!cc->domain || !cc->helo_name || !cc->host || (j->tls_ctx && !cc->tls_ctx) ||
            (c->tls_verify_detail && !cc->tls_verify_detail)) {
                cached_free(cc);
                return -ENOMEM;
        }

        r = sd_event_add_time_relative(c->event, &timer, CLOCK_MONOTONIC, limit, 0, cached_expired, cc);
        if (r < 0) {
                cached_free(cc);
                return r;
        }
        r = sd_event_source_set_destroy_callback(timer, cached_destroy);
        if (r < 0) {
                sd_event_source_unref(timer);
                cached_free(cc);
                return r;
        }
        /* From here on freeing the timer frees cc. */
        r = sd_event_source_set_floating(timer, true);
        sd_event_source_unref(timer);
        if (r < 0)
                return r;

        /* Idle, the fd is on no loop; the job that takes it adds it to its own. */
        c->io = sd_event_source_disable_unref(c->io);
        (void) sd_event_now(c->event, CLOCK_MONOTONIC, &now);

        pthread_mutex_lock(&cache_lock);
        cc->fd = TAKE_FD(c->fd);
        cc->tls = TAKE_PTR(c->tls);
        cc->idle_since = now;
        cc->linked = true;
        cc->next = cache_list;
        cache_list = cc;
        cache_size++;
        pthread_mutex_unlock(&cache_lock);

        c->tls_up = false;
        c->tls_read_events = c->tls_write_events = 0;
        return 0;
}

/* The last reply is consumed: keep the connection for the next job, or
 * QUIT as usual. */
static int client_idle(Client *c) {
        int r;

        r = client_cache_put(c);
        if (r >= 0) {
                client_finish(c);
                return 0;
        }
        r = client_send(c, "QUIT\r\n");
        if (r < 0)
                return r;
        c->state = CLIENT_QUIT;
        return client_arm_timer(c, c->job->command_timeout);
}

/* Takes a cached connection that fits the job and sends RSET on it.
 * Returns 1 when one was taken, 0 to connect as usual. */
static int client_cache_take(Client *c) {
        DeliveryJob *j = c->job;
        uint64_t limit = atomic_load(&cache_time_limit), now, opened_dcid = 0;
        CachedConnection *cc;
        size_t target = 0;
        int r;

        if (limit == 0 || j->probe)
                return 0;
        (void) sd_event_now(c->event, CLOCK_MONOTONIC, &now);

        pthread_mutex_lock(&cache_lock);
        for (cc = cache_list; cc; cc = cc->next) {
                /* Past its time but its loop has not got round to it yet. */
                if (now > cc->idle_since && now - cc->idle_since >= limit)
                        continue;
                if (!strcaseeq(cc->domain, j->domain) || !streq(cc->helo_name, j->helo_name) ||
                    cc->tls_mode != j->tls_mode || cc->tls_ctx != j->tls_ctx)
                        continue;
                /* The per-connection message limit counts every job on it. */
                if (j->connection_message_limit > 0 &&
                    (uint64_t) cc->messages + j->n_messages > j->connection_message_limit)
                        continue;
                for (target = 0; target < j->n_targets; target++)
                        if (cached_matches_target(cc, j->targets + target))
                                break;
                if (target < j->n_targets)
                        break;
        }
        if (cc) {
                /* Copied while linked: once unlocked its loop may free cc. */
                cache_unlink_locked(cc);
                c->fd = TAKE_FD(cc->fd);
                c->tls = TAKE_PTR(cc->tls);
                c->target = target;
                memcpy(c->peer, cc->peer, sizeof(c->peer));
                memcpy(c->iface, cc->iface, sizeof(c->iface));
                c->pipelining = cc->pipelining;
                c->size_max = cc->size_max;
                c->tls_verified = cc->tls_verified;
                c->tls_verify_detail = TAKE_PTR(cc->tls_verify_detail);
                opened_dcid = cc->dcid;
                c->conn_messages = cc->messages;
        }
        pthread_mutex_unlock(&cache_lock);
        if (!cc)
                return 0;

        c->opened_dcid = opened_dcid;
        c->tls_up = !!c->tls;
        r = sd_event_add_io(c->event, &c->io, c->fd, EPOLLIN, client_io, c);
        if (r < 0) {
                client_close_connection(c);
                c->opened_dcid = 0;
                c->target = 0;
                return 0;
        }
        j->tls_used = c->tls_up;
        j->ktls_tx = c->tls && tls_session_ktls_tx(c->tls);
        j->ktls_rx = c->tls && tls_session_ktls_rx(c->tls);

        log_dcid_reused(j->dcid, opened_dcid, j->domain, c->iface[0] ? c->iface : "unknown", c->peer,
                        sockaddr_port((const struct sockaddr *) &client_target(c)->addr), client_host(c));
        if (c->tls_up)
                log_dcid_tls(j->dcid, tls_session_protocol(c->tls) ?: "unknown", tls_session_cipher(c->tls) ?: "unknown",
                             j->ktls_tx, j->ktls_rx, c->tls_verified, c->tls_verify_detail);

        /* The last transaction on it ended; RSET shows the server is still
         * there and in step before MAIL (RFC 5321 4.1.1.5). */
        r = client_send(c, "RSET\r\n");
        if (r >= 0)
                r = client_arm_timer(c, j->command_timeout);
        if (r < 0)
                return r;
        c->state = CLIENT_REUSE;
        r = client_update_io(c);
        return r < 0 ? r : 1;
}

/* The cached connection is dead or out of step. Keeping it was only a
 * shortcut: close it and connect as any job would, with no error logged
 * or counted against the target. */
static int client_reuse_failed(Client *c, const char *why) {
        log_debug("DCID %" PRIu64 ": connection of DCID %" PRIu64 " to %s[%s] not reusable (%s), connecting",
                  c->job->dcid, c->opened_dcid, client_host(c), c->peer, why);
        client_close_connection(c);
        c->opened_dcid = 0;
        c->job->tls_used = c->job->ktls_tx = c->job->ktls_rx = false;
        c->target = 0;
        return client_connect_next(c);
}

/* ---- connect ---- */

/* A probe starts over on each target: what it reports is the last one. */
static int client_probe_target(Client *c) {
        DeliveryProbe *p = &c->job->probe_result;
        const ResolvedTarget *t = client_target(c);

        delivery_probe_done(p);
        p->host = strdup(t->host ?: "");
        if (!p->host)
                return -ENOMEM;
        snprintf(p->address, sizeof p->address, "%s", c->peer);
        p->port = sockaddr_port((const struct sockaddr *) &t->addr);
        c->job->ktls_tx = c->job->ktls_rx = false;
        return 0;
}

static int client_connect_next(Client *c) {
        DeliveryJob *j = c->job;
        int r;

        for (; c->target < j->n_targets; c->target++) {
                const ResolvedTarget *t = client_target(c);
                _cleanup_close_ int fd = -EBADF;

                c->iface[0] = '\0';
                c->began = c->need_rset = c->pipelining = c->greeted = c->unclean = false;
                c->size_max = 0;
                c->opened_dcid = 0;
                c->tls_verified = -1;
                c->tls_verify_detail = mfree(c->tls_verify_detail);
                (void) sockaddr_to_string((const struct sockaddr *) &t->addr, c->peer, sizeof(c->peer));
                if (j->probe) {
                        r = client_probe_target(c);
                        if (r < 0)
                                return r;
                }

                fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd >= 0) {
                        /* The body goes out with sendfile() and the final
                         * ".\r\n" as a small write right after it: with
                         * Nagle that write waits for the peer's delayed ACK
                         * (40 ms on Linux) on every message. Our writes are
                         * whole commands and replies already. */
                        int one = 1;
                        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                }
                if (fd < 0)
                        r = -errno;
                else if (connect(fd, (const struct sockaddr *) &t->addr, t->addrlen) < 0 && errno != EINPROGRESS)
                        r = -errno;
                else
                        r = 0;
                if (r < 0) {
                        _cleanup_free_ char *reason = NULL;

                        reason = reason_new("451 4.4.1 connect to %s[%s]:%u: %s", client_host(c), c->peer,
                                            sockaddr_port((const struct sockaddr *) &t->addr), strerror(-r));
                        log_connection_error(j->dcid, j->domain, c->peer, sockaddr_port((const struct sockaddr *) &t->addr),
                                             reason ?: "connect failed", "unknown", "connect failed");
                        free(c->last_reason);
                        c->last_reason = TAKE_PTR(reason);
                        continue;
                }

                r = sd_event_add_io(c->event, &c->io, fd, EPOLLOUT, client_io, c);
                if (r < 0)
                        return r;
                c->fd = TAKE_FD(fd);
                c->state = CLIENT_CONNECTING;
                return client_arm_timer(c, j->connect_timeout);
        }

        /* Every target failed: nothing was attempted on any connection. */
        if (j->probe && !j->probe_result.error)
                j->probe_result.error = strdup(c->last_reason ?: "451 4.4.1 no target to connect to");
        defer_all_pending(c, c->last_reason ?: "451 4.4.1 no target to connect to");
        client_finish(c);
        return 0;
}

static int client_connected(Client *c) {
        const ResolvedTarget *t = client_target(c);
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);
        int err = 0;
        socklen_t errlen = sizeof(err);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0)
                err = errno;
        if (err != 0) {
                _cleanup_free_ char *reason = NULL;

                reason = reason_new("451 4.4.1 connect to %s[%s]:%u: %s", client_host(c), c->peer,
                                    sockaddr_port((const struct sockaddr *) &t->addr), strerror(err));
                if (!reason)
                        return -ENOMEM;
                return client_target_failed(c, reason, "connect failed", reason);
        }

        if (getsockname(c->fd, (struct sockaddr *) &sa, &salen) >= 0)
                (void) sockaddr_to_string((const struct sockaddr *) &sa, c->iface, sizeof(c->iface));
        log_dcid_new(c->job->dcid, c->job->domain, c->iface[0] ? c->iface : "unknown", c->peer,
                     sockaddr_port((const struct sockaddr *) &t->addr), client_host(c));

        /* RFC 5321 4.5.3.2.1: initial 220 message. */
        c->state = CLIENT_GREETING;
        return client_arm_timer(c, c->job->command_timeout);
}

/* ---- transaction ---- */

static DeliveryMessage *client_message(Client *c) {
        return c->job->messages + c->msg;
}

static bool message_has_pending(const DeliveryMessage *m) {
        for (size_t k = 0; k < m->n_rcpts; k++)
                if (m->rcpts[k].status == DELIVERY_PENDING)
                        return true;
        return false;
}

/* Command i of the transaction: 0 MAIL, 1..n RCPT, n+1 DATA. */
static int client_send_command(Client *c, size_t i) {
        DeliveryMessage *m = client_message(c);

        if (i == 0)     /* SIZE= only when offered (RFC 1870 6) */
                return c->size_max > 0 ?
                        client_send(c, "MAIL FROM:<%s> SIZE=%" PRIu64 "\r\n", m->sender ?: "", m->data_size) :
                        client_send(c, "MAIL FROM:<%s>\r\n", m->sender ?: "");
        if (i <= c->n_tx_rcpts)
                return client_send(c, "RCPT TO:<%s>\r\n", m->rcpts[c->tx_rcpts[i - 1]].address);
        return client_send(c, "DATA\r\n");
}

/* RFC 5321 4.1.2 paths: refuse anything that could break the command line. */
static bool path_is_safe(const char *s) {
        if (strlen(s) > SMTP_PATH_MAX)
                return false;
        for (const char *p = s; *p; p++)
                if ((unsigned char) *p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>')
                        return false;
        return true;
}

/* Checks the last two data octets: the spool keeps the CRLF before "."
 * as part of the data, anything else needs one added. */
static bool data_ends_with_crlf(const DeliveryMessage *m) {
        char t[2];

        if (m->data_size < 2)
                return false;
        return pread(m->data_fd, t, 2, (off_t) (m->data_offset + m->data_size - 2)) == 2 &&
               t[0] == '\r' && t[1] == '\n';
}

static int client_start_message(Client *c) {
        DeliveryMessage *m = client_message(c);
        _cleanup_free_ uint32_t *rids = NULL;
        size_t n = 0;
        int r;

        if (!path_is_safe(m->sender ?: "")) {
                for (size_t k = 0; k < m->n_rcpts; k++)
                        if (m->rcpts[k].status == DELIVERY_PENDING)
                                rcpt_set(m->rcpts + k, DELIVERY_FAILED, "553 5.1.7 invalid sender address");
                return client_next_message(c);
        }

        c->n_tx_rcpts = c->n_accepted = c->n_sent = c->n_replied = 0;
        c->mail_ok = c->discard_dot = false;
        rids = malloc(sizeof(uint32_t) * MAX(m->n_rcpts, (size_t) 1));
        free(c->tx_rcpts);
        free(c->tx_accepted);
        c->tx_rcpts = calloc(MAX(m->n_rcpts, (size_t) 1), sizeof(size_t));
        c->tx_accepted = calloc(MAX(m->n_rcpts, (size_t) 1), sizeof(bool));
        if (!rids || !c->tx_rcpts || !c->tx_accepted)
                return -ENOMEM;

        for (size_t k = 0; k < m->n_rcpts; k++) {
                DeliveryRcpt *rc = m->rcpts + k;

                if (rc->status != DELIVERY_PENDING)
                        continue;
                if (isempty(rc->address) || !path_is_safe(rc->address)) {
                        rcpt_set(rc, DELIVERY_FAILED, "553 5.1.3 invalid recipient address");
                        continue;
                }
                c->tx_rcpts[c->n_tx_rcpts++] = k;
                rids[n++] = rc->rid;
        }
        if (c->n_tx_rcpts == 0)
                return client_next_message(c);

        log_delivery_start(c->job->dcid, m->mid, rids, n);

        if (m->data_fd < 0) {
                defer_all_pending(c, "451 4.3.0 message data not available");
                return client_next_message(c);
        }
        /* RFC 1870 4: do not send what the server said it will refuse. */
        if (c->size_max > 0 && m->data_size > c->size_max) {
                _cleanup_free_ char *reason = NULL;

                reason = reason_new("552 5.3.4 message size %" PRIu64 " exceeds size limit %" PRIu64 " of %s[%s]",
                                    m->data_size, c->size_max, client_host(c), c->peer);
                if (!reason)
                        return -ENOMEM;
                for (size_t k = 0; k < c->n_tx_rcpts; k++)
                        rcpt_set(m->rcpts + c->tx_rcpts[k], DELIVERY_FAILED, reason);
                return client_next_message(c);
        }
        c->body_needs_crlf = m->data_size > 0 && !data_ends_with_crlf(m);

        c->began = true;
        c->state = CLIENT_TRANSACTION;
        if (c->pipelining) {
                /* RFC 2920 3.1: MAIL, RCPTs and DATA in one batch. */
                for (size_t i = 0; i <= c->n_tx_rcpts + 1; i++) {
                        r = client_send_command(c, i);
                        if (r < 0)
                                return r;
                }
                c->n_sent = c->n_tx_rcpts + 2;
        } else {
                r = client_send_command(c, 0);
                if (r < 0)
                        return r;
                c->n_sent = 1;
        }
        return client_arm_timer(c, c->job->command_timeout);
}

/* This message is settled (or left to RSET); on to the next. */
static int client_message_done(Client *c) {
        c->msg++;
        return client_next_message(c);
}

/* Moves to the next message with pending recipients, with RSET first if
 * the last transaction may still be open; QUIT when there is none. */
static int client_next_message(Client *c) {
        DeliveryJob *j = c->job;
        int r;

        while (c->msg < j->n_messages && !message_has_pending(j->messages + c->msg))
                c->msg++;

        if (c->msg >= j->n_messages) {
                /* Decided once the reply that brought us here is consumed
                 * (client_process_input): nothing else may be pending. */
                if (client_may_cache(c)) {
                        c->state = CLIENT_IDLE;
                        return 0;
                }
                r = client_send(c, "QUIT\r\n");
                if (r < 0)
                        return r;
                c->state = CLIENT_QUIT;
                return client_arm_timer(c, j->command_timeout);
        }

        if (c->need_rset) {
                r = client_send(c, "RSET\r\n");
                if (r < 0)
                        return r;
                c->need_rset = false;
                c->state = CLIENT_RSET;
                return client_arm_timer(c, j->command_timeout);
        }
        return client_start_message(c);
}

/* The transaction ended: the accepted recipients get `status`. */
static void client_settle_accepted(Client *c, DeliveryStatus status, const char *text) {
        DeliveryMessage *m = client_message(c);

        for (size_t k = 0; k < c->n_tx_rcpts; k++)
                if (c->tx_accepted[k] && m->rcpts[c->tx_rcpts[k]].status == DELIVERY_PENDING)
                        rcpt_set(m->rcpts + c->tx_rcpts[k], status, text);
}

static int client_begin_body(Client *c) {
        DeliveryMessage *m = client_message(c);

        c->state = CLIENT_BODY;
        c->body_offset = m->data_offset;
        c->body_left = m->data_size;
        return client_arm_timer(c, c->job->command_timeout);
}

static int client_handle_transaction(Client *c, const SmtpReply *reply, const char *text) {
        DeliveryMessage *m = client_message(c);
        size_t i = c->n_replied++;
        int r;

        if (i == 0) {
                /* MAIL */
                c->mail_ok = reply->code >= 200 && reply->code < 300;
                if (!c->mail_ok)
                        for (size_t k = 0; k < c->n_tx_rcpts; k++)
                                rcpt_set(m->rcpts + c->tx_rcpts[k], status_from_code(reply->code), text);
                else
                        c->need_rset = true;
                if (!c->pipelining) {
                        if (!c->mail_ok)
                                return client_message_done(c);
                        r = client_send_command(c, c->n_sent++);
                        if (r < 0)
                                return r;
                }
        } else if (i <= c->n_tx_rcpts) {
                /* RCPT: after a refused MAIL the replies are only drained. */
                if (c->mail_ok) {
                        DeliveryRcpt *rc = m->rcpts + c->tx_rcpts[i - 1];

                        if (reply->code >= 200 && reply->code < 300) {
                                c->tx_accepted[i - 1] = true;
                                c->n_accepted++;
                        } else
                                rcpt_set(rc, status_from_code(reply->code), text);
                }
                if (!c->pipelining) {
                        if (i == c->n_tx_rcpts && c->n_accepted == 0)
                                return client_message_done(c);     /* need_rset is set */
                        r = client_send_command(c, c->n_sent++);
                        if (r < 0)
                                return r;
                }
        } else {
                /* DATA */
                if (reply->code == 354) {
                        if (c->mail_ok && c->n_accepted > 0)
                                return client_begin_body(c);
                        /* RFC 2920 3.1: a pipelined DATA may be accepted with
                         * no valid recipient; end it empty and forget it. */
                        c->discard_dot = true;
                        c->state = CLIENT_DOT;
                        r = client_send(c, ".\r\n");
                        if (r < 0)
                                return r;
                        return client_arm_timer(c, c->job->data_timeout);
                }
                if (c->mail_ok)
                        client_settle_accepted(c, reply->code >= 200 && reply->code < 300 ?
                                               DELIVERY_DEFERRED : status_from_code(reply->code), text);
                return client_message_done(c);
        }
        return client_arm_timer(c, c->job->command_timeout);
}

/* ---- STARTTLS (RFC 3207) ---- */

static bool is_ip_literal(const char *s) {
        struct in6_addr a;

        return inet_pton(AF_INET, s, &a) == 1 || inet_pton(AF_INET6, s, &a) == 1;
}

/* The host name the certificate is asked for (SNI, RFC 6066 3): the MX or
 * route host connected to, or the domain when that is an address. */
static const char *client_tls_server_name(Client *c) {
        const char *h = client_target(c)->host;

        return isempty(h) || is_ip_literal(h) ? c->job->domain : h;
}

static int client_tls_handshake_failed(Client *c, const char *details) {
        return client_tls_failed(c, DELIVERY_TLS_HANDSHAKE, details);
}

/* A probe's record of the session, whatever the mode asks for. */
static int client_probe_tls(Client *c) {
        DeliveryProbe *p = &c->job->probe_result;
        const char *host = client_target(c)->host;
        const char *names[2] = { c->job->domain, host };
        size_t n_names = isempty(host) || is_ip_literal(host) ? 1 : 2;
        const char *e;
        int r;

        p->tls = true;
        p->protocol = strdup(tls_session_protocol(c->tls) ?: "");
        p->cipher = strdup(tls_session_cipher(c->tls) ?: "");
        if (!p->protocol || !p->cipher)
                return -ENOMEM;
        p->verified = tls_session_peer_verified(c->tls);
        e = p->verified ? NULL : tls_session_verify_error(c->tls) ?: "no certificate";
        if (e && !(p->verify_error = strdup(e)))
                return -ENOMEM;
        p->name_match = tls_session_check_name(c->tls, names, n_names);
        r = tls_session_peer_names(c->tls, &p->names);
        if (r >= 0)
                r = tls_session_peer_chain(c->tls, &p->chain);
        return r;
}

/* The handshake is done: check the peer as the mode asks, then EHLO again. */
static int client_tls_established(Client *c) {
        DeliveryJob *j = c->job;
        const char *failure = NULL, *detail = NULL;
        int verified = -1, r;

        c->tls_up = true;
        c->tls_read_events = c->tls_write_events = 0;
        j->tls_used = true;
        j->ktls_tx = tls_session_ktls_tx(c->tls);
        j->ktls_rx = tls_session_ktls_rx(c->tls);
        if (j->probe) {
                r = client_probe_tls(c);
                if (r < 0)
                        return r;
        }

        if (tls_mode_verifies(j->tls_mode)) {
                const char *host = client_target(c)->host;
                const char *names[2] = { j->domain, host };
                size_t n_names = isempty(host) || is_ip_literal(host) ? 1 : 2;

                if (!tls_session_peer_verified(c->tls)) {
                        failure = DELIVERY_TLS_UNTRUSTED;
                        detail = tls_session_verify_error(c->tls) ?: "no certificate";
                } else if (!tls_session_check_name(c->tls, names, n_names)) {
                        failure = DELIVERY_TLS_NAME_MISMATCH;
                        detail = "name mismatch";
                }
                verified = !failure;
        }
        /* Kept for the log lines of the jobs that reuse the connection. */
        c->tls_verified = verified;
        free(c->tls_verify_detail);
        c->tls_verify_detail = detail ? strdup(detail) : NULL;
        if (detail && !c->tls_verify_detail)
                return -ENOMEM;
        log_dcid_tls(j->dcid, tls_session_protocol(c->tls) ?: "unknown", tls_session_cipher(c->tls) ?: "unknown",
                     j->ktls_tx, j->ktls_rx, verified, detail);

        if (failure && j->tls_mode == TLS_OUT_REQUIRED_VERIFY) {
                /* The QUIT goes out over TLS: the server is in TLS now. */
                c->state = CLIENT_EHLO;
                return client_tls_failed(c, failure, detail);
        }
        client_tls_policy_met(c);

        /* RFC 3207 4.2: forget what the server said before TLS and ask again. */
        c->pipelining = false;
        c->size_max = 0;
        r = client_send(c, "EHLO %s\r\n", j->helo_name);
        if (r < 0)
                return r;
        c->state = CLIENT_EHLO;
        return client_arm_timer(c, j->command_timeout);
}

static int client_tls_handshake(Client *c) {
        uint32_t events = 0;
        int r;

        r = tls_session_handshake(c->tls, &events);
        if (r == -EAGAIN) {
                c->tls_read_events = events;
                c->tls_write_events = 0;
                return 0;
        }
        if (r < 0) {
                const char *e = tls_session_error(c->tls);
                return client_tls_handshake_failed(c, !isempty(e) ? e : strerror(-r));
        }
        return client_tls_established(c);
}

/* The 220 to STARTTLS is consumed: start the handshake. */
static int client_tls_start(Client *c) {
        DeliveryJob *j = c->job;
        int r;

        /* Anything the server sent after its 220 was sent before TLS and
         * could be taken for a reply from inside it (CVE-2011-0411). */
        if (!buf_empty(&c->in)) {
                buf_clear(&c->in);
                return client_tls_handshake_failed(c, "clear text after the 220 reply to STARTTLS");
        }

        r = tls_session_new(j->tls_ctx, c->fd, false, client_tls_server_name(c),
                            tls_mode_verifies(j->tls_mode) || j->probe ? TLS_VERIFY_OPTIONAL : TLS_VERIFY_NONE,
                            &c->tls);
        if (r < 0) {
                _cleanup_free_ char *e = reason_new("cannot set up a TLS session: %s", strerror(-r));
                return client_tls_handshake_failed(c, e ?: "cannot set up a TLS session");
        }
        c->state = CLIENT_HANDSHAKE;
        r = client_arm_timer(c, j->command_timeout);
        if (r < 0)
                return r;
        return client_tls_handshake(c);
}

/* The reply to EHLO (in clear) decides whether STARTTLS is sent. Returns
 * 1 when it was, 0 to go on without TLS, or a target change. */
static int client_tls_after_ehlo(Client *c, const SmtpReply *reply) {
        DeliveryJob *j = c->job;
        int r;

        if (c->tls_up)
                return 0;
        if (j->probe)
                j->probe_result.starttls = smtp_reply_has_extension(reply, "STARTTLS", NULL);
        if (j->tls_mode == TLS_OUT_NONE)
                return 0;
        if (!smtp_reply_has_extension(reply, "STARTTLS", NULL)) {
                if (tls_mode_required(j->tls_mode))
                        return client_tls_failed(c, DELIVERY_TLS_NOT_OFFERED, NULL);
                return 0;
        }
        r = client_send(c, "STARTTLS\r\n");
        if (r < 0)
                return r;
        c->state = CLIENT_STARTTLS;
        r = client_arm_timer(c, j->command_timeout);
        return r < 0 ? r : 1;
}

/* The reply to STARTTLS: 220 starts the handshake once the reply is
 * consumed (client_process_input); an error reply ends a required* target,
 * the preferred* modes go on in clear text. */
static int client_handle_starttls(Client *c, const SmtpReply *reply, const char *text) {
        _cleanup_free_ char *details = NULL;
        const char *t = text;

        if (reply->code == 220) {
                c->state = CLIENT_TLS_START;
                return 0;
        }

        /* "454-'TLS not available due to temporary reason'": the text
         * without code and enhanced code, as the appliance logs it. */
        size_t el = strlen(reply->enhanced);
        if (strlen(t) > 4)
                t += 4;
        if (el > 0 && strncmp(t, reply->enhanced, el) == 0)
                t += el;
        while (*t == ' ')
                t++;
        details = reason_new("%03d-'%s'", reply->code, t);
        if (!details)
                return -ENOMEM;
        client_log_connection_error(c, details, "unexpected SMTP response");
        if (tls_mode_required(c->job->tls_mode))
                return client_tls_failed(c, DELIVERY_TLS_REFUSED, text);

        if (c->job->probe) {
                free(c->job->probe_result.error);
                c->job->probe_result.error = reason_new("%s: %s", DELIVERY_TLS_REFUSED, text);
        }
        /* Nothing changed on the connection: the first EHLO still holds. */
        client_tls_policy_met(c);
        return client_next_message(c);
}

static int client_handle_reply(Client *c, const SmtpReply *reply) {
        _cleanup_free_ char *text = NULL;
        int r;

        text = reply_format(reply);
        if (!text)
                return -ENOMEM;

        if (c->state == CLIENT_REUSE) {
                if (reply->code >= 200 && reply->code < 300)
                        return client_next_message(c);
                return client_reuse_failed(c, text);
        }
        /* A connection that carried an error is not kept for later jobs. */
        if (reply->code >= 400 && (c->state == CLIENT_TRANSACTION || c->state == CLIENT_DOT || c->state == CLIENT_RSET))
                c->unclean = true;

        /* RFC 5321 3.8: 421 means the server is closing the channel,
         * whatever the command was. */
        if (reply->code == 421 && c->state != CLIENT_QUIT) {
                if (!c->began)
                        return client_target_failed(c, text, "service not available", text);
                defer_all_pending(c, text);
                client_finish(c);
                return 0;
        }

        switch (c->state) {

        case CLIENT_GREETING:
                if (reply->code < 200 || reply->code >= 300)
                        return client_target_failed(c, text, "greeting rejected", text);
                c->greeted = true;
                r = client_send(c, "EHLO %s\r\n", c->job->helo_name);
                if (r < 0)
                        return r;
                c->state = CLIENT_EHLO;
                return client_arm_timer(c, c->job->command_timeout);

        case CLIENT_EHLO:
                if (reply->code >= 500 && reply->code < 600) {
                        /* No ESMTP, so no STARTTLS (RFC 3207 4). */
                        if (!c->tls_up && tls_mode_required(c->job->tls_mode))
                                return client_tls_failed(c, DELIVERY_TLS_NO_ESMTP, text);
                        /* RFC 5321 3.2: fall back to HELO. */
                        r = client_send(c, "HELO %s\r\n", c->job->helo_name);
                        if (r < 0)
                                return r;
                        c->state = CLIENT_HELO;
                        return client_arm_timer(c, c->job->command_timeout);
                }
                if (reply->code < 200 || reply->code >= 300)
                        return client_target_failed(c, text, "EHLO rejected", text);

                SmtpView arg = {};
                c->pipelining = smtp_reply_has_extension(reply, "PIPELINING", NULL);
                c->size_max = 0;
                if (smtp_reply_has_extension(reply, "SIZE", &arg)) {
                        char num[24];
                        uint64_t v;

                        /* RFC 1870 4: no argument or 0 means no fixed limit;
                         * SIZE is still offered, so it is sent (UINT64_MAX
                         * here stands for "offered, no limit"). */
                        c->size_max = UINT64_MAX;
                        if (arg.len > 0 && arg.len < sizeof(num)) {
                                memcpy(num, arg.p, arg.len);
                                num[arg.len] = '\0';
                                if (parse_uint64(num, &v) >= 0 && v > 0)
                                        c->size_max = v;
                        }
                }

                size_t target = c->target;
                r = client_tls_after_ehlo(c, reply);
                if (r != 0 || c->target != target || c->state == CLIENT_FINISHED)
                        return r < 0 ? r : 0;
                if (!c->tls_up)
                        client_tls_policy_met(c);
                return client_next_message(c);

        case CLIENT_HELO:
                if (reply->code < 200 || reply->code >= 300)
                        return client_target_failed(c, text, "HELO rejected", text);
                if (!c->tls_up)
                        client_tls_policy_met(c);
                return client_next_message(c);

        case CLIENT_STARTTLS:
                return client_handle_starttls(c, reply, text);

        case CLIENT_TRANSACTION:
                return client_handle_transaction(c, reply, text);

        case CLIENT_DOT:
                if (!c->discard_dot)
                        client_settle_accepted(c, status_from_code(reply->code), text);
                /* The transaction is over either way (RFC 5321 4.1.1.4). */
                c->need_rset = false;
                c->msg++;
                c->conn_messages++;
                return client_next_message(c);

        case CLIENT_RSET:
                if (reply->code < 200 || reply->code >= 300) {
                        defer_all_pending(c, text);
                        client_finish(c);
                        return 0;
                }
                return client_next_message(c);

        case CLIENT_QUIT:
                client_finish(c);
                return 0;

        default:
                /* A reply nobody asked for: the dialogue is out of step. */
                return client_connection_failed(c, "unexpected reply");
        }
}

static bool client_expects_reply(Client *c) {
        switch (c->state) {
        case CLIENT_GREETING:
        case CLIENT_EHLO:
        case CLIENT_HELO:
        case CLIENT_STARTTLS:
        case CLIENT_DOT:
        case CLIENT_RSET:
        case CLIENT_REUSE:
        case CLIENT_QUIT:
                return true;
        case CLIENT_TRANSACTION:
                return c->n_replied < c->n_sent;
        default:
                return false;
        }
}

static int client_process_input(Client *c) {
        while (client_expects_reply(c) && !buf_empty(&c->in)) {
                SmtpReply reply;
                size_t consume = 0;
                int r;

                r = smtp_reply_parse(buf_peek(&c->in), buf_len(&c->in), &reply, &consume);
                if (r == 0)
                        break;
                if (r < 0)
                        return client_connection_failed(c, "malformed reply");

                /* The view points into c->in: handle before consuming. The
                 * handler may clear the buffer on a connection change. */
                size_t target = c->target;
                r = client_handle_reply(c, &reply);
                if (r < 0)
                        return r;
                if (c->state == CLIENT_FINISHED || c->state == CLIENT_CONNECTING || c->target != target)
                        return 0;
                buf_consume(&c->in, consume);
                if (c->state == CLIENT_TLS_START)
                        return client_tls_start(c);
                if (c->state == CLIENT_IDLE)
                        return client_idle(c);
        }
        return 0;
}

static int client_write_body(Client *c) {
        DeliveryMessage *m = client_message(c);
        int r;

        while (c->body_left > 0) {
                ssize_t n = transport_send_body(c, m->data_fd, &c->body_offset,
                                                (size_t) MIN(c->body_left, (uint64_t) CLIENT_SENDFILE_CHUNK));
                if (n == -EAGAIN)
                        return 0;
                if (n < 0)
                        return client_connection_failed(c, n == -EIO ? "spool data short" : "lost connection");
                c->body_left -= (uint64_t) n;
                /* Progress restarts the clock (RFC 5321 4.5.3.2.5 data block). */
                r = client_arm_timer(c, c->job->command_timeout);
                if (r < 0)
                        return r;
                if (c->body_left > 0)
                        return 0;       /* yield; EPOLLOUT brings us back */
        }

        r = client_send(c, c->body_needs_crlf ? "\r\n.\r\n" : ".\r\n");
        if (r < 0)
                return r;
        c->state = CLIENT_DOT;
        c->discard_dot = false;
        /* RFC 5321 4.5.3.2.6: the reply to "." gets its own, longer time. */
        return client_arm_timer(c, c->job->data_timeout);
}

/* ---- event callbacks ---- */

static void client_complete(Client *c) {
        smtp_client_done_fn_t done = c->done;
        DeliveryJob *job = c->job;
        void *userdata = c->userdata;

        client_free(c);
        done(job, userdata);
}

/* After a callback: report an internal error as a deferral, flush, and
 * complete the job when finished. */
static int client_after(Client *c, int r) {
        if (r < 0 && c->state != CLIENT_FINISHED) {
                _cleanup_free_ char *reason = reason_new("451 4.3.0 local error: %s", strerror(-r));

                defer_all_pending(c, reason ?: "451 4.3.0 local error");
                client_finish(c);
        }

        if (c->state != CLIENT_FINISHED && c->fd >= 0 && c->state != CLIENT_CONNECTING &&
            c->state != CLIENT_HANDSHAKE) {
                ssize_t n = transport_write(c);
                if (n < 0 && n != -EAGAIN)
                        (void) client_connection_failed(c, "lost connection");
        }
        if (c->state != CLIENT_FINISHED && client_update_io(c) < 0) {
                defer_all_pending(c, "451 4.3.0 local error");
                client_finish(c);
        }
        if (c->state == CLIENT_FINISHED)
                client_complete(c);
        return 0;
}

static int client_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Client *c = userdata;
        ssize_t n;
        int r = 0;

        if (c->state == CLIENT_CONNECTING)
                return client_after(c, client_connected(c));
        if (c->state == CLIENT_HANDSHAKE)
                return client_after(c, client_tls_handshake(c));

        /* With TLS, either direction may wait on either readiness, so every
         * wakeup retries what is pending (the calls return -EAGAIN cheaply). */
        bool tls = transport_tls(c);

        /* In BODY a hangup shows up through the next write (EPIPE). */
        if ((revents & (EPOLLOUT | (c->state == CLIENT_BODY ? EPOLLHUP | EPOLLERR : 0))) ||
            (tls && (!transport_output_empty(c) || c->state == CLIENT_BODY))) {
                n = transport_write(c);
                if (n < 0 && n != -EAGAIN)
                        return client_after(c, client_connection_failed(c, "lost connection"));
                if (c->state == CLIENT_BODY && transport_output_empty(c)) {
                        r = client_write_body(c);
                        if (r < 0 || c->state == CLIENT_FINISHED)
                                return client_after(c, r);
                }
        }

        if (((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) || tls) && c->state != CLIENT_BODY)
                for (;;) {
                        n = transport_read(c);
                        if (n == 0 || (n < 0 && n != -EAGAIN && n != -ENOBUFS))
                                return client_after(c, client_connection_failed(c, "lost connection"));
                        if (n == -ENOBUFS)
                                return client_after(c, client_connection_failed(c, "reply too long"));
                        r = client_process_input(c);
                        /* OpenSSL may hold decrypted bytes that epoll knows
                         * nothing about: with TLS read until it would block. */
                        if (r < 0 || n == -EAGAIN || !tls || !transport_tls(c) ||
                            c->state == CLIENT_FINISHED || c->state == CLIENT_BODY)
                                break;
                }
        return client_after(c, r);
}

static int client_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Client *c = userdata;
        int r;

        if (c->state == CLIENT_CONNECTING) {
                _cleanup_free_ char *reason = NULL;

                reason = reason_new("451 4.4.1 connect to %s[%s]:%u: timed out", client_host(c), c->peer,
                                    sockaddr_port((const struct sockaddr *) &client_target(c)->addr));
                r = reason ? client_target_failed(c, reason, "connect timeout", reason) : -ENOMEM;
        } else if (c->state == CLIENT_HANDSHAKE)
                r = client_tls_handshake_failed(c, "timed out");
        else
                r = client_connection_failed(c, "timeout");
        return client_after(c, r);
}

static void deliver_maildir(DeliveryJob *j) {
        for (size_t m = 0; m < j->n_messages; m++) {
                DeliveryMessage *msg = j->messages + m;
                _cleanup_free_ uint32_t *rids = calloc(msg->n_rcpts + 1, sizeof *rids);

                if (rids) {
                        for (size_t k = 0; k < msg->n_rcpts; k++)
                                rids[k] = msg->rcpts[k].rid;
                        log_delivery_start(j->dcid, msg->mid, rids, msg->n_rcpts);
                }
                for (size_t k = 0; k < msg->n_rcpts; k++) {
                        DeliveryRcpt *rc = msg->rcpts + k;
                        _cleanup_free_ char *name = NULL, *text = NULL;
                        int r;

                        if (rc->status != DELIVERY_PENDING)
                                continue;
                        r = local_deliver(j->maildir, msg->mid, rc->rid, msg->sender ?: "", rc->address,
                                          msg->data_fd, msg->data_offset, msg->data_size, &name);
                        if (r < 0)
                                text = reason_new("451 4.3.0 maildir delivery to %s failed: %s", j->maildir, strerror(-r));
                        else
                                text = reason_new("250 2.0.0 delivered to maildir as %s", name);
                        rcpt_set(rc, r < 0 ? DELIVERY_DEFERRED : DELIVERY_DELIVERED,
                                 text ?: (r < 0 ? "451 4.3.0 maildir delivery failed" : "250 2.0.0 delivered"));
                }
        }
}

static int client_defer_done(sd_event_source *s, void *userdata) {
        Client *c = userdata;

        if (c->job->maildir)
                deliver_maildir(c->job);
        client_complete(c);
        return 0;
}

int smtp_client_start(sd_event *e, DeliveryJob *job, smtp_client_done_fn_t done, void *userdata) {
        Client *c;
        int r;

        if (!e || !job || !done)
                return -EINVAL;
        if (!job->maildir && (isempty(job->helo_name) || isempty(job->domain)))
                return -EINVAL;
        if (job->tls_mode < 0 || job->tls_mode >= _TLS_OUT_MAX ||
            (!job->maildir && job->tls_mode != TLS_OUT_NONE && !job->tls_ctx))
                return -EINVAL;

        if (job->probe && (job->maildir || job->n_messages > 0))
                return -EINVAL;

        /* The outcome of this attempt only. */
        delivery_probe_done(&job->probe_result);
        job->tls_failure = NULL;
        job->tls_failure_details = mfree(job->tls_failure_details);
        job->tls_used = job->ktls_tx = job->ktls_rx = job->sendfile_used = false;

        c = calloc(1, sizeof(Client));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(e);
        c->job = job;
        c->done = done;
        c->userdata = userdata;
        c->fd = -EBADF;
        buf_init(&c->in, CLIENT_INPUT_MAX);
        buf_init(&c->out, CLIENT_OUTPUT_MAX);

        if (job->maildir) {
                /* Local delivery: done() must still come from the loop, not
                 * from inside this call. */
                r = sd_event_add_defer(e, &c->defer, client_defer_done, c);
                if (r < 0) {
                        client_free(c);
                        return r;
                }
                return 0;
        }

        r = sd_event_add_time_relative(e, &c->timer, CLOCK_MONOTONIC, USEC_PER_SEC, 0, client_timer, c);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        if (r < 0) {
                client_free(c);
                return r;
        }

        c->tls_verified = -1;
        r = client_cache_take(c);
        if (r < 0) {
                client_free(c);
                return r;
        }
        if (r > 0)
                return 0;

        /* Failures to connect become deferrals; done() still runs from the
         * loop, so the first attempt goes through a defer source too. */
        r = client_connect_next(c);
        if (r < 0 || c->state == CLIENT_FINISHED) {
                if (r < 0) {
                        client_free(c);
                        return r;
                }
                r = sd_event_add_defer(e, &c->defer, client_defer_done, c);
                if (r < 0) {
                        client_free(c);
                        return r;
                }
        }
        return 0;
}
