/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Delivery status notifications (RFC 3464, multipart/report of RFC 6522)
 * for recipients that failed permanently or outlived the queue lifetime.
 * Produces the message in SMTP wire form (CRLF, dot-stuffed) ready for the
 * spool. Never for a message whose sender is <> (the caller checks).
 */

#include <stddef.h>
#include <stdint.h>

typedef struct DsnRecipient {
        const char *address;
        const char *status;             /* "5.1.1" */
        const char *diagnostic;         /* "550 5.1.1 no such user" or NULL */
        const char *remote_mta;         /* host name or NULL */
} DsnRecipient;

typedef struct DsnInfo {
        const char *reporting_mta;      /* our host name */
        const char *sender;             /* original envelope sender = DSN recipient */
        uint64_t mid;                   /* original MID, used as Original-Envelope-Id-like tag */
        uint64_t arrival_usec;          /* CLOCK_REALTIME */
        const DsnRecipient *rcpts;
        size_t n_rcpts;
        const char *headers;            /* original header section (wire form) or NULL */
        size_t headers_len;
} DsnInfo;

/* Builds the whole DSN (headers + body) into a malloc'ed buffer. */
int dsn_build(const DsnInfo *info, uint64_t now_usec, char **ret, size_t *ret_len);
