/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * loadgen: SMTP load generator for the benchmark (tests/bench/).
 *
 * Runs N concurrent client sessions against one SMTP server from one thread
 * (or --threads T, each with its own share of the sessions): non-blocking
 * sockets on an epoll instance per thread, the OpenSSL client
 * state machine for STARTTLS (RFC 3207), PIPELINING of MAIL/RCPT/DATA when
 * the server offers it (RFC 2920). Three modes:
 *   messages   EHLO, STARTTLS, EHLO, then M transactions of an S-byte
 *              message per connection, QUIT, reconnect;
 *   handshake  EHLO, STARTTLS, EHLO, QUIT, reconnect;
 *   idle       EHLO, STARTTLS, EHLO, then all N sessions are held open
 *              ("READY n" on stderr) for --hold seconds, then QUIT.
 * It prints rates, latency percentiles, errors and its own CPU time, as
 * "key value" lines or one JSON object (--json).
 *
 * What it does not do: it never verifies the server's certificate (it is a
 * load generator, not a client anyone trusts; the handshake still checks
 * the server's CertificateVerify signature, which is the cost a real client
 * pays), it sends one recipient per message, and it does not interpret
 * replies beyond their code: any code other than the one expected counts as
 * an error and ends that session, which is then started again.
 *
 * Internal functions return negative errno on failure; a session's failure
 * is counted and never stops the program. Exit status: 0 when the run
 * completed (errors are reported, not fatal), 1 on a setup failure, 2 on
 * bad usage.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "macro.h"

/* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF;
 * an EHLO reply has a line per extension, so the buffer holds several. */
#define REPLY_LINE_MAX 512
#define RBUF_SIZE (8 * REPLY_LINE_MAX)
/* Commands we send: "MAIL FROM:<path>" + RCPT + DATA pipelined, each path at
 * most 256 octets (RFC 5321 4.5.3.1.3) plus the verb and CRLF. */
#define PATH_MAX_SMTP 256
#define CMD_BUF_SIZE 1024
/* One TLS record's worth of plaintext per SSL_write (RFC 8446 5.1: 2^14). */
#define WRITE_CHUNK (16 * 1024)
/* Per-phase timeout: no server reply within this long is an error. RFC
 * 5321 4.5.3.2 allows minutes; a benchmark server that needs that long has
 * failed anyway, and 60 s still covers a 10 MB body on a loaded host. */
#define IO_TIMEOUT_USEC (60 * USEC_PER_SEC)
/* After --duration ends, sessions finish their current message; whatever
 * is still open this long after is cut off and counted as an error. */
#define DRAIN_MAX_USEC (30 * USEC_PER_SEC)
/* After our QUIT has its 221 we wait for the server to close first, so the
 * TIME_WAIT state lands on the server side and our ephemeral ports are not
 * used up at thousands of sessions per second; not an error if it doesn't. */
#define CLOSE_WAIT_USEC (5 * USEC_PER_SEC)
/* A failed session is restarted after this pause, so a server that refuses
 * connections does not turn the run into a busy loop. */
#define RESTART_DELAY_USEC (50 * USEC_PER_MSEC)
/* Idle mode without --duration: how long all N sessions may take to be
 * established before READY is printed with the number reached. */
#define IDLE_SETUP_DEFAULT_USEC (120 * USEC_PER_SEC)
/* Sessions a worker starts at once from its timer: thousands of SYNs in
 * one burst overflow the server's listen backlog and turn into 1 s SYN
 * retransmissions, which measure the kernel, not the server. */
#define SETUP_INFLIGHT_MAX 256
/* Timer granularity of the event loop (timeouts, restarts, --duration). */
#define TICK_MSEC 50
#define EVENTS_MAX 256
#define SESSIONS_MAX 100000
/* More event loops than cores only adds switching. */
#define THREADS_MAX 64
/* Messages are built in memory once; this bounds that memory. */
#define MESSAGE_SIZE_MAX (1024ULL * 1024 * 1024)
/* RFC 5322 2.1.1: lines SHOULD be at most 78 characters excluding CRLF. */
#define BODY_LINE_LEN 78
/* A worker that has failed this many times without completing a single
 * session or message gives up the run (server down, wrong port, no
 * STARTTLS): --count alone would otherwise never be reached. */
#define ERRORS_WITHOUT_SUCCESS_MAX 100
/* Only the first few session failures are described on stderr. */
#define ERROR_REPORT_MAX 10
#define DEFAULT_DURATION_SEC 10.0
#define DEFAULT_HOLD_SEC 10.0
#define DEFAULT_SIZE 1024
#define EHLO_NAME "loadgen.test"
/* RFC 5322 3.6: From is required; To and Subject make it look like mail. */
#define MESSAGE_HEADERS "From: <%s>\r\nTo: <%s>\r\nSubject: loadgen message%s\r\n\r\n"

typedef enum Mode {
        MODE_MESSAGES,
        MODE_HANDSHAKE,
        MODE_IDLE,
        _MODE_MAX,
        _MODE_INVALID = -EINVAL,
} Mode;

static const char * const mode_table[_MODE_MAX] = {
        [MODE_MESSAGES] = "messages",
        [MODE_HANDSHAKE] = "handshake",
        [MODE_IDLE] = "idle",
};

typedef enum TlsMode {
        TLS_MODE_13,
        TLS_MODE_12,
        TLS_MODE_NONE,
        _TLS_MODE_MAX,
        _TLS_MODE_INVALID = -EINVAL,
} TlsMode;

static const char * const tls_mode_table[_TLS_MODE_MAX] = {
        [TLS_MODE_13] = "1.3",
        [TLS_MODE_12] = "1.2",
        [TLS_MODE_NONE] = "none",
};

typedef enum Phase {
        PHASE_DOWN,             /* no connection; restart_at says when */
        PHASE_CONNECTING,       /* non-blocking connect() in progress */
        PHASE_BANNER,           /* waiting for the 220 greeting */
        PHASE_EHLO,             /* waiting for 250 to the first EHLO */
        PHASE_STARTTLS,         /* waiting for 220 to STARTTLS */
        PHASE_HANDSHAKE,        /* TLS handshake */
        PHASE_EHLO_TLS,         /* waiting for 250 to EHLO after STARTTLS */
        PHASE_IDLE,             /* idle mode: established, held */
        PHASE_MAIL,             /* waiting for 250 to MAIL */
        PHASE_RCPT,             /* waiting for 250 to RCPT */
        PHASE_DATA,             /* waiting for 354 to DATA */
        PHASE_BODY,             /* sending the message */
        PHASE_DOT,              /* waiting for 250 to the final "." */
        PHASE_QUIT,             /* waiting for 221 to QUIT */
        PHASE_CLOSING,          /* waiting for the server to close */
        _PHASE_MAX,
} Phase;

static const char * const phase_table[_PHASE_MAX] = {
        [PHASE_DOWN] = "down",
        [PHASE_CONNECTING] = "connect",
        [PHASE_BANNER] = "greeting",
        [PHASE_EHLO] = "EHLO",
        [PHASE_STARTTLS] = "STARTTLS",
        [PHASE_HANDSHAKE] = "TLS handshake",
        [PHASE_EHLO_TLS] = "EHLO after STARTTLS",
        [PHASE_IDLE] = "idle",
        [PHASE_MAIL] = "MAIL",
        [PHASE_RCPT] = "RCPT",
        [PHASE_DATA] = "DATA",
        [PHASE_BODY] = "message body",
        [PHASE_DOT] = "end of data",
        [PHASE_QUIT] = "QUIT",
        [PHASE_CLOSING] = "close",
};

typedef struct Options {
        const char *host;
        const char *port;
        unsigned sessions;
        Mode mode;
        double duration_sec;            /* 0 = not given */
        uint64_t count;                 /* 0 = not given */
        uint64_t msgs_per_conn;
        uint64_t size;
        TlsMode tls;
        const char *sigalgs;
        const char *groups;
        bool resume;
        const char *from;
        const char *to;
        double hold_sec;
        unsigned threads;
        bool json;
} Options;

typedef struct Session {
        unsigned id;
        int fd;
        SSL *ssl;
        SSL_SESSION *saved;             /* --resume: last ticket of this slot */
        Phase phase;
        bool pipelining;
        bool starttls;
        bool established;               /* counted in Run.established */

        uint64_t deadline;              /* CLOCK_MONOTONIC usec, or USEC_INFINITY */
        uint64_t restart_at;
        uint64_t t_connect;
        uint64_t t_mail;
        uint64_t msgs_in_conn;

        char rbuf[RBUF_SIZE];
        size_t rlen;
        int reply_code;                 /* of the multiline reply being read, 0 = none */

        char cmd[CMD_BUF_SIZE];
        size_t cmd_len, cmd_off;
        const char *out;                /* the shared message, or NULL */
        size_t out_len, out_off;
} Session;

/* HDR-like histogram of microseconds: 2^HIST_SUB_BITS linear buckets per
 * power of two above the first, so every bucket is within 1/64 (1.6%) of
 * the values it holds, in fixed memory whatever the run length. */
#define HIST_SUB_BITS 7
#define HIST_SUB (1U << HIST_SUB_BITS)
#define HIST_HALF (HIST_SUB / 2)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 2) * HIST_HALF)

typedef struct Histogram {
        uint64_t counts[HIST_BUCKETS];
        uint64_t total;
} Histogram;

/* What all workers share. Fields written while workers run are atomic. */
typedef struct Run {
        Options opt;
        struct sockaddr_storage addr;
        socklen_t addr_len;
        SSL_CTX *ctx;                   /* OpenSSL contexts are thread-safe */
        char *message;                  /* S octets of DATA content + ".\r\n" */
        size_t message_len;
        struct Worker *workers;

        uint64_t t_start;
        _Atomic uint64_t stop_deadline; /* --duration (idle: setup limit), or USEC_INFINITY */
        _Atomic uint64_t hold_end;      /* idle mode, once READY */
        _Atomic uint64_t t_stop;
        atomic_bool stopping;
        atomic_bool ready;
        _Atomic uint64_t started_msgs;  /* MAIL commands issued */
        _Atomic uint64_t started_sessions; /* connect() calls */
        atomic_uint established;        /* idle mode: sessions held right now */
        unsigned established_ready;     /* ... when READY was printed */
        atomic_uint errors_reported;
} Run;

/* One thread's share of the sessions, on its own epoll instance. */
typedef struct Worker {
        Run *run;
        unsigned index;
        pthread_t thread;
        int epoll_fd;
        Session *sessions;
        unsigned n_slots;
        unsigned active;                /* sessions not in PHASE_DOWN */
        bool stop_seen;                 /* held sessions were sent QUIT */
        int result;                     /* of the event loop */

        uint64_t n_sessions;            /* sessions ended by 221 */
        uint64_t n_messages;            /* messages accepted with 250 */
        uint64_t n_bytes;
        uint64_t n_errors;
        uint64_t n_resumed;
        const char *tls_version;        /* of the last handshake */
        const char *tls_cipher;
        Histogram hist;
} Worker;

static volatile sig_atomic_t interrupted;

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------ histogram -- */

static unsigned hist_index(uint64_t v) {
        unsigned msb, shift;

        if (v < HIST_SUB)
                return (unsigned) v;
        msb = 63 - (unsigned) __builtin_clzll(v);
        shift = msb - HIST_SUB_BITS + 1;
        /* v >> shift is in [HIST_HALF, HIST_SUB): bucket ranges follow on. */
        return shift * HIST_HALF + (unsigned) (v >> shift);
}

static uint64_t hist_value(unsigned idx) {
        unsigned shift;

        if (idx < HIST_SUB)
                return idx;
        shift = idx / HIST_HALF - 1;
        /* Middle of the bucket [low, low + 2^shift). */
        return ((uint64_t) (idx - shift * HIST_HALF) << shift) + ((1ULL << shift) >> 1);
}

static void hist_add(Histogram *h, uint64_t v) {
        h->counts[hist_index(v)]++;
        h->total++;
}

/* Value at quantile q (0..1] in usec, 0 for an empty histogram. */
static uint64_t hist_quantile(const Histogram *h, double q) {
        uint64_t rank, seen = 0;

        if (h->total == 0)
                return 0;
        rank = (uint64_t) ceil(q * (double) h->total);
        rank = CLAMP(rank, 1ULL, h->total);
        for (unsigned i = 0; i < HIST_BUCKETS; i++) {
                seen += h->counts[i];
                if (seen >= rank)
                        return hist_value(i);
        }
        return hist_value(HIST_BUCKETS - 1);
}

/* -------------------------------------------------------------- parsing -- */

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret) {
        unsigned long long v;
        char *end;

        if (isempty(s) || s[0] == '-' || s[0] == '+' || s[0] == ' ')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (errno != 0 || end == s || *end != '\0')
                return -EINVAL;
        if (v < min || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

/* Octets with an optional binary suffix: "10240", "10K", "10M". */
static int parse_size_arg(const char *s, uint64_t *ret) {
        _cleanup_free_ char *digits = NULL;
        uint64_t v, mult = 1;
        size_t n;
        int r;

        if (isempty(s))
                return -EINVAL;
        n = strlen(s);
        switch (s[n - 1]) {
        case 'K': case 'k': mult = 1024; n--; break;
        case 'M': case 'm': mult = 1024 * 1024; n--; break;
        case 'G': case 'g': mult = 1024 * 1024 * 1024; n--; break;
        default: break;
        }
        digits = strndup(s, n);
        if (!digits)
                return -ENOMEM;
        r = parse_u64(digits, 0, UINT64_MAX / mult, &v);
        if (r < 0)
                return r;
        *ret = v * mult;
        return 0;
}

/* Seconds, fractions allowed ("0.5"), > 0 and at most a day. */
static int parse_seconds(const char *s, double *ret) {
        double v;
        char *end;

        if (isempty(s) || s[0] == '-' || s[0] == '+' || s[0] == ' ')
                return -EINVAL;
        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
                return -EINVAL;
        if (v <= 0 || v > 86400)
                return -ERANGE;
        *ret = v;
        return 0;
}

static int table_lookup(const char * const *table, int n, const char *s) {
        for (int i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return i;
        return -EINVAL;
}

/* An SMTP path we put between <>: printable, no <> or spaces, bounded. */
static bool path_is_ok(const char *s) {
        if (strlen(s) > PATH_MAX_SMTP)
                return false;
        for (const char *p = s; *p; p++)
                if (*p <= ' ' || *p >= 127 || *p == '<' || *p == '>')
                        return false;
        return true;
}

static void help(void) {
        printf("loadgen --host H --port P --sessions N --mode {messages|handshake|idle} [OPTIONS]\n\n"
               "SMTP load generator: N concurrent sessions on one epoll loop, each EHLO,\n"
               "STARTTLS, EHLO, then per mode:\n"
               "  messages   M transactions (MAIL, RCPT, DATA of S octets) per connection,\n"
               "             QUIT, reconnect; MAIL/RCPT/DATA pipelined when offered\n"
               "  handshake  QUIT right away, reconnect\n"
               "  idle       hold all N sessions open, print \"READY n\" on stderr once all\n"
               "             are established, QUIT after --hold seconds\n\n"
               "Options:\n"
               "  --host H             server address or name\n"
               "  --port P             server port\n"
               "  --sessions N         concurrent sessions (1..%u)\n"
               "  --mode MODE          messages, handshake or idle\n"
               "  --duration SECONDS   stop starting work after this long (default %.0f s\n"
               "                       unless --count; in idle mode: how long the sessions\n"
               "                       may take to be established, default %llu s)\n"
               "  --count TOTAL        stop after TOTAL messages (messages mode) or\n"
               "                       sessions (handshake mode)\n"
               "  --msgs-per-conn M    messages per connection (default 1: a new connection\n"
               "                       per message)\n"
               "  --size BYTES         DATA content per message incl. headers, K/M/G suffix\n"
               "                       allowed (default %d)\n"
               "  --tls VERSION        1.3 (default), 1.2, or none (no STARTTLS)\n"
               "  --sigalgs LIST       signature algorithms offered, e.g. ecdsa_secp256r1_sha256\n"
               "  --groups LIST        key exchange groups offered, e.g. X25519\n"
               "  --resume             resume the TLS session of the slot's previous connection\n"
               "  --from ADDR          envelope sender (default loadgen@" EHLO_NAME ")\n"
               "  --to ADDR            envelope recipient (default sink@sink.test)\n"
               "  --hold SECONDS       idle mode: how long to hold the sessions (default %.0f)\n"
               "  --threads T          event loops on T threads, sessions split evenly\n"
               "                       (default 1; use more when this program, not the\n"
               "                       server, is what saturates a core)\n"
               "  --json               print one JSON object instead of \"key value\" lines\n"
               "  --help               this text\n\n"
               "The server certificate is not verified. Output keys: sessions, messages,\n"
               "bytes, errors, elapsed_s, sessions_per_s, messages_per_s, mb_per_s (10^6\n"
               "octets of message content accepted), latency_p50_ms, latency_p99_ms (per\n"
               "message MAIL..250 after the data; per session connect..221 in handshake\n"
               "mode; connect..EHLO reply after STARTTLS in idle mode), cpu_user_s,\n"
               "cpu_sys_s (this program, all threads), threads, and in idle mode\n"
               "established (sessions held when READY was printed).\n",
               SESSIONS_MAX, DEFAULT_DURATION_SEC,
               (unsigned long long) (IDLE_SETUP_DEFAULT_USEC / USEC_PER_SEC),
               DEFAULT_SIZE, DEFAULT_HOLD_SEC);
}

enum {
        ARG_HOST = 0x100, ARG_PORT, ARG_SESSIONS, ARG_MODE, ARG_DURATION, ARG_COUNT,
        ARG_MSGS_PER_CONN, ARG_SIZE, ARG_TLS, ARG_SIGALGS, ARG_GROUPS, ARG_RESUME,
        ARG_FROM, ARG_TO, ARG_HOLD, ARG_THREADS, ARG_JSON, ARG_HELP,
};

/* Returns 1 to run, 0 when --help was printed, -EINVAL on bad usage
 * (already described on stderr). */
static int parse_argv(int argc, char *argv[], Options *o) {
        static const struct option options[] = {
                { "host",          required_argument, NULL, ARG_HOST },
                { "port",          required_argument, NULL, ARG_PORT },
                { "sessions",      required_argument, NULL, ARG_SESSIONS },
                { "mode",          required_argument, NULL, ARG_MODE },
                { "duration",      required_argument, NULL, ARG_DURATION },
                { "count",         required_argument, NULL, ARG_COUNT },
                { "msgs-per-conn", required_argument, NULL, ARG_MSGS_PER_CONN },
                { "size",          required_argument, NULL, ARG_SIZE },
                { "tls",           required_argument, NULL, ARG_TLS },
                { "sigalgs",       required_argument, NULL, ARG_SIGALGS },
                { "groups",        required_argument, NULL, ARG_GROUPS },
                { "resume",        no_argument,       NULL, ARG_RESUME },
                { "from",          required_argument, NULL, ARG_FROM },
                { "to",            required_argument, NULL, ARG_TO },
                { "hold",          required_argument, NULL, ARG_HOLD },
                { "threads",       required_argument, NULL, ARG_THREADS },
                { "json",          no_argument,       NULL, ARG_JSON },
                { "help",          no_argument,       NULL, ARG_HELP },
                {}
        };
        uint64_t u;
        int c, r;

        *o = (Options) {
                .mode = _MODE_INVALID,
                .msgs_per_conn = 1,
                .size = DEFAULT_SIZE,
                .tls = TLS_MODE_13,
                .from = "loadgen@" EHLO_NAME,
                .to = "sink@sink.test",
                .hold_sec = DEFAULT_HOLD_SEC,
                .threads = 1,
        };

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                r = 0;
                switch (c) {
                case ARG_HOST:
                        o->host = optarg;
                        break;
                case ARG_PORT:
                        r = parse_u64(optarg, 1, 65535, &u);
                        o->port = optarg;
                        break;
                case ARG_SESSIONS:
                        r = parse_u64(optarg, 1, SESSIONS_MAX, &u);
                        if (r >= 0)
                                o->sessions = (unsigned) u;
                        break;
                case ARG_MODE:
                        r = o->mode = table_lookup(mode_table, _MODE_MAX, optarg);
                        break;
                case ARG_DURATION:
                        r = parse_seconds(optarg, &o->duration_sec);
                        break;
                case ARG_COUNT:
                        r = parse_u64(optarg, 1, UINT64_MAX, &o->count);
                        break;
                case ARG_MSGS_PER_CONN:
                        r = parse_u64(optarg, 1, UINT64_MAX, &o->msgs_per_conn);
                        break;
                case ARG_SIZE:
                        r = parse_size_arg(optarg, &o->size);
                        if (r >= 0 && o->size > MESSAGE_SIZE_MAX)
                                r = -ERANGE;
                        break;
                case ARG_TLS:
                        r = o->tls = table_lookup(tls_mode_table, _TLS_MODE_MAX, optarg);
                        break;
                case ARG_SIGALGS:
                        o->sigalgs = optarg;
                        break;
                case ARG_GROUPS:
                        o->groups = optarg;
                        break;
                case ARG_RESUME:
                        o->resume = true;
                        break;
                case ARG_FROM:
                        o->from = optarg;
                        r = path_is_ok(optarg) ? 0 : -EINVAL;
                        break;
                case ARG_TO:
                        o->to = optarg;
                        r = path_is_ok(optarg) && optarg[0] ? 0 : -EINVAL;
                        break;
                case ARG_HOLD:
                        r = parse_seconds(optarg, &o->hold_sec);
                        break;
                case ARG_THREADS:
                        r = parse_u64(optarg, 1, THREADS_MAX, &u);
                        if (r >= 0)
                                o->threads = (unsigned) u;
                        break;
                case ARG_JSON:
                        o->json = true;
                        break;
                case ARG_HELP:
                        help();
                        return 0;
                default:
                        fprintf(stderr, "loadgen: see --help\n");
                        return -EINVAL;
                }
                if (r < 0) {
                        fprintf(stderr, "loadgen: bad value for --%s: \"%s\"\n",
                                options[c - ARG_HOST].name, optarg);
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "loadgen: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        if (!o->host || !o->port || o->sessions == 0 || o->mode < 0) {
                fprintf(stderr, "loadgen: --host, --port, --sessions and --mode are required\n");
                return -EINVAL;
        }
        if (o->mode != MODE_MESSAGES && o->msgs_per_conn != 1) {
                fprintf(stderr, "loadgen: --msgs-per-conn applies to messages mode only\n");
                return -EINVAL;
        }
        if (o->mode == MODE_IDLE && o->count > 0) {
                fprintf(stderr, "loadgen: --count does not apply to idle mode\n");
                return -EINVAL;
        }
        if (o->tls == TLS_MODE_NONE && (o->resume || o->sigalgs || o->groups)) {
                fprintf(stderr, "loadgen: --resume, --sigalgs and --groups need TLS\n");
                return -EINVAL;
        }
        if (o->threads > o->sessions) {
                fprintf(stderr, "loadgen: more --threads than --sessions\n");
                return -EINVAL;
        }
        if (o->mode != MODE_IDLE && o->duration_sec == 0 && o->count == 0)
                o->duration_sec = DEFAULT_DURATION_SEC;
        return 1;
}

/* ------------------------------------------------------------- message -- */

/* Builds the DATA content once: a few headers, then printable lines of at
 * most BODY_LINE_LEN characters ending in CRLF, exactly `size` octets, no
 * line starting with "." (so nothing needs dot-stuffing, RFC 5321 4.5.2),
 * followed by the ".\r\n" that ends DATA. */
static int message_build(const Options *o, char **ret, size_t *ret_len) {
        _cleanup_free_ char *m = NULL;
        const char *pad = "";
        size_t hlen, pos, line = 0;
        int n;

        n = snprintf(NULL, 0, MESSAGE_HEADERS, o->from, o->to, pad);
        if (n < 0)
                return -EINVAL;
        hlen = (size_t) n;
        if (o->size < hlen)
                return -ERANGE;
        /* One octet left is no line (it needs a CRLF): the subject takes it. */
        if (o->size - hlen == 1) {
                pad = "!";
                hlen++;
        }

        m = malloc(o->size + 4);
        if (!m)
                return -ENOMEM;
        (void) snprintf(m, hlen + 1, MESSAGE_HEADERS, o->from, o->to, pad);

        pos = hlen;
        while (pos < o->size) {
                size_t rem = o->size - pos, len;

                /* rem >= 2 here. A remainder of 1 after this line could not
                 * be a line, so this one gets one octet less. */
                len = MIN((size_t) BODY_LINE_LEN, rem - 2);
                if (rem - len - 2 == 1)
                        len--;
                for (size_t i = 0; i < len; i++)
                        m[pos + i] = (char) ('a' + (line + i) % 26);
                pos += len;
                m[pos++] = '\r';
                m[pos++] = '\n';
                line++;
        }
        memcpy(m + pos, ".\r\n", 3);
        *ret_len = pos + 3;
        *ret = TAKE_PTR(m);
        return 0;
}

/* ---------------------------------------------------------------- TLS -- */

static int on_new_session(SSL *ssl, SSL_SESSION *sess) {
        Session *s = SSL_get_app_data(ssl);

        /* TLS 1.3 tickets come after the handshake, possibly several; the
         * newest one is kept for the slot's next connection. */
        if (s->saved)
                SSL_SESSION_free(s->saved);
        s->saved = sess;
        return 1;       /* we took the reference */
}

/* Replaces OpenSSL's chain building and path validation, which would run
 * (and be ignored under SSL_VERIFY_NONE) on every handshake. The handshake
 * itself still proves the server holds the certificate's key. */
static int accept_any_chain(X509_STORE_CTX *store, void *userdata) {
        return 1;
}

static int tls_context_new(const Options *o, SSL_CTX **ret) {
        SSL_CTX *ctx;
        int version = o->tls == TLS_MODE_13 ? TLS1_3_VERSION : TLS1_2_VERSION;

        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx)
                return -ENOMEM;
        if (!SSL_CTX_set_min_proto_version(ctx, version) ||
            !SSL_CTX_set_max_proto_version(ctx, version))
                goto fail;
        /* A load generator: no trust decision to make (see the header). */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_cert_verify_callback(ctx, accept_any_chain, NULL);
        if (o->sigalgs && !SSL_CTX_set1_sigalgs_list(ctx, o->sigalgs))
                goto fail;
        if (o->groups && !SSL_CTX_set1_groups_list(ctx, o->groups))
                goto fail;
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        /* Thousands of idle sessions: don't pin 2 x 16 KiB of record
         * buffers each on our side. */
        if (o->mode == MODE_IDLE)
                SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        if (o->resume) {
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
                SSL_CTX_sess_set_new_cb(ctx, on_new_session);
        } else {
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
                SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        }
        *ret = ctx;
        return 0;
fail:
        SSL_CTX_free(ctx);
        return -EINVAL;
}

/* -------------------------------------------------------------- session -- */

/* Stops starting new work, in every worker; the first caller sets the time
 * the drain limit counts from. */
static void run_request_stop(Run *run, uint64_t now) {
        bool expected = false;

        if (atomic_compare_exchange_strong(&run->stopping, &expected, true))
                run->t_stop = now;
}

static void session_fail(Worker *w, Session *s, const char *fmt, ...) _printf_(3, 4);
static void session_begin(Worker *w, Session *s);
static int session_send(Worker *w, Session *s, const char *fmt, ...) _printf_(3, 4);

static void session_set_phase(Session *s, Phase p, uint64_t now) {
        s->phase = p;
        s->deadline = p == PHASE_IDLE ? USEC_INFINITY :
                      now + (p == PHASE_CLOSING ? CLOSE_WAIT_USEC : IO_TIMEOUT_USEC);
}

/* Ends the connection (not the slot). */
static void session_close(Worker *w, Session *s) {
        if (s->ssl) {
                SSL_free(s->ssl);
                s->ssl = NULL;
        }
        s->fd = safe_close(s->fd);
        if (s->established) {
                s->established = false;
                w->run->established--;
        }
        if (s->phase != PHASE_DOWN)
                w->active--;
        s->phase = PHASE_DOWN;
        s->deadline = USEC_INFINITY;
        s->rlen = 0;
        s->reply_code = 0;
        s->cmd_len = s->cmd_off = 0;
        s->out = NULL;
        s->out_len = s->out_off = 0;
        s->restart_at = now_usec();
}

static void session_fail(Worker *w, Session *s, const char *fmt, ...) {
        unsigned reported;

        w->n_errors++;
        reported = atomic_fetch_add(&w->run->errors_reported, 1) + 1;
        if (reported <= ERROR_REPORT_MAX) {
                unsigned long e = ERR_peek_last_error();
                char text[REPLY_LINE_MAX];
                va_list ap;

                va_start(ap, fmt);
                (void) vsnprintf(text, sizeof(text), fmt, ap);
                va_end(ap);
                /* One write per line: workers share stderr. */
                fprintf(stderr, "loadgen: session %u: %s%s%s%s\n", s->id, text,
                        e != 0 ? " (" : "", e != 0 ? ERR_reason_error_string(e) ?: "TLS error" : "",
                        e != 0 ? ")" : "");
                if (reported == ERROR_REPORT_MAX)
                        fprintf(stderr, "loadgen: further errors are only counted\n");
        }
        ERR_clear_error();
        session_close(w, s);
        s->restart_at += RESTART_DELAY_USEC;
}

/* Bytes from the connection: >0 read, 0 EOF (or close_notify), -EAGAIN to
 * wait for the socket, other negative errno on failure. */
static ssize_t session_recv(Session *s, void *buf, size_t len) {
        if (s->ssl) {
                size_t n;
                int r;

                ERR_clear_error();
                r = SSL_read_ex(s->ssl, buf, len, &n);
                if (r > 0)
                        return (ssize_t) n;
                switch (SSL_get_error(s->ssl, r)) {
                case SSL_ERROR_WANT_READ:
                case SSL_ERROR_WANT_WRITE:
                        return -EAGAIN;
                case SSL_ERROR_ZERO_RETURN:
                        return 0;
                case SSL_ERROR_SYSCALL:
                        return errno > 0 ? -errno : -EPIPE;
                default:
                        return -EPROTO;
                }
        }
        for (;;) {
                ssize_t n = recv(s->fd, buf, len, 0);
                if (n >= 0)
                        return n;
                if (errno == EINTR)
                        continue;
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
}

static ssize_t session_write(Session *s, const void *buf, size_t len) {
        if (s->ssl) {
                size_t n;
                int r;

                ERR_clear_error();
                r = SSL_write_ex(s->ssl, buf, len, &n);
                if (r > 0)
                        return (ssize_t) n;
                switch (SSL_get_error(s->ssl, r)) {
                case SSL_ERROR_WANT_READ:
                case SSL_ERROR_WANT_WRITE:
                        return -EAGAIN;
                case SSL_ERROR_SYSCALL:
                        return errno > 0 ? -errno : -EPIPE;
                default:
                        return -EPROTO;
                }
        }
        for (;;) {
                ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL);
                if (n >= 0)
                        return n;
                if (errno == EINTR)
                        continue;
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
}

/* Writes what is queued: commands first, then the message in WRITE_CHUNK
 * pieces. Returns 1 when everything is out, 0 when the socket is full
 * (EPOLLOUT brings us back; a retried SSL_write gets the same arguments),
 * negative errno on failure. */
static int session_flush(Session *s) {
        while (s->cmd_off < s->cmd_len) {
                ssize_t n = session_write(s, s->cmd + s->cmd_off, s->cmd_len - s->cmd_off);
                if (n == -EAGAIN)
                        return 0;
                if (n < 0)
                        return (int) n;
                s->cmd_off += (size_t) n;
        }
        s->cmd_len = s->cmd_off = 0;

        while (s->out && s->out_off < s->out_len) {
                size_t len = MIN((size_t) WRITE_CHUNK, s->out_len - s->out_off);
                ssize_t n = session_write(s, s->out + s->out_off, len);
                if (n == -EAGAIN)
                        return 0;
                if (n < 0)
                        return (int) n;
                s->out_off += (size_t) n;
        }
        s->out = NULL;
        s->out_len = s->out_off = 0;
        return 1;
}

/* Queues a command line (CRLF added) behind anything not yet written. The
 * caller flushes; the drive loop does that right after the reply handler. */
static int session_send(Worker *w, Session *s, const char *fmt, ...) {
        va_list ap;
        int n;

        if (s->cmd_off > 0 && s->cmd_off == s->cmd_len)
                s->cmd_len = s->cmd_off = 0;
        va_start(ap, fmt);
        n = vsnprintf(s->cmd + s->cmd_len, sizeof(s->cmd) - s->cmd_len, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t) n + 2 >= sizeof(s->cmd) - s->cmd_len)
                return -ENOBUFS;
        s->cmd_len += (size_t) n;
        memcpy(s->cmd + s->cmd_len, "\r\n", 2);
        s->cmd_len += 2;
        return 0;
}

static void session_quit(Worker *w, Session *s, uint64_t now) {
        if (session_send(w, s, "QUIT") < 0)
                return session_fail(w, s, "command buffer full");
        session_set_phase(s, PHASE_QUIT, now);
}

/* Messages mode: the next transaction on this connection, or QUIT. */
static void session_next_message(Worker *w, Session *s, uint64_t now) {
        const Options *o = &w->run->opt;
        int r;

        if (w->run->stopping || s->msgs_in_conn >= o->msgs_per_conn)
                return session_quit(w, s, now);

        if (o->count > 0) {
                uint64_t n = atomic_fetch_add(&w->run->started_msgs, 1) + 1;

                /* Another worker may have taken the last one. */
                if (n > o->count)
                        return session_quit(w, s, now);
                if (n == o->count)
                        run_request_stop(w->run, now);
        }
        s->t_mail = now;
        r = session_send(w, s, "MAIL FROM:<%s>", o->from);
        /* RFC 2920 3.1: RCPT and DATA may follow MAIL in the same group;
         * DATA ends the group, the body waits for its 354. */
        if (r >= 0 && s->pipelining)
                r = session_send(w, s, "RCPT TO:<%s>\r\nDATA", o->to);
        if (r < 0)
                return session_fail(w, s, "command buffer full");
        session_set_phase(s, PHASE_MAIL, now);
}

/* EHLO answered on the final channel (after STARTTLS, or the first with
 * --tls none). */
static void session_established(Worker *w, Session *s, uint64_t now) {
        switch (w->run->opt.mode) {
        case MODE_HANDSHAKE:
                return session_quit(w, s, now);
        case MODE_IDLE:
                hist_add(&w->hist, now - s->t_connect);
                if (w->run->stopping)
                        return session_quit(w, s, now);
                s->established = true;
                w->run->established++;
                session_set_phase(s, PHASE_IDLE, now);
                return;
        case MODE_MESSAGES:
        default:
                s->msgs_in_conn = 0;
                return session_next_message(w, s, now);
        }
}

static int session_start_tls(Worker *w, Session *s) {
        const char *host = w->run->opt.host;
        struct in6_addr a6;
        struct in_addr a4;

        s->ssl = SSL_new(w->run->ctx);
        if (!s->ssl)
                return -ENOMEM;
        SSL_set_app_data(s->ssl, s);
        if (!SSL_set_fd(s->ssl, s->fd))
                return -EIO;
        SSL_set_connect_state(s->ssl);
        /* RFC 6066 3: SNI carries host names only, never address literals. */
        if (inet_pton(AF_INET, host, &a4) != 1 && inet_pton(AF_INET6, host, &a6) != 1 &&
            !SSL_set_tlsext_host_name(s->ssl, host))
                return -EINVAL;
        if (s->saved && !SSL_set_session(s->ssl, s->saved))
                return -EINVAL;
        return 0;
}

/* EHLO keywords (RFC 5321 4.1.1.1): one per line after the first. */
static void session_ehlo_line(Session *s, const char *text, size_t len) {
        if (len >= 10 && strncasecmp(text, "PIPELINING", 10) == 0 && (len == 10 || text[10] == ' '))
                s->pipelining = true;
        else if (len >= 8 && strncasecmp(text, "STARTTLS", 8) == 0 && (len == 8 || text[8] == ' '))
                s->starttls = true;
}

/* A complete reply with its code. */
static void session_reply(Worker *w, Session *s, int code, uint64_t now) {
        const Options *o = &w->run->opt;
        int r;

        switch (s->phase) {
        case PHASE_BANNER:
                if (code != 220)
                        break;
                s->pipelining = s->starttls = false;
                if (session_send(w, s, "EHLO " EHLO_NAME) < 0)
                        return session_fail(w, s, "command buffer full");
                return session_set_phase(s, PHASE_EHLO, now);

        case PHASE_EHLO:
                if (code != 250)
                        break;
                if (o->tls == TLS_MODE_NONE)
                        return session_established(w, s, now);
                if (!s->starttls)
                        return session_fail(w, s, "server does not offer STARTTLS");
                if (session_send(w, s, "STARTTLS") < 0)
                        return session_fail(w, s, "command buffer full");
                return session_set_phase(s, PHASE_STARTTLS, now);

        case PHASE_STARTTLS:
                if (code != 220)
                        break;
                /* RFC 3207 4.2 (and CVE-2011-0411 the other way round):
                 * nothing may follow the 220 in the clear. */
                if (s->rlen > 0)
                        return session_fail(w, s, "data after the 220 to STARTTLS");
                r = session_start_tls(w, s);
                if (r < 0)
                        return session_fail(w, s, "cannot set up TLS: %s", strerror(-r));
                return session_set_phase(s, PHASE_HANDSHAKE, now);

        case PHASE_EHLO_TLS:
                if (code != 250)
                        break;
                return session_established(w, s, now);

        case PHASE_MAIL:
                if (code != 250)
                        break;
                if (!s->pipelining && session_send(w, s, "RCPT TO:<%s>", o->to) < 0)
                        return session_fail(w, s, "command buffer full");
                return session_set_phase(s, PHASE_RCPT, now);

        case PHASE_RCPT:
                if (code != 250 && code != 251)
                        break;
                if (!s->pipelining && session_send(w, s, "DATA") < 0)
                        return session_fail(w, s, "command buffer full");
                return session_set_phase(s, PHASE_DATA, now);

        case PHASE_DATA:
                if (code != 354)
                        break;
                s->out = w->run->message;
                s->out_len = w->run->message_len;
                s->out_off = 0;
                return session_set_phase(s, PHASE_BODY, now);

        case PHASE_DOT:
                if (code != 250)
                        break;
                hist_add(&w->hist, now - s->t_mail);
                w->n_messages++;
                w->n_bytes += o->size;
                s->msgs_in_conn++;
                return session_next_message(w, s, now);

        case PHASE_QUIT:
                if (code != 221)
                        break;
                w->n_sessions++;
                if (o->mode == MODE_HANDSHAKE)
                        hist_add(&w->hist, now - s->t_connect);
                if (s->ssl) {
                        /* Our close_notify, without waiting for theirs:
                         * the EOF below is what we wait for. */
                        ERR_clear_error();
                        (void) SSL_shutdown(s->ssl);
                        ERR_clear_error();
                }
                return session_set_phase(s, PHASE_CLOSING, now);

        default:
                break;
        }
        session_fail(w, s, "unexpected reply %d in %s", code, phase_table[s->phase]);
}

/* Splits the read buffer into reply lines (RFC 5321 4.2.1: "ddd-text" for
 * continuation lines, "ddd text" or "ddd" for the last). */
static void session_parse(Worker *w, Session *s, uint64_t now) {
        size_t off = 0;

        while (s->fd >= 0 && s->phase != PHASE_HANDSHAKE) {
                const char *line = s->rbuf + off;
                const char *nl = memchr(line, '\n', s->rlen - off);
                size_t len;
                bool more;
                int code;

                if (!nl)
                        break;
                len = (size_t) (nl - line);
                off += len + 1;
                if (len > 0 && line[len - 1] == '\r')
                        len--;
                if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
                    line[2] < '0' || line[2] > '9' || (len > 3 && line[3] != ' ' && line[3] != '-'))
                        return session_fail(w, s, "malformed reply line in %s", phase_table[s->phase]);
                code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
                more = len > 3 && line[3] == '-';
                if (s->reply_code != 0 && code != s->reply_code)
                        return session_fail(w, s, "reply code changes within a reply");
                /* EHLO keywords are on the lines after the first. */
                if (s->reply_code != 0 && (s->phase == PHASE_EHLO || s->phase == PHASE_EHLO_TLS))
                        session_ehlo_line(s, line + 4, len > 4 ? len - 4 : 0);
                if (more) {
                        s->reply_code = code;
                        continue;
                }
                s->reply_code = 0;
                /* Consume before acting: the STARTTLS reply checks for
                 * leftovers, and a failure resets the buffer. */
                s->rlen -= off;
                memmove(s->rbuf, s->rbuf + off, s->rlen);
                off = 0;
                session_reply(w, s, code, now);
        }
        if (s->fd < 0)
                return;
        /* Continuation lines already looked at are dropped too. */
        s->rlen -= off;
        memmove(s->rbuf, s->rbuf + off, s->rlen);
        if (s->rlen == sizeof(s->rbuf))
                session_fail(w, s, "reply line too long in %s", phase_table[s->phase]);
}

static void session_finish_close(Worker *w, Session *s) {
        session_close(w, s);
        session_begin(w, s);
}

/* Makes all the progress the socket allows (epoll is edge-triggered: we
 * read until EAGAIN and write until EAGAIN or done). */
static void session_drive(Worker *w, Session *s) {
        while (s->fd >= 0) {
                uint64_t now = now_usec();
                bool progress = false;
                ssize_t n;
                int r;

                if (s->phase == PHASE_CONNECTING) {
                        int err = 0;
                        socklen_t sl = sizeof(err);

                        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
                                err = errno;
                        if (err == EINPROGRESS || err == EALREADY)
                                return;
                        if (err != 0)
                                return session_fail(w, s, "connect: %s", strerror(err));
                        /* Connected only once the socket is writable. */
                        struct sockaddr_storage peer;
                        socklen_t pl = sizeof(peer);
                        if (getpeername(s->fd, (struct sockaddr *) &peer, &pl) < 0)
                                return;
                        session_set_phase(s, PHASE_BANNER, now);
                }

                if (s->phase == PHASE_HANDSHAKE) {
                        ERR_clear_error();
                        r = SSL_do_handshake(s->ssl);
                        if (r <= 0) {
                                int e = SSL_get_error(s->ssl, r);
                                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                                        return;
                                return session_fail(w, s, "TLS handshake failed");
                        }
                        if (SSL_session_reused(s->ssl))
                                w->n_resumed++;
                        w->tls_version = SSL_get_version(s->ssl);
                        w->tls_cipher = SSL_get_cipher_name(s->ssl);
                        s->pipelining = s->starttls = false;
                        if (session_send(w, s, "EHLO " EHLO_NAME) < 0)
                                return session_fail(w, s, "command buffer full");
                        session_set_phase(s, PHASE_EHLO_TLS, now);
                }

                r = session_flush(s);
                if (r < 0)
                        return session_fail(w, s, "write in %s: %s", phase_table[s->phase], strerror(-r));
                if (r > 0 && s->phase == PHASE_BODY)
                        session_set_phase(s, PHASE_DOT, now);

                n = session_recv(s, s->rbuf + s->rlen, sizeof(s->rbuf) - s->rlen);
                if (n == 0) {
                        if (s->phase == PHASE_CLOSING)
                                return session_finish_close(w, s);
                        return session_fail(w, s, "connection closed by the server in %s",
                                            phase_table[s->phase]);
                }
                if (n < 0 && n != -EAGAIN) {
                        if (s->phase == PHASE_CLOSING)
                                return session_finish_close(w, s);
                        return session_fail(w, s, "read in %s: %s", phase_table[s->phase],
                                            strerror((int) -n));
                }
                if (n > 0) {
                        if (s->phase == PHASE_CLOSING)
                                return session_fail(w, s, "data after 221");
                        s->rlen += (size_t) n;
                        session_parse(w, s, now);
                        progress = true;
                }
                /* Bytes came in: replies may have queued commands or
                 * started the handshake, and there may be more to read. */
                if (!progress)
                        return;
        }
}

/* Starts a new connection in this slot, unless the run is winding down. */
static void session_begin(Worker *w, Session *s) {
        const Options *o = &w->run->opt;
        _cleanup_close_ int fd = -EBADF;
        struct epoll_event ev;
        uint64_t now = now_usec();
        int one = 1;

        if (w->run->stopping)
                return;
        if (o->mode == MODE_HANDSHAKE && o->count > 0) {
                uint64_t n = atomic_fetch_add(&w->run->started_sessions, 1) + 1;

                if (n >= o->count)
                        run_request_stop(w->run, now);
                if (n > o->count)
                        return;
        }

        fd = socket(w->run->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0)
                return session_fail(w, s, "socket: %m");
        /* Commands are small and each one waits for its reply. */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *) &w->run->addr, w->run->addr_len) < 0 && errno != EINPROGRESS)
                return session_fail(w, s, "connect: %m");

        ev = (struct epoll_event) { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = s };
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
                return session_fail(w, s, "epoll_ctl: %m");

        w->active++;
        s->fd = TAKE_FD(fd);
        s->t_connect = now;
        s->rlen = 0;
        s->reply_code = 0;
        session_set_phase(s, PHASE_CONNECTING, now);
}

/* ----------------------------------------------------------------- run -- */

/* Idle mode: the sessions are held from now on; the driver measures the
 * server while they are. Printed once, by whichever worker sees it first. */
static void run_ready(Run *run, uint64_t now) {
        bool expected = false;

        if (!atomic_compare_exchange_strong(&run->ready, &expected, true))
                return;
        run->established_ready = run->established;
        fprintf(stderr, "READY %u\n", run->established_ready);
        fflush(stderr);
        run->hold_end = now + (uint64_t) (run->opt.hold_sec * USEC_PER_SEC);
        run->stop_deadline = USEC_INFINITY;
}

/* Timeouts, restarts, the end of --duration and of the idle hold. */
static void worker_timers(Worker *w, uint64_t now) {
        Run *run = w->run;
        const Options *o = &run->opt;
        unsigned setting_up = 0;

        if (interrupted)
                run_request_stop(run, now);
        if (w->n_errors >= ERRORS_WITHOUT_SUCCESS_MAX && w->n_sessions == 0 && w->n_messages == 0 &&
            !run->stopping) {
                fprintf(stderr, "loadgen: %" PRIu64 " errors and no success, giving up\n", w->n_errors);
                run_request_stop(run, now);
        }
        if (now >= run->stop_deadline) {
                /* Idle mode: not all N came up in time; say how many did. */
                if (o->mode == MODE_IDLE && !run->ready)
                        run_ready(run, now);
                else
                        run_request_stop(run, now);
        }
        if (o->mode == MODE_IDLE && !run->ready && run->established == o->sessions)
                run_ready(run, now);
        if (run->ready && now >= run->hold_end)
                run_request_stop(run, now);

        if (run->stopping && !w->stop_seen) {
                /* Held sessions have nothing in flight: they QUIT now. */
                w->stop_seen = true;
                for (unsigned i = 0; i < w->n_slots; i++) {
                        Session *s = &w->sessions[i];
                        if (s->phase == PHASE_IDLE) {
                                session_quit(w, s, now);
                                if (s->fd >= 0)
                                        session_drive(w, s);
                        }
                }
        }

        for (unsigned i = 0; i < w->n_slots; i++) {
                Phase p = w->sessions[i].phase;
                if (p >= PHASE_CONNECTING && p <= PHASE_EHLO_TLS)
                        setting_up++;
        }

        for (unsigned i = 0; i < w->n_slots; i++) {
                Session *s = &w->sessions[i];

                if (s->phase == PHASE_DOWN) {
                        if (now >= s->restart_at && setting_up < SETUP_INFLIGHT_MAX) {
                                session_begin(w, s);
                                setting_up++;
                        }
                } else if (run->stopping && now >= run->t_stop + DRAIN_MAX_USEC)
                        session_fail(w, s, "still in %s when the run ended", phase_table[s->phase]);
                else if (now >= s->deadline) {
                        if (s->phase == PHASE_CLOSING)
                                session_finish_close(w, s);
                        else
                                session_fail(w, s, "timeout in %s", phase_table[s->phase]);
                }
        }
}

static void *worker_loop(void *userdata) {
        Worker *w = userdata;
        struct epoll_event events[EVENTS_MAX];

        for (;;) {
                int n;

                worker_timers(w, now_usec());
                if (w->run->stopping && w->active == 0)
                        break;

                n = epoll_wait(w->epoll_fd, events, EVENTS_MAX, TICK_MSEC);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        w->result = -errno;
                        run_request_stop(w->run, now_usec());
                        break;
                }
                for (int i = 0; i < n; i++) {
                        Session *s = events[i].data.ptr;
                        if (s->fd >= 0)
                                session_drive(w, s);
                }
        }
        /* OpenSSL keeps per-thread error state. */
        OPENSSL_thread_stop();
        return NULL;
}

static int run_resolve(Run *run) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
        struct addrinfo *ai = NULL;
        int r;

        r = getaddrinfo(run->opt.host, run->opt.port, &hints, &ai);
        if (r != 0) {
                fprintf(stderr, "loadgen: %s: %s\n", run->opt.host, gai_strerror(r));
                return -EHOSTUNREACH;
        }
        memcpy(&run->addr, ai->ai_addr, ai->ai_addrlen);
        run->addr_len = ai->ai_addrlen;
        freeaddrinfo(ai);
        return 0;
}

static void raise_fd_limit(unsigned sessions) {
        struct rlimit rl;

        /* A socket per session, plus the few we start with. */
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= (rlim_t) sessions + 64)
                return;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < (rlim_t) sessions + 64)
                fprintf(stderr, "loadgen: warning: open file limit below %u sessions\n", sessions);
}

static void on_signal(int sig) {
        interrupted = 1;
}

static double tv_sec(const struct timeval *tv) {
        return (double) tv->tv_sec + (double) tv->tv_usec / 1e6;
}

static void print_number(const Options *o, bool *first, const char *key, int decimals, double v) {
        if (o->json)
                printf("%s\"%s\": ", *first ? "{" : ", ", key);
        else
                printf("%-16s", key);
        printf("%.*f", decimals, v);
        if (!o->json)
                fputc('\n', stdout);
        *first = false;
}

static void run_print(const Run *run, uint64_t t_end, const struct rusage *ru0, const struct rusage *ru1) {
        const Options *o = &run->opt;
        double elapsed = (double) (t_end - run->t_start) / 1e6;
        double div = elapsed > 0 ? elapsed : 1;
        uint64_t sessions = 0, messages = 0, bytes = 0, errors = 0, resumed = 0;
        const char *version = NULL, *cipher = NULL;
        static Histogram hist;
        bool first = true;

        for (unsigned i = 0; i < o->threads; i++) {
                const Worker *w = &run->workers[i];

                sessions += w->n_sessions;
                messages += w->n_messages;
                bytes += w->n_bytes;
                errors += w->n_errors;
                resumed += w->n_resumed;
                version = w->tls_version ?: version;
                cipher = w->tls_cipher ?: cipher;
                for (unsigned b = 0; b < HIST_BUCKETS; b++)
                        hist.counts[b] += w->hist.counts[b];
                hist.total += w->hist.total;
        }

        print_number(o, &first, "sessions", 0, (double) sessions);
        print_number(o, &first, "messages", 0, (double) messages);
        print_number(o, &first, "bytes", 0, (double) bytes);
        print_number(o, &first, "errors", 0, (double) errors);
        print_number(o, &first, "elapsed_s", 3, elapsed);
        print_number(o, &first, "sessions_per_s", 1, (double) sessions / div);
        print_number(o, &first, "messages_per_s", 1, (double) messages / div);
        print_number(o, &first, "mb_per_s", 2, (double) bytes / 1e6 / div);
        print_number(o, &first, "latency_p50_ms", 3, (double) hist_quantile(&hist, 0.50) / 1e3);
        print_number(o, &first, "latency_p99_ms", 3, (double) hist_quantile(&hist, 0.99) / 1e3);
        print_number(o, &first, "cpu_user_s", 3, tv_sec(&ru1->ru_utime) - tv_sec(&ru0->ru_utime));
        print_number(o, &first, "cpu_sys_s", 3, tv_sec(&ru1->ru_stime) - tv_sec(&ru0->ru_stime));
        if (o->mode == MODE_IDLE)
                print_number(o, &first, "established", 0, (double) run->established_ready);
        if (o->resume)
                print_number(o, &first, "resumed", 0, (double) resumed);
        print_number(o, &first, "threads", 0, (double) o->threads);

        if (o->json)
                printf(", \"mode\": \"%s\", \"tls\": \"%s\"}\n", mode_table[o->mode],
                       o->tls == TLS_MODE_NONE ? "none" : version ?: "");
        else {
                printf("%-16s%s\n", "mode", mode_table[o->mode]);
                printf("%-16s%s %s\n", "tls", o->tls == TLS_MODE_NONE ? "none" : version ?: "-",
                       cipher ?: "");
        }
        fflush(stdout);
}

static void run_done(Run *run) {
        for (unsigned i = 0; run->workers && i < run->opt.threads; i++) {
                Worker *w = &run->workers[i];

                for (unsigned j = 0; w->sessions && j < w->n_slots; j++) {
                        Session *s = &w->sessions[j];
                        SSL_free(s->ssl);
                        safe_close(s->fd);
                        SSL_SESSION_free(s->saved);
                }
                free(w->sessions);
                safe_close(w->epoll_fd);
        }
        free(run->workers);
        free(run->message);
        SSL_CTX_free(run->ctx);
}

/* Splits the sessions over the workers, ids numbered across all of them. */
static int run_setup_workers(Run *run) {
        const Options *o = &run->opt;
        unsigned id = 0;

        run->workers = calloc(o->threads, sizeof(Worker));
        if (!run->workers)
                return -ENOMEM;
        for (unsigned i = 0; i < o->threads; i++)
                run->workers[i].epoll_fd = -EBADF;
        for (unsigned i = 0; i < o->threads; i++) {
                Worker *w = &run->workers[i];

                w->run = run;
                w->index = i;
                w->n_slots = o->sessions / o->threads + (i < o->sessions % o->threads);
                w->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
                if (w->epoll_fd < 0)
                        return -errno;
                w->sessions = calloc(w->n_slots, sizeof(Session));
                if (!w->sessions)
                        return -ENOMEM;
                for (unsigned j = 0; j < w->n_slots; j++)
                        w->sessions[j] = (Session) {
                                .id = id++,
                                .fd = -EBADF,
                                .deadline = USEC_INFINITY,
                                .restart_at = run->t_start,
                        };
        }
        return 0;
}

int main(int argc, char *argv[]) {
        static Run run = {};
        struct sigaction sa = { .sa_handler = on_signal };
        struct rusage ru0, ru1;
        uint64_t t_end;
        int r;

        r = parse_argv(argc, argv, &run.opt);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        r = message_build(&run.opt, &run.message, &run.message_len);
        if (r == -ERANGE) {
                fprintf(stderr, "loadgen: --size is smaller than the message headers\n");
                return 2;
        }
        if (r < 0) {
                fprintf(stderr, "loadgen: cannot build the message: %s\n", strerror(-r));
                return 1;
        }
        if (run_resolve(&run) < 0)
                goto fail;
        if (run.opt.tls != TLS_MODE_NONE) {
                r = tls_context_new(&run.opt, &run.ctx);
                if (r < 0) {
                        fprintf(stderr, "loadgen: TLS setup failed (--sigalgs/--groups?): %s\n",
                                ERR_reason_error_string(ERR_get_error()) ?: strerror(-r));
                        goto fail;
                }
        }
        raise_fd_limit(run.opt.sessions);
        (void) signal(SIGPIPE, SIG_IGN);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);

        run.t_start = now_usec();
        r = run_setup_workers(&run);
        if (r < 0) {
                fprintf(stderr, "loadgen: setup: %s\n", strerror(-r));
                goto fail;
        }
        if (run.opt.mode == MODE_IDLE)
                run.stop_deadline = run.t_start + (run.opt.duration_sec > 0 ?
                        (uint64_t) (run.opt.duration_sec * USEC_PER_SEC) : IDLE_SETUP_DEFAULT_USEC);
        else
                run.stop_deadline = run.opt.duration_sec > 0 ?
                        run.t_start + (uint64_t) (run.opt.duration_sec * USEC_PER_SEC) : USEC_INFINITY;
        run.hold_end = USEC_INFINITY;

        (void) getrusage(RUSAGE_SELF, &ru0);
        /* Worker 0 runs on the main thread; signals may land on any. */
        for (unsigned i = 1; i < run.opt.threads; i++) {
                r = pthread_create(&run.workers[i].thread, NULL, worker_loop, &run.workers[i]);
                if (r != 0) {
                        fprintf(stderr, "loadgen: cannot start thread: %s\n", strerror(r));
                        run_request_stop(&run, now_usec());
                        for (unsigned j = 1; j < i; j++)
                                (void) pthread_join(run.workers[j].thread, NULL);
                        goto fail;
                }
        }
        (void) worker_loop(&run.workers[0]);
        for (unsigned i = 1; i < run.opt.threads; i++)
                (void) pthread_join(run.workers[i].thread, NULL);
        t_end = now_usec();
        (void) getrusage(RUSAGE_SELF, &ru1);

        for (unsigned i = 0; i < run.opt.threads; i++)
                if (run.workers[i].result < 0) {
                        fprintf(stderr, "loadgen: event loop: %s\n", strerror(-run.workers[i].result));
                        goto fail;
                }
        run_print(&run, t_end, &ru0, &ru1);
        run_done(&run);
        return 0;
fail:
        run_done(&run);
        return 1;
}
