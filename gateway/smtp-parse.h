/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * SMTP wire parsing: pure, byte-driven and resumable, no I/O, no logging
 * (fuzz target). Results are views into the caller's buffer, valid until
 * the buffer is consumed or changed.
 *
 *  - SmtpLineReader splits CRLF-terminated command lines with a hard length
 *    limit; an over-long line is skipped to its LF and reported once.
 *  - smtp_command_parse() turns one line into a verb and checked arguments.
 *  - DataScanner finds the end of DATA: only CRLF "." CRLF ends a message;
 *    bare LF and bare CR are flagged (the caller refuses the message) and
 *    never terminate it (SMTP smuggling). Stored bytes stay in wire form
 *    (dot-stuffed, CRLF), so the spooled message goes out again unchanged.
 *  - smtp_reply_parse() reads multi-line server replies (client side).
 */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* RFC 5321 4.5.3.1.3: path incl. angle brackets 256 octets. */
#define SMTP_PATH_MAX 256
/* Caps on ESMTP parameters per MAIL/RCPT (RFC 5321 4.1.2 allows several). */
#define SMTP_PARAMS_MAX 8
/* RFC 5321 4.5.3.1.5: reply line 512 octets incl. CRLF; we accept longer
 * from peers but bound a whole multi-line reply. */
#define SMTP_REPLY_MAX 8192

typedef enum SmtpVerb {
        SMTP_HELO,
        SMTP_EHLO,
        SMTP_MAIL,
        SMTP_RCPT,
        SMTP_DATA,
        SMTP_RSET,
        SMTP_NOOP,
        SMTP_QUIT,
        SMTP_HELP,
        SMTP_VRFY,
        SMTP_EXPN,
        SMTP_STARTTLS,
        SMTP_BDAT,
        SMTP_AUTH,
        _SMTP_VERB_MAX,
        _SMTP_VERB_INVALID = -EINVAL,
} SmtpVerb;

const char *smtp_verb_to_string(SmtpVerb v);

typedef struct SmtpView {
        const char *p;
        size_t len;
} SmtpView;

typedef struct SmtpParam {
        SmtpView key;           /* e.g. "SIZE" (case as sent) */
        SmtpView value;         /* empty when the keyword has no '=' */
} SmtpParam;

typedef struct SmtpCommand {
        SmtpVerb verb;
        SmtpView arg;           /* everything after the verb and one SP, trimmed */
        /* MAIL FROM / RCPT TO only: */
        SmtpView path;          /* mailbox without brackets; empty for <> */
        SmtpParam params[SMTP_PARAMS_MAX];
        size_t n_params;
} SmtpCommand;

typedef struct SmtpLineReader {
        size_t max_line;        /* octets incl. CRLF */
        bool skipping;          /* inside an over-long line */
} SmtpLineReader;

/* Returns 1 and a line view (without CRLF; a bare LF terminator is accepted
 * for commands and flagged in *ret_bare_lf) and how much to consume;
 * 0 when more input is needed (consume *ret_consume bytes anyway: skipped
 * junk); -E2BIG when an over-long line ended (consume *ret_consume, reply
 * 500 5.5.6 once). ret_bare_lf may be NULL. */
int smtp_line_next(SmtpLineReader *r, const char *p, size_t n,
                   SmtpView *ret_line, size_t *ret_consume, bool *ret_bare_lf);

/* Parses a command line. Returns 0 on success; -EBADMSG for an unknown
 * verb (500 5.5.2); -EINVAL for a syntax error in the arguments (501 5.5.4);
 * -ENAMETOOLONG for a path over SMTP_PATH_MAX (501 5.5.4); -E2BIG for more than
 * SMTP_PARAMS_MAX parameters (555 5.5.4). MAIL requires "FROM:<...>", RCPT
 * "TO:<...>" (a single space after the colon is tolerated); the mailbox is
 * checked with mailbox_is_valid(); RCPT TO:<> and <postmaster> rules of
 * RFC 5321 4.1.1.3 apply (bare "postmaster" is accepted). */
int smtp_command_parse(const char *line, size_t len, SmtpCommand *ret);

/* Case-insensitive match of a parameter keyword. */
bool smtp_view_eq(SmtpView v, const char *s);

typedef struct DataScanner {
        unsigned state;         /* private */
        uint64_t bytes;         /* wire octets seen so far (excl. terminator) */
        bool bare_lf;           /* an LF not preceded by CR was seen */
        bool bare_cr;           /* a CR not followed by LF was seen */
} DataScanner;

void data_scanner_init(DataScanner *s);
/* Scans p[0..n). Returns 1 when the end-of-data sequence was found: store
 * p[0..*ret_store) and consume *ret_consume (store + ".\r\n"). Returns 0 when
 * more input is needed: store and consume *ret_store == *ret_consume bytes;
 * up to two trailing bytes (a line-initial "." or ".\r") may be held back
 * unconsumed until the next call decides what they are. Never fails. */
int data_scan(DataScanner *s, const char *p, size_t n, size_t *ret_store, size_t *ret_consume);

typedef struct SmtpReply {
        int code;               /* 200..599 */
        char enhanced[16];      /* "2.1.0" when present, else "" */
        SmtpView text;          /* whole reply incl. continuation lines, without final CRLF */
} SmtpReply;

/* Parses one complete (possibly multi-line) reply at the head of p. Returns
 * 1 with *ret_consume bytes to consume, 0 if incomplete, -EBADMSG if
 * malformed, -E2BIG if longer than SMTP_REPLY_MAX. */
int smtp_reply_parse(const char *p, size_t n, SmtpReply *ret, size_t *ret_consume);
/* Does a reply (EHLO response) advertise keyword (e.g. "PIPELINING",
 * "SIZE", "STARTTLS")? Fills *ret_arg with its argument if non-NULL. */
bool smtp_reply_has_extension(const SmtpReply *r, const char *keyword, SmtpView *ret_arg);
