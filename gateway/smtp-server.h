/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Inbound SMTP session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
 * ENHANCEDSTATUSCODES): state machine, limits and timers on a worker loop.
 *
 * Input is parsed by smtp-parse.c; replies are queued in an output Buf
 * and flushed when the input has been processed (pipelined replies go out
 * in one write). DATA is streamed into a SpoolWriter and acknowledged with
 * 250 only after the spool's group commit made it durable; until then the
 * session reads no further commands. Every session ends with "ICID n close".
 */

#include "worker.h"

struct SmtpServer;

/* Takes ownership of setup (and its fd and config reference). */
int smtp_server_new(Worker *w, SessionSetup *setup, SmtpServer **ret);
SmtpServer *smtp_server_free(SmtpServer *s);

/* Shutdown: stop after the current transaction (drain) or right now with
 * 421 (abort). */
void smtp_server_drain(SmtpServer *s);
void smtp_server_abort(SmtpServer *s);

SmtpServer *smtp_server_next(SmtpServer *s);            /* list walk */
const struct sockaddr_storage *smtp_server_peer(const SmtpServer *s);
const char *smtp_server_listener(const SmtpServer *s);
/* A snapshot of the session for the Diagnostics interface (worker thread;
 * see SessionInfo in worker.h). */
void smtp_server_info(const SmtpServer *s, SessionInfo *ret);
