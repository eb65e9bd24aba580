/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Mail log and daemon log: one builder that collects "FIELD=value" items
 * and sends them with sd_journal_sendv(), or prints the MESSAGE to stderr
 * when journald is not there (or stderr is a terminal, for foreground runs).
 * Each mail event class below has a fixed MESSAGE_ID so that
 * `journalctl MESSAGE_ID=...` selects one kind of line.
 *
 * Every connection writes several lines, so an entry formats only what
 * will be sent: the FIELD=value items only for journald, nothing at all for
 * a line below the maximum level.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

#include "log.h"
#include "util/parse.h"

#define LOG_MESSAGE_ID_ICID_NEW         "43d6eaf8dcd44b4facb5ab5ca604d958"
#define LOG_MESSAGE_ID_ICID_POLICY      "b0bf1f4a5573496aa846bc5e96e3d142"
#define LOG_MESSAGE_ID_ICID_EVENT       "3e0aea4c545e4dcf8b65157fa8c51522"
#define LOG_MESSAGE_ID_ICID_REJECT      "3b480dcffca14b58b84f96cc2eaa34f4"
#define LOG_MESSAGE_ID_ICID_CLOSE       "5eee8514b62443b695b70e65c8970b1f"
#define LOG_MESSAGE_ID_ICID_REFUSED     "99fb9c966435411482e1631edfc9e706"
#define LOG_MESSAGE_ID_MID_START        "828a08d67ee14e74b05bc8ec77d0946f"
#define LOG_MESSAGE_ID_MID_FROM         "83d1837200254135af80cee563515380"
#define LOG_MESSAGE_ID_MID_RCPT         "ad05d16b215c495ca3477b36507a55a4"
#define LOG_MESSAGE_ID_MID_READY        "00823fbab06547afa6342ad2ffd6eb38"
#define LOG_MESSAGE_ID_MID_ABORTED      "50eddebd011d4107bfd24f3c2d40260c"
#define LOG_MESSAGE_ID_MID_FINISHED     "7d82dfc08c5148459fe94f56833523a8"
#define LOG_MESSAGE_ID_DCID_NEW         "69b2c73bc62f46b18ff8bd9537d96656"
#define LOG_MESSAGE_ID_DCID_REUSED      "828a51d689544db897a3021c533384d6"
#define LOG_MESSAGE_ID_DELIVERY_START   "b6ec28b9da004bbfb17840f4749ed036"
#define LOG_MESSAGE_ID_DELIVERY_DONE    "fd9d99c897604bae8bc59db221b26e26"
#define LOG_MESSAGE_ID_DELIVERY_DELAYED "a4708ace584d43d5ac3e22f574429bec"
#define LOG_MESSAGE_ID_DELIVERY_BOUNCED "40cdb1d9947f403bbe9a92d2a0a3e3ab"
#define LOG_MESSAGE_ID_CONNECTION_ERROR "314bba968a244a61bf31b02025f012b3"
#define LOG_MESSAGE_ID_DCID_CLOSE       "50c68e61ae3f4444aa6ab7ebc58e4724"
#define LOG_MESSAGE_ID_BOUNCE_GENERATED "6d4d2e36f0b74ab0a97d2e6d5b0296cf"
#define LOG_MESSAGE_ID_ICID_TLS         "8a3d5f7c2b1e4c9a9f6e0d1c2b3a4958"
#define LOG_MESSAGE_ID_ICID_TLS_FAILED  "c47e1b2a9d8f4e3b8a7c6d5e4f3a2b19"
#define LOG_MESSAGE_ID_DCID_TLS         "5b9c8d7e6f5a4b3c9d8e7f6a5b4c3d2e"
#define LOG_MESSAGE_ID_DCID_TLS_FAILED  "e1f2a3b4c5d64e7f8a9b0c1d2e3f4a5b"
#define LOG_MESSAGE_ID_TLS_ALERT        "7f6e5d4c3b2a49188f7e6d5c4b3a2910"

/* Client-supplied strings in a line are cut to this (RFC 5321 paths are at
 * most 256 octets; replies are longer but a log line should stay readable). */
#define LOG_UNTRUSTED_MAX 512
#define LOG_FIELDS_MAX 24

static int max_level = LOG_INFO;
static int use_journal = -1;    /* -1: not decided yet */
static bool use_stderr = true;

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

void log_open(void) {
        if (use_journal >= 0)
                return;
        use_journal = access("/run/systemd/journal/socket", W_OK) == 0;
        /* Under journald, stderr would duplicate every line unless a person
         * is watching a terminal. */
        use_stderr = !use_journal || isatty(STDERR_FILENO);
}

typedef struct LogEntry {
        struct iovec iov[LOG_FIELDS_MAX];
        size_t n;
        int priority;
        bool skip;              /* below the maximum level: format nothing */
        bool fields;            /* journald gets FIELD=value items */
        char *message;          /* the MESSAGE= value, for stderr */
} LogEntry;

_printf_(2, 0) static void entry_addv(LogEntry *e, const char *fmt, va_list ap) {
        char *s;

        if (!e->fields || e->n >= LOG_FIELDS_MAX)
                return;
        if (vasprintf(&s, fmt, ap) < 0)
                return;
        e->iov[e->n++] = (struct iovec) { .iov_base = s, .iov_len = strlen(s) };
}

_printf_(2, 3) static void entry_add(LogEntry *e, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        entry_addv(e, fmt, ap);
        va_end(ap);
}

static void entry_begin(LogEntry *e, int priority, const char *message_id) {
        log_open();
        *e = (LogEntry) {
                .priority = priority,
                .skip = priority > max_level,
                .fields = priority <= max_level && use_journal > 0,
        };
        entry_add(e, "PRIORITY=%d", priority);
        entry_add(e, "SYSLOG_IDENTIFIER=tlsgwd");
        if (message_id)
                entry_add(e, "MESSAGE_ID=%s", message_id);
}

_printf_(2, 3) static void entry_message(LogEntry *e, const char *fmt, ...) {
        va_list ap;
        char *s;

        if (e->skip)
                return;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (!s)
                return;
        entry_add(e, "MESSAGE=%s", s);
        e->message = s;
}

static void entry_submit(LogEntry *e) {
        if (e->priority <= max_level) {
                if (use_journal > 0)
                        (void) sd_journal_sendv(e->iov, (int) e->n);
                if (use_stderr && e->message) {
                        struct timespec ts;
                        struct tm tm;
                        char when[32];

                        clock_gettime(CLOCK_REALTIME, &ts);
                        localtime_r(&ts.tv_sec, &tm);
                        strftime(when, sizeof when, "%b %d %H:%M:%S", &tm);
                        fprintf(stderr, "%s %s: %s\n", when,
                                e->priority <= LOG_ERR ? "Critical" :
                                e->priority <= LOG_WARNING ? "Warning" : "Info",
                                e->message);
                }
        }
        for (size_t i = 0; i < e->n; i++)
                free(e->iov[i].iov_base);
        free(e->message);
        e->n = 0;
}

/* Escaped, quoted-safe copy of client text into a caller buffer. */
static const char *untrusted(const char *s, char buf[static LOG_UNTRUSTED_MAX]) {
        if (!s)
                return "";
        return log_escape(s, strlen(s), buf, LOG_UNTRUSTED_MAX);
}

int log_full_errno(int level, int error, const char *fmt, ...) {
        LogEntry e;
        va_list ap;
        char *text;
        int saved = errno;

        if (level > max_level)
                return error < 0 ? error : -abs(error);

        if (error != 0)
                errno = abs(error);     /* for %m */
        va_start(ap, fmt);
        if (vasprintf(&text, fmt, ap) < 0)
                text = NULL;
        va_end(ap);
        errno = saved;

        entry_begin(&e, level, NULL);
        if (error != 0)
                entry_add(&e, "ERRNO=%d", abs(error));
        entry_message(&e, "%s", text ?: fmt);
        entry_submit(&e);
        free(text);
        return error <= 0 ? error : -error;
}

/* ---- inbound ---- */

void log_icid_new(uint64_t icid, const char *listener, const char *listener_addr,
                  const char *client_ip, uint16_t client_port, const char *rdns, bool verified) {
        char r[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_ICID_NEW);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_LISTENER=%s", listener);
        entry_add(&e, "TLSGW_CLIENT_IP=%s", client_ip);
        entry_add(&e, "TLSGW_CLIENT_PORT=%u", client_port);
        entry_add(&e, "TLSGW_RDNS=%s", rdns ? untrusted(rdns, r) : "unknown");
        entry_add(&e, "TLSGW_RDNS_VERIFIED=%d", verified);
        entry_message(&e, "New SMTP ICID %" PRIu64 " interface %s (%s) address %s reverse dns host %s verified %s",
                      icid, listener, listener_addr, client_ip,
                      rdns ? untrusted(rdns, r) : "unknown", verified ? "yes" : "no");
        entry_submit(&e);
}

void log_icid_policy(uint64_t icid, const char *action, const char *sender_group,
                     const char *policy, const char *match) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_ICID_POLICY);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_SENDER_GROUP=%s", sender_group ?: "None");
        entry_add(&e, "TLSGW_POLICY=%s", policy);
        entry_add(&e, "TLSGW_ACTION=%s", action);
        entry_message(&e, "ICID %" PRIu64 " %s SG %s match %s", icid, action,
                      sender_group ?: "None", match ?: "None");
        entry_submit(&e);
}

void log_icid_event(uint64_t icid, int priority, const char *fmt, ...) {
        va_list ap;
        char *text;
        LogEntry e;

        va_start(ap, fmt);
        if (vasprintf(&text, fmt, ap) < 0)
                text = NULL;
        va_end(ap);
        if (!text)
                return;

        entry_begin(&e, priority, LOG_MESSAGE_ID_ICID_EVENT);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_message(&e, "ICID %" PRIu64 " %s", icid, text);
        entry_submit(&e);
        free(text);
}

void log_icid_reject(uint64_t icid, const char *command, const char *reply) {
        char c[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_ICID_REJECT);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_COMMAND=%s", untrusted(command, c));
        entry_add(&e, "TLSGW_REPLY=%s", reply);
        entry_message(&e, "ICID %" PRIu64 " Rejected: '%s' -> %s", icid, untrusted(command, c), reply);
        entry_submit(&e);
}

void log_icid_close(uint64_t icid, const char *reason) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_ICID_CLOSE);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        if (reason) {
                entry_add(&e, "TLSGW_REASON=%s", reason);
                entry_message(&e, "ICID %" PRIu64 " close (%s)", icid, reason);
        } else
                entry_message(&e, "ICID %" PRIu64 " close", icid);
        entry_submit(&e);
}

void log_icid_refused(uint64_t icid, const char *listener, const char *client_ip, const char *why) {
        LogEntry e;

        entry_begin(&e, LOG_NOTICE, LOG_MESSAGE_ID_ICID_REFUSED);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_LISTENER=%s", listener);
        entry_add(&e, "TLSGW_CLIENT_IP=%s", client_ip);
        entry_add(&e, "TLSGW_REASON=%s", why);
        entry_message(&e, "ICID %" PRIu64 " interface %s address %s refused: %s", icid, listener, client_ip, why);
        entry_submit(&e);
}

/* ---- messages ---- */

void log_mid_start(uint64_t mid, uint64_t icid) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_MID_START);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_message(&e, "Start MID %" PRIu64 " ICID %" PRIu64, mid, icid);
        entry_submit(&e);
}

void log_mid_from(uint64_t mid, uint64_t icid, const char *sender) {
        char s[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_MID_FROM);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_FROM=%s", untrusted(sender, s));
        entry_message(&e, "MID %" PRIu64 " ICID %" PRIu64 " From: <%s>", mid, icid, untrusted(sender, s));
        entry_submit(&e);
}

void log_mid_rcpt(uint64_t mid, uint64_t icid, uint32_t rid, const char *rcpt) {
        char s[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_MID_RCPT);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_RID=%" PRIu32, rid);
        entry_add(&e, "TLSGW_TO=%s", untrusted(rcpt, s));
        entry_message(&e, "MID %" PRIu64 " ICID %" PRIu64 " RID %" PRIu32 " To: <%s>", mid, icid, rid, untrusted(rcpt, s));
        entry_submit(&e);
}

void log_mid_ready(uint64_t mid, uint64_t size, const char *sender) {
        char s[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_MID_READY);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_SIZE=%" PRIu64, size);
        entry_add(&e, "TLSGW_FROM=%s", untrusted(sender, s));
        entry_message(&e, "MID %" PRIu64 " ready %" PRIu64 " bytes from <%s>", mid, size, untrusted(sender, s));
        entry_submit(&e);
}

void log_mid_aborted(uint64_t mid, uint64_t icid, const char *why) {
        LogEntry e;

        entry_begin(&e, LOG_NOTICE, LOG_MESSAGE_ID_MID_ABORTED);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_REASON=%s", why);
        entry_message(&e, "MID %" PRIu64 " ICID %" PRIu64 " aborted: %s", mid, icid, why);
        entry_submit(&e);
}

void log_mid_finished(uint64_t mid, const char *how) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_MID_FINISHED);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_message(&e, "Message finished MID %" PRIu64 " %s", mid, how);
        entry_submit(&e);
}

/* ---- outbound ---- */

/* "[0, 1, 2]" into buf. */
static const char *format_rids(const uint32_t *rids, size_t n, char *buf, size_t len) {
        size_t o = 0;

        o += (size_t) snprintf(buf + o, len - o, "[");
        for (size_t i = 0; i < n && o < len; i++)
                o += (size_t) snprintf(buf + o, len - o, "%s%" PRIu32, i ? ", " : "", rids[i]);
        if (o < len)
                snprintf(buf + o, len - o, "]");
        return buf;
}

/* The fields of a delivery connection's peer, new or reused. */
static void entry_add_dcid_peer(LogEntry *e, const char *domain, const char *address, uint16_t port,
                                const char *host) {
        entry_add(e, "TLSGW_DOMAIN=%s", domain);
        entry_add(e, "TLSGW_REMOTE_IP=%s", address);
        entry_add(e, "TLSGW_REMOTE_PORT=%u", port);
        if (host)
                entry_add(e, "TLSGW_REMOTE_HOST=%s", host);
}

void log_dcid_new(uint64_t dcid, const char *domain, const char *interface_addr,
                  const char *address, uint16_t port, const char *host) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_DCID_NEW);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add_dcid_peer(&e, domain, address, port, host);
        entry_message(&e, "New SMTP DCID %" PRIu64 " interface %s address %s port %u",
                      dcid, interface_addr, address, port);
        entry_submit(&e);
}

void log_dcid_reused(uint64_t dcid, uint64_t opened_dcid, const char *domain, const char *interface_addr,
                     const char *address, uint16_t port, const char *host) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_DCID_REUSED);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_REUSED_DCID=%" PRIu64, opened_dcid);
        entry_add_dcid_peer(&e, domain, address, port, host);
        entry_message(&e, "DCID %" PRIu64 " reusing connection of DCID %" PRIu64 " interface %s address %s port %u",
                      dcid, opened_dcid, interface_addr, address, port);
        entry_submit(&e);
}

void log_delivery_start(uint64_t dcid, uint64_t mid, const uint32_t *rids, size_t n_rids) {
        char r[256];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_DELIVERY_START);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_RID=%s", format_rids(rids, n_rids, r, sizeof r));
        entry_message(&e, "Delivery start DCID %" PRIu64 " MID %" PRIu64 " to RID %s", dcid, mid, r);
        entry_submit(&e);
}

void log_delivery_done(uint64_t dcid, uint64_t mid, const uint32_t *rids, size_t n_rids, const char *reply,
                       const char *via) {
        char r[256], t[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_DELIVERY_DONE);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_RID=%s", format_rids(rids, n_rids, r, sizeof r));
        entry_add(&e, "TLSGW_REPLY=%s", untrusted(reply, t));
        if (via)
                entry_add(&e, "TLSGW_BODY_VIA=%s", via);
        entry_message(&e, "Message done DCID %" PRIu64 " MID %" PRIu64 " to RID %s [('%s')]%s%s",
                      dcid, mid, r, t, via ? " via " : "", via ?: "");
        entry_submit(&e);
}

void log_delivery_delayed(uint64_t dcid, uint64_t mid, const uint32_t *rids, size_t n_rids, const char *reply) {
        char r[256], t[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_NOTICE, LOG_MESSAGE_ID_DELIVERY_DELAYED);
        if (dcid > 0)
                entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_RID=%s", format_rids(rids, n_rids, r, sizeof r));
        entry_add(&e, "TLSGW_REPLY=%s", untrusted(reply, t));
        if (dcid > 0)
                entry_message(&e, "Delayed: DCID %" PRIu64 " MID %" PRIu64 " to RID %s - ('%s')", dcid, mid, r, t);
        else
                entry_message(&e, "Delayed: MID %" PRIu64 " to RID %s - ('%s')", mid, r, t);
        entry_submit(&e);
}

void log_delivery_bounced(uint64_t dcid, uint64_t mid, uint32_t rid, const char *rcpt, const char *reply) {
        char t[LOG_UNTRUSTED_MAX], a[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_NOTICE, LOG_MESSAGE_ID_DELIVERY_BOUNCED);
        if (dcid > 0)
                entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_MID=%" PRIu64, mid);
        entry_add(&e, "TLSGW_RID=%" PRIu32, rid);
        entry_add(&e, "TLSGW_TO=%s", untrusted(rcpt, a));
        entry_add(&e, "TLSGW_REPLY=%s", untrusted(reply, t));
        if (dcid > 0)
                entry_message(&e, "Bounced: DCID %" PRIu64 " MID %" PRIu64 " to RID %" PRIu32 " <%s> - ('%s')",
                              dcid, mid, rid, a, t);
        else
                entry_message(&e, "Bounced: MID %" PRIu64 " to RID %" PRIu32 " <%s> - ('%s')", mid, rid, a, t);
        entry_submit(&e);
}

void log_connection_error(uint64_t dcid, const char *domain, const char *address, uint16_t port,
                          const char *details, const char *interface_addr, const char *reason) {
        char t[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_WARNING, LOG_MESSAGE_ID_CONNECTION_ERROR);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_DOMAIN=%s", domain);
        entry_add(&e, "TLSGW_REMOTE_IP=%s", address);
        entry_add(&e, "TLSGW_REMOTE_PORT=%u", port);
        entry_add(&e, "TLSGW_REASON=%s", reason);
        if (details)
                entry_add(&e, "TLSGW_REPLY=%s", untrusted(details, t));
        entry_message(&e, "Connection Error: DCID %" PRIu64 " domain: %s IP: %s port: %u details: %s interface: %s reason: %s",
                      dcid, domain, address, port, details ? untrusted(details, t) : "",
                      interface_addr ?: "", reason);
        entry_submit(&e);
}

void log_dcid_close(uint64_t dcid) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_DCID_CLOSE);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_message(&e, "DCID %" PRIu64 " close", dcid);
        entry_submit(&e);
}

void log_bounce_generated(uint64_t new_mid, uint64_t orig_mid) {
        LogEntry e;

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_BOUNCE_GENERATED);
        entry_add(&e, "TLSGW_MID=%" PRIu64, new_mid);
        entry_add(&e, "TLSGW_ORIG_MID=%" PRIu64, orig_mid);
        entry_message(&e, "MID %" PRIu64 " was generated based on MID %" PRIu64 " by bounce", new_mid, orig_mid);
        entry_submit(&e);
}

/* ---- TLS ---- */

static const char *ktls_words(bool tx, bool rx) {
        return tx && rx ? " ktls tx rx" : tx ? " ktls tx" : rx ? " ktls rx" : "";
}

void log_icid_tls(uint64_t icid, const char *protocol, const char *cipher, bool ktls_tx, bool ktls_rx,
                  int peer_cert, const char *peer_cn, const char *verify_error) {
        char cn[LOG_UNTRUSTED_MAX], verify[LOG_UNTRUSTED_MAX + 64] = "";
        LogEntry e;

        if (peer_cert >= 0)
                snprintf(verify, sizeof verify, " client certificate verified %s%s%s",
                         peer_cert > 0 ? "yes" : "no",
                         peer_cn ? " CN " : "", peer_cn ? untrusted(peer_cn, cn) : "");

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_ICID_TLS);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_TLS_PROTOCOL=%s", protocol);
        entry_add(&e, "TLSGW_TLS_CIPHER=%s", cipher);
        entry_add(&e, "TLSGW_KTLS_TX=%d", ktls_tx);
        entry_add(&e, "TLSGW_KTLS_RX=%d", ktls_rx);
        if (peer_cert >= 0)
                entry_add(&e, "TLSGW_TLS_VERIFIED=%d", peer_cert > 0);
        if (peer_cn)
                entry_add(&e, "TLSGW_TLS_PEER_CN=%s", untrusted(peer_cn, cn));
        if (verify_error)
                entry_add(&e, "TLSGW_TLS_VERIFY_ERROR=%s", verify_error);
        entry_message(&e, "ICID %" PRIu64 " TLS success protocol %s cipher %s%s%s",
                      icid, protocol, cipher, ktls_words(ktls_tx, ktls_rx), verify);
        entry_submit(&e);
}

void log_icid_tls_failed(uint64_t icid, const char *reason) {
        char r[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_NOTICE, LOG_MESSAGE_ID_ICID_TLS_FAILED);
        entry_add(&e, "TLSGW_ICID=%" PRIu64, icid);
        entry_add(&e, "TLSGW_REASON=%s", untrusted(reason, r));
        entry_message(&e, "ICID %" PRIu64 " TLS failed: %s", icid, r);
        entry_submit(&e);
}

void log_dcid_tls(uint64_t dcid, const char *protocol, const char *cipher, bool ktls_tx, bool ktls_rx,
                  int verified, const char *verify_detail) {
        char v[LOG_UNTRUSTED_MAX + 32] = "", d[LOG_UNTRUSTED_MAX];
        LogEntry e;

        if (verified > 0)
                snprintf(v, sizeof v, " verified yes");
        else if (verified == 0)
                snprintf(v, sizeof v, " verified no%s%s%s", verify_detail ? " (" : "",
                         verify_detail ? untrusted(verify_detail, d) : "", verify_detail ? ")" : "");

        entry_begin(&e, LOG_INFO, LOG_MESSAGE_ID_DCID_TLS);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_TLS_PROTOCOL=%s", protocol);
        entry_add(&e, "TLSGW_TLS_CIPHER=%s", cipher);
        entry_add(&e, "TLSGW_KTLS_TX=%d", ktls_tx);
        entry_add(&e, "TLSGW_KTLS_RX=%d", ktls_rx);
        if (verified >= 0)
                entry_add(&e, "TLSGW_TLS_VERIFIED=%d", verified > 0);
        entry_message(&e, "DCID %" PRIu64 " TLS success protocol %s cipher %s%s%s",
                      dcid, protocol, cipher, ktls_words(ktls_tx, ktls_rx), v);
        entry_submit(&e);
}

void log_dcid_tls_failed(uint64_t dcid, const char *domain, const char *reason, const char *details) {
        char d[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_NOTICE, LOG_MESSAGE_ID_DCID_TLS_FAILED);
        entry_add(&e, "TLSGW_DCID=%" PRIu64, dcid);
        entry_add(&e, "TLSGW_DOMAIN=%s", domain);
        entry_add(&e, "TLSGW_REASON=%s", reason);
        if (details)
                entry_add(&e, "TLSGW_REPLY=%s", untrusted(details, d));
        entry_message(&e, "DCID %" PRIu64 " TLS failed: %s%s%s", dcid, reason,
                      details ? ": " : "", details ? untrusted(details, d) : "");
        entry_submit(&e);
}

void log_tls_alert(const char *domain, const char *reason, const char *details, uint64_t alert_mid) {
        char d[LOG_UNTRUSTED_MAX];
        LogEntry e;

        entry_begin(&e, LOG_WARNING, LOG_MESSAGE_ID_TLS_ALERT);
        entry_add(&e, "TLSGW_DOMAIN=%s", domain);
        entry_add(&e, "TLSGW_REASON=%s", reason);
        if (details)
                entry_add(&e, "TLSGW_REPLY=%s", untrusted(details, d));
        if (alert_mid > 0)
                entry_add(&e, "TLSGW_MID=%" PRIu64, alert_mid);
        entry_message(&e, "Alert: required TLS delivery to %s failed: %s%s%s", domain, reason,
                      details ? ": " : "", details ? untrusted(details, d) : "");
        entry_submit(&e);
}
