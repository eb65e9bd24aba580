/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Inbound SMTP session state machine (RFC 5321, RFC 2920 PIPELINING,
 * RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 2034 ENHANCEDSTATUSCODES).
 *
 * A session lives on one worker loop. Input is read into a bounded Buf and
 * parsed with smtp-parse.c; all replies produced by one batch of pipelined
 * input are written together. DATA is streamed to the spool as it arrives
 * (wire form, unchanged) and acknowledged only after the group commit.
 * Bare CR or LF inside DATA never ends the message; such a message is read
 * to its real end and refused, so nothing smuggled is ever relayed.
 */

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "smtp-parse.h"
#include "smtp-server.h"
#include "spool.h"
#include "tls.h"
#include "util/buf.h"
#include "util/macro.h"
#include "util/parse.h"

/* Input held at most: enough for a window of pipelined commands or a chunk
 * of DATA; longer command lines are skipped by the line reader. */
#define SESSION_INPUT_MAX (64 * 1024)
#define SESSION_READ_CHUNK (16 * 1024)
/* Stop reading while this much output is unsent (a client that pipelines
 * but never reads replies cannot make us buffer without bound). */
#define SESSION_OUTPUT_HIGH (64 * 1024)
#define SESSION_OUTPUT_MAX (256 * 1024)
/* Idle sessions keep at most this much buffer memory. */
#define SESSION_BUF_KEEP 1024
/* RFC 5321 4.1.4: a HELO/EHLO argument is a domain or address literal;
 * bound what we copy into logs and the Received: header. */
#define SESSION_HELO_MAX 255

typedef enum SessionState {
        SESSION_LOOKUP,         /* reverse DNS before the greeting */
        SESSION_COMMAND,
        SESSION_DATA,
        SESSION_COMMIT,         /* waiting for the spool's group commit */
        SESSION_STARTTLS,       /* 220 queued: handshake once it is sent */
        SESSION_HANDSHAKE,      /* TLS handshake in progress */
        SESSION_CLOSING,        /* flush output, then close */
} SessionState;

struct SmtpServer {
        SmtpServer *next, *prev;
        Worker *worker;
        SessionSetup *setup;
        SmtpLimits limits;
        char peer_ip[INET6_ADDRSTRLEN];
        uint16_t peer_port;

        int fd;
        sd_event_source *io;
        sd_event_source *timer;
        sd_event_source *kick;  /* reads input no new event will announce */
        uint32_t io_events;
        bool readable;          /* the socket may hold input not read yet */
        Buf in, out;
        SmtpLineReader reader;
        SessionState state;
        bool rejected;          /* policy "reject": only QUIT */
        bool draining;
        bool dead;              /* connection gone while committing */
        const char *close_reason;

        TlsSession *tls;        /* set from STARTTLS on: all I/O goes through it */
        uint32_t tls_events;    /* what OpenSSL waits for (handshake, or a read that must write) */

        char *helo;
        bool esmtp;
        char *rdns;
        bool rdns_verified;
        ResolverQuery *rdns_query;
        unsigned errors;
        unsigned n_messages;

        /* the mail transaction */
        bool in_mail;
        Envelope env;
        size_t cap_rcpts;
        DataScanner scanner;
        SpoolWriter *writer;
        bool data_overflow;
        int data_error;
        uint64_t data_size;
};

static void session_process(SmtpServer *s);
static void session_update_io(SmtpServer *s);

SmtpServer *smtp_server_next(SmtpServer *s) {
        return s->next;
}

const struct sockaddr_storage *smtp_server_peer(const SmtpServer *s) {
        return &s->setup->peer;
}

const char *smtp_server_listener(const SmtpServer *s) {
        return s->setup->listener->name;
}

static const char *hostname(SmtpServer *s) {
        return s->setup->listener->hostname;
}

/* ---- output ---- */

_printf_(2, 3) static void reply(SmtpServer *s, const char *fmt, ...) {
        va_list ap;
        char line[1024];
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof line - 2, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        n = MIN(n, (int) sizeof line - 3);
        memcpy(line + n, "\r\n", 2);
        if (buf_append(&s->out, line, (size_t) n + 2) < 0) {
                /* The client does not read its replies: give up on it. */
                s->state = SESSION_CLOSING;
                s->close_reason = "output overflow";
                buf_clear(&s->out);
                return;
        }
        if (line[0] == '4' || line[0] == '5')
                s->errors++;
}

static void session_close_after_reply(SmtpServer *s, const char *reason) {
        s->state = SESSION_CLOSING;
        if (!s->close_reason)
                s->close_reason = reason;
}

static void reset_transaction(SmtpServer *s) {
        if (s->writer) {
                spool_writer_abort(s->writer);
                s->writer = NULL;
        }
        envelope_done(&s->env);
        s->cap_rcpts = 0;
        s->in_mail = false;
        s->data_overflow = false;
        s->data_error = 0;
        s->data_size = 0;
}

/* ---- lifecycle ---- */

static void session_unlink(SmtpServer *s) {
        if (s->prev)
                s->prev->next = s->next;
        else if (s->worker->sessions == s)
                s->worker->sessions = s->next;
        if (s->next)
                s->next->prev = s->prev;
        s->next = s->prev = NULL;
}

SmtpServer *smtp_server_free(SmtpServer *s) {
        Worker *w;

        if (!s)
                return NULL;
        w = s->worker;

        resolver_query_cancel(s->rdns_query);
        if (s->state == SESSION_DATA || s->writer)
                log_mid_aborted(s->env.mid, s->setup->icid, "connection closed during DATA");
        reset_transaction(s);
        sd_event_source_disable_unref(s->io);
        sd_event_source_disable_unref(s->timer);
        sd_event_source_disable_unref(s->kick);
        if (s->tls) {
                tls_session_shutdown(s->tls);
                tls_session_free(s->tls);
        }
        safe_close(s->fd);
        log_icid_close(s->setup->icid, s->close_reason);
        worker_session_closed(w, s);
        session_unlink(s);

        buf_done(&s->in);
        buf_done(&s->out);
        free(s->helo);
        free(s->rdns);
        config_unref(s->setup->config);
        SSL_CTX_free(s->setup->tls_ctx);
        free(s->setup);
        free(s);

        worker_session_gone(w);
        return NULL;
}

/* The connection is finished; if a commit is in flight the session lives
 * on until it completes (the message is handed to the queue regardless). */
static void session_end(SmtpServer *s, const char *reason) {
        if (!s->close_reason)
                s->close_reason = reason;
        if (s->state == SESSION_COMMIT) {
                s->dead = true;
                s->io = sd_event_source_disable_unref(s->io);
                s->timer = sd_event_source_disable_unref(s->timer);
                s->kick = sd_event_source_disable_unref(s->kick);
                return;
        }
        smtp_server_free(s);
}

/* Whether the socket has anything for a read: data, or the peer's FIN
 * (a read returns 0 then; FIONREAD would not show it). On doubt, yes. */
static bool socket_has_input(int fd) {
        char c;

        return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != -1 || errno != EAGAIN;
}

/* After a read that returned data: nothing left means no read until the
 * next edge. Finding that out by reading to EAGAIN would cost a read per
 * turn and, with TLS, make OpenSSL allocate its record buffer again for
 * every idle session. */
static void session_note_drained(SmtpServer *s) {
        if (!socket_has_input(s->fd) && (!s->tls || tls_session_pending(s->tls) == 0))
                s->readable = false;
}

/* Plain socket or TLS: the state machine does not care which. */
static ssize_t session_read(SmtpServer *s) {
        ssize_t n;
        int r;

        if (!s->tls) {
                n = buf_read_fd(&s->in, s->fd, SESSION_READ_CHUNK);
                if (n == -EAGAIN)
                        s->readable = false;
                else if (n > 0)
                        session_note_drained(s);
                return n;
        }

        if (buf_len(&s->in) >= s->in.max)
                return -ENOBUFS;
        r = buf_reserve(&s->in, MIN((size_t) SESSION_READ_CHUNK, s->in.max - buf_len(&s->in)));
        if (r < 0)
                return r;
        n = tls_session_read(s->tls, buf_tail(&s->in), buf_avail(&s->in), &s->tls_events);
        if (n > 0) {
                buf_commit(&s->in, (size_t) n);
                s->tls_events = 0;
                session_note_drained(s);
        } else if (n == -EAGAIN)
                /* The socket ran dry, or OpenSSL waits to write: either
                 * way an event brings us back. */
                s->readable = false;
        return n;
}

static ssize_t session_write(SmtpServer *s) {
        ssize_t n;

        if (!s->tls)
                return buf_write_fd(&s->out, s->fd);
        n = tls_session_write(s->tls, buf_peek(&s->out), buf_len(&s->out), &s->tls_events);
        if (n > 0)
                buf_consume(&s->out, (size_t) n);
        return n;
}

static void session_start_tls(SmtpServer *s);

static int session_flush(SmtpServer *s) {
        while (!buf_empty(&s->out)) {
                ssize_t n = session_write(s);
                if (n == -EAGAIN)
                        break;
                if (n < 0) {
                        session_end(s, "write error");
                        return -ECONNRESET;
                }
        }
        if (buf_empty(&s->out)) {
                buf_shrink(&s->out, SESSION_BUF_KEEP);
                if (s->state == SESSION_CLOSING) {
                        session_end(s, NULL);
                        return -ECONNRESET;
                }
                if (s->state == SESSION_STARTTLS) {
                        /* The 220 is on the wire; from here the socket is OpenSSL's. */
                        session_start_tls(s);
                        return -EINPROGRESS;
                }
        }
        session_update_io(s);
        return 0;
}

static void session_arm_timer(SmtpServer *s) {
        uint64_t usec = s->state == SESSION_DATA ? s->limits.data_timeout : s->limits.idle_timeout;
        uint64_t now;

        if (!s->timer)
                return;
        if (sd_event_now(s->worker->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        (void) sd_event_source_set_time(s->timer, now + usec);
        (void) sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT);
}

static void session_update_io(SmtpServer *s) {
        uint32_t ev = 0;

        if (!s->io)
                return;
        if (s->state == SESSION_HANDSHAKE)
                ev = s->tls_events ?: EPOLLIN;
        if (!buf_empty(&s->out) || (s->tls_events & EPOLLOUT))
                ev |= EPOLLOUT;
        if ((s->state == SESSION_COMMAND || s->state == SESSION_DATA) &&
            buf_len(&s->out) < SESSION_OUTPUT_HIGH && buf_len(&s->in) < s->in.max)
                ev |= EPOLLIN;
        if (ev != s->io_events) {
                s->io_events = ev;
                /* Edge-triggered: with level-triggered sockets every loop
                 * iteration's epoll_wait() would report again each session
                 * whose input waits for its turn, so the cost per event
                 * would grow with the number of busy sessions. */
                (void) sd_event_source_set_io_events(s->io, ev | EPOLLET);
                (void) sd_event_source_set_enabled(s->io, ev ? SD_EVENT_ON : SD_EVENT_OFF);
        }
        if (!s->kick || !(ev & EPOLLIN))
                return;
        /* Input announced by an earlier edge and not read to EAGAIN yet
         * (one read per turn, or none in a state that does not read) gets
         * no new event; nor do decrypted bytes inside OpenSSL. */
        if (s->readable ||
            (s->tls && s->state != SESSION_HANDSHAKE && tls_session_pending(s->tls) > 0))
                (void) sd_event_source_set_enabled(s->kick, SD_EVENT_ONESHOT);
}

/* ---- greeting ---- */

static const char *policy_action_label(PolicyAction a) {
        switch (a) {
        case POLICY_ACCEPT:     return "ACCEPT";
        case POLICY_RELAY:      return "RELAY";
        case POLICY_REJECT:     return "REJECT";
        case POLICY_TCP_REFUSE: return "TCPREFUSE";
        default:                return "UNKNOWN";
        }
}

static void session_greet(SmtpServer *s) {
        const SessionSetup *st = s->setup;

        log_icid_new(st->icid, st->listener->name, st->listener_addr, s->peer_ip, s->peer_port,
                     s->rdns, s->rdns_verified);
        log_icid_policy(st->icid, policy_action_label(st->policy->action),
                        st->sender_group ? st->sender_group->name : NULL,
                        st->policy->name, st->sender_group ? st->match : NULL);

        s->state = SESSION_COMMAND;
        if (st->policy->action == POLICY_REJECT) {
                s->rejected = true;
                reply(s, "554 5.7.1 %s Access denied", hostname(s));
                s->errors = 0;
        } else
                reply(s, "220 %s ESMTP tlsgw", hostname(s));
        session_arm_timer(s);
        if (session_flush(s) < 0)
                return;
        session_process(s);
}

static void on_rdns(const char *name, bool verified, void *userdata) {
        SmtpServer *s = userdata;

        s->rdns_query = NULL;
        if (name)
                s->rdns = strdup(name);
        s->rdns_verified = name && verified;
        session_greet(s);
}

/* ---- commands ---- */

static bool view_is_printable(SmtpView v) {
        for (size_t i = 0; i < v.len; i++)
                if ((unsigned char) v.p[i] <= ' ' || (unsigned char) v.p[i] >= 0x7f)
                        return false;
        return v.len > 0;
}

static void cmd_helo(SmtpServer *s, const SmtpCommand *c) {
        /* RFC 5321 4.1.4: the argument is one domain or address literal. */
        SmtpView arg = c->arg;
        const char *sp = memchr(arg.p, ' ', arg.len);

        if (sp)
                arg.len = (size_t) (sp - arg.p);
        if (!view_is_printable(arg) || arg.len > SESSION_HELO_MAX) {
                reply(s, "501 5.5.4 Syntax: %s hostname", c->verb == SMTP_EHLO ? "EHLO" : "HELO");
                return;
        }

        reset_transaction(s);
        free(s->helo);
        s->helo = strndup(arg.p, arg.len);
        s->esmtp = c->verb == SMTP_EHLO;

        if (!s->esmtp) {
                reply(s, "250 %s", hostname(s));
                return;
        }
        reply(s, "250-%s", hostname(s));
        reply(s, "250-PIPELINING");
        reply(s, "250-SIZE %" PRIu64, s->limits.max_message_size);
        reply(s, "250-8BITMIME");
        /* RFC 3207 4.2: not offered again once TLS is active. */
        if (!s->tls && s->setup->tls_mode != TLS_IN_OFF && s->setup->tls_ctx)
                reply(s, "250-STARTTLS");
        reply(s, "250 ENHANCEDSTATUSCODES");
}

static bool tls_required(const SmtpServer *s) {
        return s->setup->tls_mode == TLS_IN_REQUIRED || s->setup->tls_mode == TLS_IN_REQUIRED_VERIFY;
}

/* RFC 3207 4: with TLS required, mail commands wait for STARTTLS. */
static bool refuse_without_tls(SmtpServer *s) {
        if (s->tls || !tls_required(s))
                return false;
        reply(s, "530 5.7.0 Must issue a STARTTLS command first");
        return true;
}

static void cmd_starttls(SmtpServer *s, const SmtpCommand *c) {
        if (s->setup->tls_mode == TLS_IN_OFF) {
                reply(s, "502 5.5.1 Error: command not implemented");
                return;
        }
        if (s->tls) {
                reply(s, "503 5.5.1 Error: TLS already active");
                return;
        }
        if (!s->setup->tls_ctx) {
                reply(s, "454 4.7.0 TLS not available due to temporary reason");
                return;
        }
        reset_transaction(s);
        reply(s, "220 2.0.0 Ready to start TLS");
        s->state = SESSION_STARTTLS;
}

static void cmd_mail(SmtpServer *s, const SmtpCommand *c) {
        uint64_t declared = 0;

        if (!s->helo) {
                reply(s, "503 5.5.1 Error: send HELO/EHLO first");
                return;
        }
        if (refuse_without_tls(s))
                return;
        if (s->in_mail) {
                reply(s, "503 5.5.1 Error: nested MAIL command");
                return;
        }
        if (s->limits.max_messages > 0 && s->n_messages >= s->limits.max_messages) {
                reply(s, "421 4.7.0 %s Error: too many messages in this session", hostname(s));
                session_close_after_reply(s, "message limit");
                return;
        }

        for (size_t i = 0; i < c->n_params; i++) {
                const SmtpParam *p = &c->params[i];
                char v[32];

                if (smtp_view_eq(p->key, "SIZE")) {
                        /* RFC 1870 6: SIZE=<decimal octets>. */
                        if (p->value.len == 0 || p->value.len >= sizeof v) {
                                reply(s, "501 5.5.4 Bad SIZE parameter");
                                return;
                        }
                        memcpy(v, p->value.p, p->value.len);
                        v[p->value.len] = 0;
                        if (parse_uint64(v, &declared) < 0) {
                                reply(s, "501 5.5.4 Bad SIZE parameter");
                                return;
                        }
                } else if (smtp_view_eq(p->key, "BODY")) {
                        if (!smtp_view_eq(p->value, "7BIT") && !smtp_view_eq(p->value, "8BITMIME")) {
                                reply(s, "501 5.5.4 Bad BODY parameter");
                                return;
                        }
                } else {
                        reply(s, "555 5.5.4 Unsupported option: %.*s", (int) MIN(p->key.len, (size_t) 64), p->key.p);
                        return;
                }
        }
        if (declared > s->limits.max_message_size) {
                reply(s, "552 5.3.4 Message size exceeds fixed limit");
                return;
        }

        s->env = (Envelope) {
                .mid = spool_next_id(s->worker->spool, SPOOL_ID_MID),
                .icid = s->setup->icid,
                .sender = strndup(c->path.p, c->path.len),
        };
        if (!s->env.sender || s->env.mid == 0) {
                /* spool_next_id() gives 0 when it cannot persist IDs. */
                envelope_done(&s->env);
                reply(s, "451 4.3.0 Error: queue file write error");
                return;
        }
        s->in_mail = true;
        log_mid_start(s->env.mid, s->env.icid);
        log_mid_from(s->env.mid, s->env.icid, s->env.sender);
        reply(s, "250 2.1.0 Ok");
}

static bool rcpt_allowed(SmtpServer *s, const char *rcpt) {
        const char *domain;

        if (s->setup->policy->action == POLICY_RELAY)
                return true;
        domain = mailbox_domain(rcpt);
        /* RFC 5321 4.1.1.3: <postmaster> without a domain is always ours. */
        if (!domain)
                return strcaseeq(rcpt, "postmaster");
        return listener_accepts_domain(s->setup->listener, domain);
}

static void cmd_rcpt(SmtpServer *s, const SmtpCommand *c) {
        _cleanup_free_ char *rcpt = NULL;
        char **l;

        if (refuse_without_tls(s))
                return;
        if (!s->in_mail) {
                reply(s, "503 5.5.1 Error: need MAIL command");
                return;
        }
        if (c->n_params > 0) {
                reply(s, "555 5.5.4 Unsupported option: %.*s",
                      (int) MIN(c->params[0].key.len, (size_t) 64), c->params[0].key.p);
                return;
        }
        if (c->path.len == 0) {
                reply(s, "501 5.5.4 Syntax: RCPT TO:<address>");
                return;
        }
        rcpt = strndup(c->path.p, c->path.len);
        if (!rcpt) {
                reply(s, "451 4.3.0 Error: out of memory");
                return;
        }
        if (s->env.n_rcpts >= s->limits.max_recipients) {
                /* RFC 5321 4.5.3.1.10: 452 for too many recipients. */
                reply(s, "452 4.5.3 Error: too many recipients");
                return;
        }
        if (!rcpt_allowed(s, rcpt)) {
                char esc[SMTP_PATH_MAX * 4];
                log_escape(rcpt, strlen(rcpt), esc, sizeof esc);
                reply(s, "550 5.7.1 <%s>: Relay access denied", esc);
                log_icid_reject(s->setup->icid, rcpt, "550 5.7.1 Relay access denied");
                return;
        }

        if (s->env.n_rcpts + 2 > s->cap_rcpts) {
                size_t cap = MAX(s->cap_rcpts * 2, (size_t) 8);
                l = realloc(s->env.rcpts, cap * sizeof *l);
                if (!l) {
                        reply(s, "451 4.3.0 Error: out of memory");
                        return;
                }
                s->env.rcpts = l;
                s->cap_rcpts = cap;
        }
        s->env.rcpts[s->env.n_rcpts] = TAKE_PTR(rcpt);
        s->env.rcpts[++s->env.n_rcpts] = NULL;
        log_mid_rcpt(s->env.mid, s->env.icid, (uint32_t) (s->env.n_rcpts - 1), s->env.rcpts[s->env.n_rcpts - 1]);
        reply(s, "250 2.1.5 Ok");
}

static int write_received(SmtpServer *s) {
        char date[64], helo[SESSION_HELO_MAX * 4 + 1], rdns[SESSION_HELO_MAX * 4 + 1];
        char hdr[2048], rcpt[SMTP_PATH_MAX * 4 + 32] = "", tls[256] = "";
        struct tm tm;
        time_t now = time(NULL);
        int n;

        /* RFC 5322 3.3 date-time, always in English. */
        static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        gmtime_r(&now, &tm);
        snprintf(date, sizeof date, "%s, %02d %s %04d %02d:%02d:%02d +0000",
                 days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900,
                 tm.tm_hour, tm.tm_min, tm.tm_sec);

        log_escape(s->helo, strlen(s->helo), helo, sizeof helo);
        log_escape(s->rdns ?: "unknown", strlen(s->rdns ?: "unknown"), rdns, sizeof rdns);
        if (s->env.n_rcpts == 1) {
                char esc[SMTP_PATH_MAX * 4];
                log_escape(s->env.rcpts[0], strlen(s->env.rcpts[0]), esc, sizeof esc);
                snprintf(rcpt, sizeof rcpt, "\r\n\tfor <%s>", esc);
        }

        if (s->tls) {
                int bits = tls_session_cipher_bits(s->tls);
                snprintf(tls, sizeof tls, "\r\n\t(using %s with cipher %s (%d/%d bits))",
                         tls_session_protocol(s->tls), tls_session_cipher(s->tls), bits, bits);
        }

        /* RFC 5321 4.4 trace information, prepended; "ESMTPS" for STARTTLS
         * sessions (RFC 3848). */
        n = snprintf(hdr, sizeof hdr,
                     "Received: from %s (%s [%s])%s\r\n"
                     "\tby %s (tlsgw) with %s id %" PRIu64 "%s;\r\n"
                     "\t%s\r\n",
                     helo, rdns, s->peer_ip, tls, hostname(s),
                     s->esmtp ? (s->tls ? "ESMTPS" : "ESMTP") : (s->tls ? "SMTPS" : "SMTP"),
                     s->env.mid, rcpt, date);
        if (n < 0 || (size_t) n >= sizeof hdr)
                return -ENOBUFS;
        return spool_writer_write(s->writer, hdr, (size_t) n);
}

static void cmd_data(SmtpServer *s) {
        int r;

        if (refuse_without_tls(s))
                return;
        if (!s->in_mail) {
                reply(s, "503 5.5.1 Error: need MAIL command");
                return;
        }
        if (s->env.n_rcpts == 0) {
                reply(s, "503 5.5.1 Error: need RCPT command");
                return;
        }

        s->env.arrival_usec = (uint64_t) time(NULL) * USEC_PER_SEC;
        s->env.listener = strdup(s->setup->listener->name);
        s->env.client_ip = strdup(s->peer_ip);
        s->env.helo = strdup(s->helo);

        r = spool_writer_new(s->worker->spool, &s->env, &s->writer);
        if (r >= 0)
                r = write_received(s);
        if (r < 0) {
                log_error_errno(r, "MID %" PRIu64 ": cannot create spool file: %m", s->env.mid);
                log_mid_aborted(s->env.mid, s->env.icid, "spool file could not be created");
                reset_transaction(s);
                reply(s, "451 4.3.0 Error: queue file write error");
                return;
        }

        data_scanner_init(&s->scanner);
        s->state = SESSION_DATA;
        reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void on_commit(void *userdata, int error) {
        SmtpServer *s = userdata;

        if (error < 0) {
                log_error_errno(error, "MID %" PRIu64 ": spool commit failed: %m", s->env.mid);
                log_mid_aborted(s->env.mid, s->env.icid, "spool commit failed");
                reply(s, "451 4.3.0 Error: queue file write error");
        } else {
                s->n_messages++;
                log_mid_ready(s->env.mid, s->data_size, s->env.sender);
                worker_message_received(s->worker, &s->env, s->data_size);
                reply(s, "250 2.0.0 Ok: queued as MID %" PRIu64, s->env.mid);
        }
        reset_transaction(s);
        s->state = SESSION_COMMAND;

        if (s->dead) {
                smtp_server_free(s);
                return;
        }
        session_arm_timer(s);
        session_process(s);
}

static void data_end(SmtpServer *s) {
        const char *why = NULL;
        int r;

        s->state = SESSION_COMMAND;
        if (s->scanner.bare_lf || s->scanner.bare_cr) {
                /* RFC 5321 2.3.8: CR and LF only as CRLF. Such a message is
                 * refused whole, so no smuggled second message can exist. */
                why = "bare CR or LF in message text";
                reply(s, "554 5.6.0 Message refused: bare <CR> or <LF> in message text");
        } else if (s->data_overflow) {
                why = "message size exceeds limit";
                reply(s, "552 5.3.4 Message size exceeds fixed limit");
        } else if (s->data_error < 0) {
                errno = -s->data_error;
                log_error_errno(s->data_error, "MID %" PRIu64 ": spool write failed: %m", s->env.mid);
                why = "spool write failed";
                reply(s, "451 4.3.0 Error: queue file write error");
        }
        if (why) {
                log_mid_aborted(s->env.mid, s->env.icid, why);
                reset_transaction(s);
                return;
        }

        s->data_size = spool_writer_size(s->writer);
        s->state = SESSION_COMMIT;
        r = spool_writer_commit(TAKE_PTR(s->writer), s->worker->mailbox, on_commit, s);
        if (r < 0) {
                s->state = SESSION_COMMAND;
                log_error_errno(r, "MID %" PRIu64 ": spool commit failed: %m", s->env.mid);
                log_mid_aborted(s->env.mid, s->env.icid, "spool commit failed");
                reset_transaction(s);
                reply(s, "451 4.3.0 Error: queue file write error");
        }
}

static void handle_command(SmtpServer *s, SmtpView line) {
        SmtpCommand c;
        int r;

        r = smtp_command_parse(line.p, line.len, &c);

        if (s->rejected) {
                if (r >= 0 && c.verb == SMTP_QUIT) {
                        reply(s, "221 2.0.0 Bye");
                        session_close_after_reply(s, NULL);
                } else
                        reply(s, "503 5.7.1 Access denied");
                return;
        }

        switch (r) {
        case 0:
                break;
        case -EBADMSG:
                reply(s, "500 5.5.2 Error: command not recognized");
                return;
        case -ENAMETOOLONG:
                reply(s, "501 5.5.4 Error: path too long");
                return;
        case -E2BIG:
                reply(s, "555 5.5.4 Error: too many parameters");
                return;
        default:
                if (c.verb == SMTP_MAIL)
                        reply(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
                else if (c.verb == SMTP_RCPT)
                        reply(s, "501 5.5.4 Syntax: RCPT TO:<address>");
                else if (c.verb == SMTP_STARTTLS)
                        reply(s, "501 5.5.4 Syntax: STARTTLS");
                else
                        reply(s, "501 5.5.4 Syntax error in parameters or arguments");
                return;
        }

        switch (c.verb) {
        case SMTP_HELO:
        case SMTP_EHLO:
                cmd_helo(s, &c);
                break;
        case SMTP_MAIL:
                cmd_mail(s, &c);
                break;
        case SMTP_RCPT:
                cmd_rcpt(s, &c);
                break;
        case SMTP_DATA:
                cmd_data(s);
                break;
        case SMTP_RSET:
                reset_transaction(s);
                reply(s, "250 2.0.0 Ok");
                break;
        case SMTP_NOOP:
                reply(s, "250 2.0.0 Ok");
                break;
        case SMTP_QUIT:
                reply(s, "221 2.0.0 Bye");
                session_close_after_reply(s, NULL);
                break;
        case SMTP_HELP:
                reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY");
                break;
        case SMTP_STARTTLS:
                cmd_starttls(s, &c);
                break;
        case SMTP_VRFY:
                /* RFC 5321 3.5.3: 252 when we will not verify. */
                reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
                break;
        default:
                reply(s, "502 5.5.1 Error: command not implemented");
                break;
        }
}

/* ---- TLS ---- */

static void session_handshake(SmtpServer *s) {
        int r = tls_session_handshake(s->tls, &s->tls_events);
        TlsInbound mode = s->setup->tls_mode;
        int peer_cert = -1;

        if (r == -EAGAIN) {
                s->readable = false;
                session_update_io(s);
                return;
        }
        if (r < 0) {
                log_icid_tls_failed(s->setup->icid, tls_session_error(s->tls));
                session_end(s, "TLS handshake failed");
                return;
        }

        s->tls_events = 0;
        /* The client's EHLO may be in already; if not, its edge is to come. */
        session_note_drained(s);
        if (mode == TLS_IN_PREFERRED_VERIFY || mode == TLS_IN_REQUIRED_VERIFY)
                peer_cert = tls_session_peer_verified(s->tls) ? 1 : 0;
        log_icid_tls(s->setup->icid, tls_session_protocol(s->tls), tls_session_cipher(s->tls),
                     tls_session_ktls_tx(s->tls), tls_session_ktls_rx(s->tls), peer_cert,
                     tls_session_peer_cn(s->tls),
                     peer_cert == 0 && tls_session_peer_cert(s->tls) ? tls_session_verify_error(s->tls) : NULL);

        /* RFC 3207 4.2: forget everything learnt before TLS; the client
         * must say EHLO again. */
        reset_transaction(s);
        s->helo = mfree(s->helo);
        s->esmtp = false;
        s->state = SESSION_COMMAND;
        session_arm_timer(s);
        session_update_io(s);
}

static void session_start_tls(SmtpServer *s) {
        TlsVerifyMode verify = TLS_VERIFY_NONE;
        int r;

        if (s->setup->tls_mode == TLS_IN_PREFERRED_VERIFY)
                verify = TLS_VERIFY_OPTIONAL;
        else if (s->setup->tls_mode == TLS_IN_REQUIRED_VERIFY)
                verify = TLS_VERIFY_REQUIRED;

        r = tls_session_new(s->setup->tls_ctx, s->fd, true, NULL, verify, &s->tls);
        if (r < 0) {
                log_icid_tls_failed(s->setup->icid, "cannot create a TLS session");
                session_end(s, "TLS setup failed");
                return;
        }
        s->state = SESSION_HANDSHAKE;
        session_handshake(s);
}

/* ---- input ---- */

static void process_data(SmtpServer *s) {
        size_t store, consume;
        int r;

        r = data_scan(&s->scanner, buf_peek(&s->in), buf_len(&s->in), &store, &consume);
        if (store > 0 && s->writer && !s->data_overflow && s->data_error == 0) {
                if (spool_writer_size(s->writer) + store > s->limits.max_message_size) {
                        /* RFC 1870 6.3: keep reading to the end, store nothing more. */
                        s->data_overflow = true;
                } else
                        s->data_error = spool_writer_write(s->writer, buf_peek(&s->in), store);
        }
        buf_consume(&s->in, consume);
        if (r > 0)
                data_end(s);
}

static void session_process(SmtpServer *s) {
        while (!buf_empty(&s->in) && buf_len(&s->out) < SESSION_OUTPUT_HIGH) {
                if (s->state == SESSION_DATA) {
                        size_t before = buf_len(&s->in);
                        process_data(s);
                        if (buf_len(&s->in) == before && s->state == SESSION_DATA)
                                break;          /* need more input */
                } else if (s->state == SESSION_COMMAND) {
                        SmtpView line;
                        size_t consume = 0;
                        bool bare_lf = false;
                        int r;

                        r = smtp_line_next(&s->reader, buf_peek(&s->in), buf_len(&s->in), &line, &consume, &bare_lf);
                        if (r == -E2BIG) {
                                buf_consume(&s->in, consume);
                                reply(s, "500 5.5.6 Error: line too long");
                        } else if (r > 0) {
                                handle_command(s, line);
                                buf_consume(&s->in, consume);
                                if (s->state == SESSION_STARTTLS && !buf_empty(&s->in)) {
                                        /* CVE-2011-0411: plaintext pipelined after
                                         * STARTTLS would be taken as if it came over
                                         * TLS. Drop the session without a word. */
                                        log_icid_event(s->setup->icid, LOG_NOTICE,
                                                       "STARTTLS followed by pipelined plaintext, dropping session");
                                        buf_clear(&s->out);
                                        s->state = SESSION_CLOSING;
                                        s->close_reason = "plaintext after STARTTLS";
                                        break;
                                }
                        } else {
                                buf_consume(&s->in, consume);
                                break;
                        }
                } else
                        break;

                if (s->state != SESSION_CLOSING && s->limits.max_errors > 0 &&
                    s->errors >= s->limits.max_errors) {
                        reply(s, "421 4.7.0 %s Error: too many errors", hostname(s));
                        session_close_after_reply(s, "too many errors");
                }
        }

        if (s->draining && s->state == SESSION_COMMAND && !s->in_mail) {
                reply(s, "421 4.3.2 %s Service shutting down", hostname(s));
                session_close_after_reply(s, "shutdown");
        }
        if (buf_empty(&s->in))
                buf_shrink(&s->in, SESSION_BUF_KEEP);
        (void) session_flush(s);
}

static int on_io(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        SmtpServer *s = userdata;

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))
                s->readable = true;
        if (s->state == SESSION_HANDSHAKE) {
                session_handshake(s);
                return 0;
        }
        if (revents & EPOLLOUT) {
                if (session_flush(s) < 0)
                        return 0;
        }
        if ((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) || ((revents & EPOLLOUT) && (s->tls_events & EPOLLOUT))) {
                ssize_t n;

                if (s->state != SESSION_COMMAND && s->state != SESSION_DATA)
                        return 0;
                n = session_read(s);
                if (n == -EAGAIN || n == -ENOBUFS) {
                        /* The read reserved room that nothing filled: an
                         * idle session keeps only a small buffer. */
                        if (buf_empty(&s->in))
                                buf_shrink(&s->in, SESSION_BUF_KEEP);
                        session_update_io(s);
                        return 0;
                }
                if (n <= 0) {
                        if (n < 0 && s->tls)
                                log_icid_event(s->setup->icid, LOG_INFO, "TLS read failed: %s", tls_session_error(s->tls));
                        session_end(s, n == 0 ? NULL : "read error");
                        return 0;
                }
                session_arm_timer(s);
                session_process(s);
        }
        return 0;
}

static int on_kick(sd_event_source *src, void *userdata) {
        SmtpServer *s = userdata;
        return on_io(s->io, s->fd, EPOLLIN, s);
}

static int on_timer(sd_event_source *src, uint64_t usec, void *userdata) {
        SmtpServer *s = userdata;

        if (s->state == SESSION_COMMIT)
                return 0;       /* the spool answers; the client waits for us */
        if (s->state == SESSION_DATA)
                log_mid_aborted(s->env.mid, s->env.icid, "timeout during DATA");
        reset_transaction(s);
        /* RFC 5321 4.5.3.2: on timeout the server closes with a 421. */
        reply(s, "421 4.4.2 %s Error: timeout exceeded", hostname(s));
        session_close_after_reply(s, "timeout");
        (void) session_flush(s);
        return 0;
}

int smtp_server_new(Worker *w, SessionSetup *setup, SmtpServer **ret) {
        SmtpServer *s;
        int one = 1, r;

        s = calloc(1, sizeof *s);
        if (!s) {
                safe_close(setup->fd);
                config_unref(setup->config);
                SSL_CTX_free(setup->tls_ctx);
                free(setup);
                return -ENOMEM;
        }
        s->worker = w;
        s->setup = setup;
        s->fd = TAKE_FD(setup->fd);
        smtp_limits_effective(setup->listener, setup->policy, &s->limits);
        s->reader.max_line = s->limits.max_line;
        buf_init(&s->in, SESSION_INPUT_MAX);
        buf_init(&s->out, SESSION_OUTPUT_MAX);
        sockaddr_to_string((struct sockaddr *) &setup->peer, s->peer_ip, sizeof s->peer_ip);
        s->peer_port = sockaddr_port((struct sockaddr *) &setup->peer);
        s->state = SESSION_LOOKUP;

        s->next = w->sessions;
        if (w->sessions)
                w->sessions->prev = s;
        w->sessions = s;

        /* Replies are batched by us; do not let Nagle hold the last one. */
        (void) setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

        r = sd_event_add_io(w->event, &s->io, s->fd, 0, on_io, s);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(s->io, SD_EVENT_OFF);
        r = sd_event_add_time(w->event, &s->timer, CLOCK_MONOTONIC, UINT64_MAX, 0, on_timer, s);
        if (r < 0)
                goto fail;
        r = sd_event_add_defer(w->event, &s->kick, on_kick, s);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(s->kick, SD_EVENT_OFF);

        r = resolver_reverse(w->resolver, (struct sockaddr *) &setup->peer, on_rdns, s, &s->rdns_query);
        if (r < 0) {
                log_debug_errno(r, "ICID %" PRIu64 ": reverse lookup not started: %m", setup->icid);
                session_greet(s);
        }
        if (ret)
                *ret = s;
        return 0;
fail:
        s->close_reason = "setup failed";
        smtp_server_free(s);
        return r;
}

void smtp_server_drain(SmtpServer *s) {
        s->draining = true;
        if (s->state == SESSION_COMMAND && !s->in_mail) {
                reply(s, "421 4.3.2 %s Service shutting down", hostname(s));
                session_close_after_reply(s, "shutdown");
                (void) session_flush(s);
        }
}

void smtp_server_abort(SmtpServer *s) {
        if (s->state == SESSION_DATA)
                log_mid_aborted(s->env.mid, s->env.icid, "shutdown during DATA");
        if (s->state != SESSION_LOOKUP) {
                reply(s, "421 4.3.2 %s Service shutting down", hostname(s));
                if (s->state != SESSION_HANDSHAKE)
                        (void) session_write(s);
        }
        if (!s->close_reason)
                s->close_reason = "shutdown";
        if (s->state == SESSION_COMMIT)
                s->state = SESSION_CLOSING;     /* the loop is ending: free now */
        smtp_server_free(s);
}

/* ---- diagnostics ---- */

static const char *session_state_name(const SmtpServer *s) {
        switch (s->state) {
        case SESSION_LOOKUP:
                return "lookup";
        case SESSION_COMMAND:
                return s->in_mail ? "mail" : "command";
        case SESSION_DATA:
                return "data";
        case SESSION_COMMIT:
                return "commit";
        case SESSION_STARTTLS:
                return "starttls";
        case SESSION_HANDSHAKE:
                return "handshake";
        case SESSION_CLOSING:
                return "closing";
        }
        return "unknown";
}

void smtp_server_info(const SmtpServer *s, SessionInfo *ret) {
        socklen_t len = sizeof ret->local;
        /* TLS details only once the handshake is done. */
        bool tls_up = s->tls && s->state != SESSION_STARTTLS && s->state != SESSION_HANDSHAKE;

        *ret = (SessionInfo) {
                .icid = s->setup->icid,
                .state = session_state_name(s),
                .peer_port = s->peer_port,
                .fd = s->fd,
        };
        snprintf(ret->listener, sizeof ret->listener, "%s", s->setup->listener->name);
        snprintf(ret->peer, sizeof ret->peer, "%s", s->peer_ip);
        memcpy(&ret->remote, &s->setup->peer, sizeof ret->remote);
        if (s->fd < 0 || getsockname(s->fd, (struct sockaddr *) &ret->local, &len) < 0)
                ret->local.ss_family = AF_UNSPEC;
        if (tls_up) {
                snprintf(ret->tls_protocol, sizeof ret->tls_protocol, "%s", tls_session_protocol(s->tls) ?: "");
                snprintf(ret->tls_cipher, sizeof ret->tls_cipher, "%s", tls_session_cipher(s->tls) ?: "");
                snprintf(ret->client_cn, sizeof ret->client_cn, "%s", tls_session_peer_cn(s->tls) ?: "");
                ret->ktls_tx = tls_session_ktls_tx(s->tls);
                ret->ktls_rx = tls_session_ktls_rx(s->tls);
        }
}
