/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Delivery into a local directory (routes of kind maildir): one file per
 * message and recipient, written to DIR/tmp, fsynced, renamed into DIR/new
 * (the Maildir protocol). The file holds the message as a mail reader
 * expects it: Return-Path and Delivered-To prepended, dot-stuffing removed,
 * CRLF line ends kept as sent. Blocking file I/O: runs on a worker thread.
 */

#include <stdint.h>

/* Returns 0, or negative errno (the recipient is deferred). *ret_name gets
 * the file name under new/ if non-NULL. */
int local_deliver(const char *dir, uint64_t mid, uint32_t rid, const char *sender,
                  const char *rcpt, int data_fd, uint64_t offset, uint64_t size, char **ret_name);
