/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The mail log and the daemon log.
 *
 * Every mail event class has its own function and 128-bit MESSAGE_ID; the
 * MESSAGE text reads like an appliance mail log line and the same facts are
 * carried as TLSGW_* fields. Entries go to journald through sd_journal_sendv
 * when journald is listening (/run/systemd/journal/socket exists), otherwise
 * as readable lines on stderr. Thread-safe. String arguments marked
 * "untrusted" are client-supplied: log.c quotes, escapes and truncates them.
 *
 * log_*_errno() return the negative errno they were given, for
 * `return log_error_errno(r, "...: %m")` (%m prints strerror(-r)).
 */

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

#include "util/macro.h"

void log_set_max_level(int level);     /* LOG_DEBUG enables debug lines */
int log_get_max_level(void);
void log_open(void);                   /* decides journal vs stderr once */

/* Daemon messages (not mail events). */
int log_full_errno(int level, int error, const char *fmt, ...) _printf_(3, 4);
#define log_debug(...)   log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...)    log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...)  log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...)   log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...)   log_full_errno(LOG_DEBUG, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...)   log_full_errno(LOG_ERR, (e), __VA_ARGS__)

/* ---- inbound (ICID) ---- */
/* "New SMTP ICID 5 interface inbound (127.0.0.1) address 127.0.0.1 reverse
 *  dns host localhost verified yes" (rdns NULL: "reverse dns host unknown") */
void log_icid_new(uint64_t icid, const char *listener, const char *listener_addr,
                  const char *client_ip, uint16_t client_port, const char *rdns, bool verified);
/* "ICID 5 ACCEPT SG RELAYLIST match 127.0.0.0/8" ; sender_group NULL:
 * "ICID 5 ACCEPT SG None match None" (listener default policy). */
void log_icid_policy(uint64_t icid, const char *action, const char *sender_group,
                     const char *policy, const char *match);
/* Free-form event of a session: "ICID 5 <text>" (text is ours, not client data). */
void log_icid_event(uint64_t icid, int priority, const char *fmt, ...) _printf_(3, 4);
/* A rejected command: "ICID 5 Rejected: <reply>" with the client line (untrusted). */
void log_icid_reject(uint64_t icid, const char *command, const char *reply);
/* "ICID 5 close" */
void log_icid_close(uint64_t icid, const char *reason);
/* "ICID 5 TCPREFUSE ..." and limits hit at accept: "ICID 5 refused: <why>" */
void log_icid_refused(uint64_t icid, const char *listener, const char *client_ip, const char *why);

/* "ICID 5 TLS success protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384 ktls tx"
 * peer_cert: -1 no certificate asked for, 0 asked and none or not verified,
 * 1 verified ("... client certificate verified yes CN x"). */
void log_icid_tls(uint64_t icid, const char *protocol, const char *cipher, bool ktls_tx, bool ktls_rx,
                  int peer_cert, const char *peer_cn, const char *verify_error);
/* "ICID 5 TLS failed: <OpenSSL reason>" */
void log_icid_tls_failed(uint64_t icid, const char *reason);

/* ---- messages (MID) ---- */
void log_mid_start(uint64_t mid, uint64_t icid);                       /* "Start MID 7 ICID 5" */
void log_mid_from(uint64_t mid, uint64_t icid, const char *sender);    /* untrusted sender */
void log_mid_rcpt(uint64_t mid, uint64_t icid, uint32_t rid, const char *rcpt);
/* "MID 7 ready 1234 bytes from <a@b>" */
void log_mid_ready(uint64_t mid, uint64_t size, const char *sender);
/* "MID 7 aborted: <why>" (cut off, size exceeded, bare LF, spool error) */
void log_mid_aborted(uint64_t mid, uint64_t icid, const char *why);
/* "Message finished MID 7 done" / "... aborted" */
void log_mid_finished(uint64_t mid, const char *how);

/* ---- outbound (DCID) ---- */
/* "New SMTP DCID 3 interface 127.0.0.1 address 10.0.0.1 port 25" */
void log_dcid_new(uint64_t dcid, const char *domain, const char *interface_addr,
                  const char *address, uint16_t port, const char *host);
/* "DCID 5 reusing connection of DCID 3 interface 127.0.0.1 address 10.0.0.1
 *  port 25": an idle connection opened by another DCID carries this one
 *  (same fields as log_dcid_new, plus TLSGW_REUSED_DCID). */
void log_dcid_reused(uint64_t dcid, uint64_t opened_dcid, const char *domain, const char *interface_addr,
                     const char *address, uint16_t port, const char *host);
/* "Delivery start DCID 3 MID 7 to RID [0, 1]" */
void log_delivery_start(uint64_t dcid, uint64_t mid, const uint32_t *rids, size_t n_rids);
/* "Message done DCID 3 MID 7 to RID [0] [('250 2.0.0 Ok')]"; via (may be
 * NULL): how the body was sent, "sendfile", "SSL_sendfile" (kTLS),
 * "SSL_write", "maildir" (TLSGW_BODY_VIA). */
void log_delivery_done(uint64_t dcid, uint64_t mid, const uint32_t *rids, size_t n_rids, const char *reply,
                       const char *via);
/* "Delayed: DCID 3 MID 7 to RID [0] - 4.0.0 ('451 try later')" ; dcid 0 = no connection */
void log_delivery_delayed(uint64_t dcid, uint64_t mid, const uint32_t *rids, size_t n_rids, const char *reply);
/* "Bounced: DCID 3 MID 7 to RID 0 - 5.1.1 ('550 no such user')" */
void log_delivery_bounced(uint64_t dcid, uint64_t mid, uint32_t rid, const char *rcpt, const char *reply);
/* "Connection Error: DCID 3 domain: example.com IP: 127.0.0.1 port: 25
 *  details: <details> interface: 127.0.0.1 reason: <reason>" */
void log_connection_error(uint64_t dcid, const char *domain, const char *address, uint16_t port,
                          const char *details, const char *interface_addr, const char *reason);
/* "DCID 3 TLS success protocol TLSv1.2 cipher ECDHE-RSA-AES256-GCM-SHA384 ktls tx rx"
 * + " verified yes" / " verified no (<why>)" when the policy verifies. */
void log_dcid_tls(uint64_t dcid, const char *protocol, const char *cipher, bool ktls_tx, bool ktls_rx,
                  int verified, const char *verify_detail);
/* "DCID 3 TLS failed: <reason>" */
void log_dcid_tls_failed(uint64_t dcid, const char *domain, const char *reason, const char *details);
/* Warning: a required TLS delivery failed; an alert message was sent. */
void log_tls_alert(const char *domain, const char *reason, const char *details, uint64_t alert_mid);
/* "DCID 3 close" */
void log_dcid_close(uint64_t dcid);
/* "MID 9 was generated based on MID 7 by bounce" */
void log_bounce_generated(uint64_t new_mid, uint64_t orig_mid);
