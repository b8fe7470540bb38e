#!/usr/bin/env bash
# Install Debian's Postfix and run it on 127.0.0.1 for the @pytest.mark.postfix
# tests. Needs root and apt-get; run by .ci/run, never by the test suite.
#
#   127.0.0.1:2525  STARTTLS required (smtpd_tls_security_level=encrypt),
#                   TLS 1.2+ only, a certificate for localhost from a
#                   throwaway CA written to $STATE/ca.pem
#   127.0.0.1:2526  no TLS at all (smtpd_tls_security_level=none)
#
# Mail for @carepost.test goes to the Maildir $MAILDIR. Postfix logs every
# SMTP command of loopback clients (debug_peer_list) to $LOG, so the tests
# can show that no MAIL command reached the port without TLS.
set -euo pipefail

STATE=/etc/postfix/carepost-test
MAILDIR=/var/mail/vhosts/carepost.test/inbox
LOG=/var/log/postfix-carepost.log

if ! command -v postfix >/dev/null; then
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    echo "postfix postfix/mailname string carepost.localhost" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi

mkdir -p "$STATE"
if [ ! -f "$STATE/server.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=carepost test CA" \
        -keyout "$STATE/ca.key" -out "$STATE/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$STATE/server.key" -out "$STATE/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' \
        > "$STATE/server.ext"
    openssl x509 -req -in "$STATE/server.csr" -CA "$STATE/ca.pem" -CAkey "$STATE/ca.key" \
        -CAcreateserial -days 30 -extfile "$STATE/server.ext" -out "$STATE/server.pem" \
        2>/dev/null
    chmod 600 "$STATE/server.key" "$STATE/ca.key"
fi

mkdir -p "$MAILDIR" && chown -R mail:mail /var/mail/vhosts
postconf -e \
    "inet_interfaces = 127.0.0.1" \
    "inet_protocols = ipv4" \
    "mydestination = localhost" \
    "mynetworks = 127.0.0.0/8" \
    "virtual_mailbox_domains = carepost.test" \
    "virtual_mailbox_base = /var/mail/vhosts" \
    "virtual_mailbox_maps = static:carepost.test/inbox/" \
    "virtual_minimum_uid = 8" \
    "virtual_uid_maps = static:8" \
    "virtual_gid_maps = static:8" \
    "smtpd_tls_cert_file = $STATE/server.pem" \
    "smtpd_tls_key_file = $STATE/server.key" \
    "smtpd_tls_protocols = >=TLSv1.2" \
    "smtpd_tls_mandatory_protocols = >=TLSv1.2" \
    "smtpd_tls_loglevel = 1" \
    "debug_peer_list = 127.0.0.1" \
    "debug_peer_level = 2" \
    "maillog_file = $LOG"

# Replace the port 25 listener with the two test ports (chroot off, so no
# files need copying into the spool).
postconf -M# smtp/inet 2>/dev/null || true
postconf -M "127.0.0.1:2525/inet=127.0.0.1:2525 inet n - n - - smtpd -o smtpd_tls_security_level=encrypt -o syslog_name=postfix/tls"
postconf -M "127.0.0.1:2526/inet=127.0.0.1:2526 inet n - n - - smtpd -o smtpd_tls_security_level=none -o syslog_name=postfix/plain"

postfix check
if postfix status >/dev/null 2>&1; then postfix reload; else postfix start; fi
echo "== postfix on 127.0.0.1:2525 (STARTTLS required) and :2526 (no TLS); log $LOG"
