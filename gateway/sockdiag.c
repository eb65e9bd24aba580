/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Kernel ULP view of one TCP socket over inet_diag (see sockdiag.h).
 *
 * libnl's idiag module does not parse INET_DIAG_ULP_INFO, so this builds
 * the request itself with libnl's core: one SOCK_DIAG_BY_FAMILY request
 * (no dump) carrying a struct inet_diag_req_v2 with the exact 4-tuple and
 * INET_DIAG_INFO asked for, so that the kernel's TCP handler adds its
 * auxiliary attributes: INET_DIAG_ULP_INFO, a nest with the ULP's name and,
 * for "tls", INET_ULP_INFO_TLS with TLS_INFO_VERSION/CIPHER/TXCONF/RXCONF
 * (net/ipv4/tcp_diag.c, net/tls/tls_main.c). A socket that is gone is
 * answered with ENOENT, which reads as "" here: nothing to report.
 *
 * Returns 1 when the kernel knows the socket, 0 when it does not, or
 * negative errno; never logs.
 */

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <linux/tls.h>

#include <netlink/attr.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include "sockdiag.h"
#include "util/macro.h"

/* TLS_INFO_TXCONF/RXCONF values: the kernel's TLS_CONF_* (include/net/tls.h,
 * not in the UAPI headers but part of the netlink ABI since Linux 5.3). */
#define SOCKDIAG_TLS_CONF_BASE          1       /* ULP attached, no keys */
#define SOCKDIAG_TLS_CONF_SW            2       /* kernel software crypto */
#define SOCKDIAG_TLS_CONF_HW            3       /* NIC offload of the crypto */
#define SOCKDIAG_TLS_CONF_HW_RECORD     4       /* NIC offload of whole records */

/* A ULP name is a kernel module alias, TCP_ULP_NAME_MAX (16) in
 * include/net/tcp.h. */
#define SOCKDIAG_ULP_NAME_MAX 16

/* Longest text: "tls" + version + cipher + both directions. */
#define SOCKDIAG_TEXT_MAX 96

struct SockDiag {
        struct nl_sock *sock;
};

/* What one reply told us. */
typedef struct UlpReply {
        int error;                      /* from NLMSG_ERROR, negative errno */
        bool found;
        char text[SOCKDIAG_TEXT_MAX];
} UlpReply;

static int nl_to_errno(int nlerr) {
        switch (nlerr < 0 ? -nlerr : nlerr) {
        case 0:
                return 0;
        case NLE_NOMEM:
                return -ENOMEM;
        case NLE_PERM:
                return -EPERM;
        case NLE_NOACCESS:
                return -EACCES;
        case NLE_OBJ_NOTFOUND:
                return -ENOENT;
        case NLE_INVAL:
                return -EINVAL;
        case NLE_OPNOTSUPP:
                return -EOPNOTSUPP;
        case NLE_AF_NOSUPPORT:
        case NLE_PROTO_MISMATCH:
                return -EAFNOSUPPORT;
        case NLE_AGAIN:
                return -EAGAIN;
        case NLE_INTR:
                return -EINTR;
        case NLE_MSGSIZE:
                return -EMSGSIZE;
        default:
                return -EIO;
        }
}

int sockdiag_new(SockDiag **ret) {
        SockDiag *d;
        int r;

        if (!ret)
                return -EINVAL;
        d = calloc(1, sizeof *d);
        if (!d)
                return -ENOMEM;
        d->sock = nl_socket_alloc();
        if (!d->sock) {
                free(d);
                return -ENOMEM;
        }
        /* One request, one answer (the record or an NLMSG_ERROR): an ACK
         * after a record would be left unread and taken for the next
         * lookup's answer. */
        nl_socket_disable_auto_ack(d->sock);
        r = nl_connect(d->sock, NETLINK_SOCK_DIAG);
        if (r < 0) {
                sockdiag_free(d);
                return nl_to_errno(r);
        }
        *ret = d;
        return 0;
}

SockDiag *sockdiag_free(SockDiag *d) {
        if (!d)
                return NULL;
        nl_socket_free(d->sock);        /* closes it */
        free(d);
        return NULL;
}

static const char *tls_version_name(uint16_t v) {
        switch (v) {
        case TLS_1_2_VERSION:
                return "1.2";
        case TLS_1_3_VERSION:
                return "1.3";
        default:
                return NULL;
        }
}

static const char *tls_cipher_name(uint16_t c) {
        switch (c) {
        case TLS_CIPHER_AES_GCM_128:
                return "aes-gcm-128";
        case TLS_CIPHER_AES_GCM_256:
                return "aes-gcm-256";
        case TLS_CIPHER_AES_CCM_128:
                return "aes-ccm-128";
        case TLS_CIPHER_CHACHA20_POLY1305:
                return "chacha20-poly1305";
        case TLS_CIPHER_SM4_GCM:
                return "sm4-gcm";
        case TLS_CIPHER_SM4_CCM:
                return "sm4-ccm";
        default:
                return NULL;
        }
}

static const char *tls_conf_name(uint16_t c) {
        switch (c) {
        case SOCKDIAG_TLS_CONF_BASE:
                return "none";
        case SOCKDIAG_TLS_CONF_SW:
                return "sw";
        case SOCKDIAG_TLS_CONF_HW:
                return "hw";
        case SOCKDIAG_TLS_CONF_HW_RECORD:
                return "hw-record";
        default:
                return "unknown";
        }
}

static bool nla_u16_ok(const struct nlattr *a) {
        return a && nla_len(a) >= (int) sizeof(uint16_t);
}

/* Appends to buf (bounded; text is truncated rather than overflowed). */
_printf_(2, 3) static void text_add(char *buf, const char *fmt, ...) {
        size_t n = strlen(buf);
        va_list ap;

        if (n >= SOCKDIAG_TEXT_MAX - 1)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(buf + n, SOCKDIAG_TEXT_MAX - n, fmt, ap);
        va_end(ap);
}

static void format_tls(const struct nlattr *nest, char *buf) {
        struct nlattr *tb[TLS_INFO_MAX + 1] = {};
        const char *s;

        if (nla_parse_nested(tb, TLS_INFO_MAX, (struct nlattr *) nest, NULL) < 0)
                return;
        /* Version and cipher exist only once keys were installed in at
         * least one direction (tls_get_info()). */
        if (nla_u16_ok(tb[TLS_INFO_VERSION])) {
                uint16_t v = nla_get_u16(tb[TLS_INFO_VERSION]);

                s = tls_version_name(v);
                if (s)
                        text_add(buf, " %s", s);
                else
                        text_add(buf, " 0x%04x", v);
        }
        if (nla_u16_ok(tb[TLS_INFO_CIPHER])) {
                uint16_t c = nla_get_u16(tb[TLS_INFO_CIPHER]);

                s = tls_cipher_name(c);
                if (s)
                        text_add(buf, " %s", s);
                else
                        text_add(buf, " cipher-%u", c);
        }
        if (nla_u16_ok(tb[TLS_INFO_TXCONF]))
                text_add(buf, " tx:%s", tls_conf_name(nla_get_u16(tb[TLS_INFO_TXCONF])));
        if (nla_u16_ok(tb[TLS_INFO_RXCONF]))
                text_add(buf, " rx:%s", tls_conf_name(nla_get_u16(tb[TLS_INFO_RXCONF])));
}

static int on_valid(struct nl_msg *msg, void *arg) {
        UlpReply *u = arg;
        struct nlmsghdr *h = nlmsg_hdr(msg);
        struct nlattr *tb[INET_DIAG_MAX + 1] = {};
        struct nlattr *ulp[INET_ULP_INFO_MAX + 1] = {};
        char name[SOCKDIAG_ULP_NAME_MAX + 1];

        if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
            !nlmsg_valid_hdr(h, (int) sizeof(struct inet_diag_msg)))
                return NL_SKIP;
        u->found = true;
        if (nlmsg_parse(h, (int) sizeof(struct inet_diag_msg), tb, INET_DIAG_MAX, NULL) < 0)
                return NL_STOP;
        if (!tb[INET_DIAG_ULP_INFO])
                return NL_STOP;         /* no ULP (or no CAP_NET_ADMIN) */
        if (nla_parse_nested(ulp, INET_ULP_INFO_MAX, tb[INET_DIAG_ULP_INFO], NULL) < 0 ||
            !ulp[INET_ULP_INFO_NAME])
                return NL_STOP;

        (void) nla_strlcpy(name, ulp[INET_ULP_INFO_NAME], sizeof name);
        /* The name comes from the kernel, but keep the text printable. */
        for (char *p = name; *p; p++)
                if (*p <= ' ' || *p >= 0x7f)
                        *p = '?';
        snprintf(u->text, sizeof u->text, "%s", name);
        if (ulp[INET_ULP_INFO_TLS])
                format_tls(ulp[INET_ULP_INFO_TLS], u->text);
        return NL_STOP;
}

static int on_error(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg) {
        UlpReply *u = arg;

        u->error = e->error < 0 ? e->error : -EIO;
        return NL_STOP;
}

/* Fills an inet_diag address (network byte order words) from a sockaddr. */
static int fill_addr(const struct sockaddr *sa, uint8_t family, __be16 *port, __be32 addr[4], uint32_t *ifindex) {
        if (sa->sa_family != family)
                return -EAFNOSUPPORT;
        if (family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

                *port = in->sin_port;
                addr[0] = in->sin_addr.s_addr;
        } else {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

                *port = in6->sin6_port;
                memcpy(addr, &in6->sin6_addr, sizeof in6->sin6_addr);
                if (in6->sin6_scope_id)
                        *ifindex = in6->sin6_scope_id;
        }
        return 0;
}

int sockdiag_ulp(SockDiag *d, const struct sockaddr *local, const struct sockaddr *peer, char **ret) {
        struct inet_diag_req_v2 req = {};
        struct nl_msg *msg = NULL;
        UlpReply u = {};
        char *s;
        int r;

        if (!d || !local || !peer || !ret)
                return -EINVAL;
        if (local->sa_family != AF_INET && local->sa_family != AF_INET6)
                return -EAFNOSUPPORT;

        req.sdiag_family = (uint8_t) local->sa_family;
        req.sdiag_protocol = IPPROTO_TCP;
        /* INET_DIAG_INFO makes the TCP handler add its auxiliary data,
         * among it INET_DIAG_ULP_INFO. */
        req.idiag_ext = 1 << (INET_DIAG_INFO - 1);
        req.idiag_states = ~0U;
        req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
        req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
        /* src is our end, dst the peer (inet_diag_find_one_icsk()). */
        r = fill_addr(local, req.sdiag_family, &req.id.idiag_sport, req.id.idiag_src, &req.id.idiag_if);
        if (r >= 0)
                r = fill_addr(peer, req.sdiag_family, &req.id.idiag_dport, req.id.idiag_dst, &req.id.idiag_if);
        if (r < 0)
                return r;

        msg = nlmsg_alloc_simple(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST);
        if (!msg)
                return -ENOMEM;
        r = nlmsg_append(msg, &req, sizeof req, NLMSG_ALIGNTO);
        if (r < 0) {
                nlmsg_free(msg);
                return nl_to_errno(r);
        }
        r = nl_socket_modify_cb(d->sock, NL_CB_VALID, NL_CB_CUSTOM, on_valid, &u);
        if (r >= 0)
                r = nl_socket_modify_err_cb(d->sock, NL_CB_CUSTOM, on_error, &u);
        if (r >= 0)
                r = nl_send_auto(d->sock, msg);
        nlmsg_free(msg);
        if (r < 0)
                return nl_to_errno(r);

        r = nl_recvmsgs_default(d->sock);
        if (r < 0 && u.error == 0)
                return nl_to_errno(r);
        /* Gone (closed meanwhile, or never ours): nothing to report. */
        if (u.error == -ENOENT)
                u.error = 0;
        if (u.error < 0)
                return u.error;

        s = strdup(u.text);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return u.found;
}

int sockdiag_ulp_fd(int fd, char **ret) {
        struct sockaddr_storage local, peer;
        socklen_t llen = sizeof local, plen = sizeof peer;
        SockDiag *d = NULL;
        int r;

        if (fd < 0 || !ret)
                return -EINVAL;
        if (getsockname(fd, (struct sockaddr *) &local, &llen) < 0 ||
            getpeername(fd, (struct sockaddr *) &peer, &plen) < 0)
                return -errno;

        r = sockdiag_new(&d);
        if (r < 0)
                return r;
        r = sockdiag_ulp(d, (struct sockaddr *) &local, (struct sockaddr *) &peer, ret);
        sockdiag_free(d);
        return r;
}
