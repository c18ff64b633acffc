#!/usr/bin/env python3
"""Probes of the network and login bounds for tests/limits.rs, as real clients meet them.

Each mode prints one JSON object on standard output and exits 0; the Rust test judges it.

  hash-burst IMAPS_PORT SUBMISSIONS_PORT USER PASSWORD COUNT
      COUNT IMAP (imaplib) and COUNT SMTP (smtplib) clients connect over TLS, wait at one
      barrier, then all log in at once: how each answered and how long it took.
  slow-header HTTPS_PORT
      An HTTP/1.1 request whose header comes a byte every 100 ms: when the server closed.
  slow-body HTTPS_PORT
      A whole POST header, then its body a byte every 100 ms: when the server closed.
  idle-keepalive HTTPS_PORT
      One whole HTTP/1.1 request, then silence on the kept-alive connection: when closed.
  h2-idle HTTPS_PORT
      An HTTP/2 connection (prior knowledge: preface and SETTINGS), then silence.
  get HTTPS_PORT
      One GET /: the status line and the body's first bytes.

Every wait is bounded (LIMIT_SECONDS); every socket is closed.
"""

import imaplib
import json
import smtplib
import socket
import ssl
import sys
import threading
import time

LIMIT_SECONDS = 8.0


def context():
    made = ssl.create_default_context()
    made.check_hostname = False
    made.verify_mode = ssl.CERT_NONE
    return made


def tls(port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=LIMIT_SECONDS)
    return context().wrap_socket(raw, server_hostname="localhost")


def closed_after(sock, started, trickle=None):
    """Seconds from `started` until the server closed `sock` (None: still open at the limit).
    `trickle`, if given, is sent a byte every 100 ms meanwhile."""
    sock.settimeout(0.1)
    sent = 0
    while time.monotonic() - started < LIMIT_SECONDS:
        try:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - started
        except socket.timeout:
            pass
        except (ConnectionResetError, ssl.SSLError, OSError):
            return time.monotonic() - started
        if trickle is not None and sent < len(trickle):
            try:
                sock.sendall(trickle[sent:sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
    return None


def hash_burst(imaps, submissions, user, password, count):
    barrier = threading.Barrier(2 * count, timeout=LIMIT_SECONDS * 4)
    results = []
    lock = threading.Lock()

    def record(protocol, outcome, started):
        with lock:
            results.append({"protocol": protocol, "answer": outcome, "seconds": time.monotonic() - started})

    def imap_client():
        client = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=context(), timeout=LIMIT_SECONDS * 4)
        try:
            barrier.wait()
            started = time.monotonic()
            try:
                client.login(user, password)
                record("imap", "OK", started)
            except imaplib.IMAP4.error as error:
                record("imap", str(error), started)
        finally:
            try:
                client.shutdown()
            except OSError:
                pass

    def smtp_client():
        client = smtplib.SMTP_SSL("127.0.0.1", submissions, context=context(), timeout=LIMIT_SECONDS * 4)
        try:
            client.ehlo("probe.test")
            barrier.wait()
            started = time.monotonic()
            try:
                client.login(user, password)
                record("smtp", "235", started)
            except smtplib.SMTPException as error:
                code = getattr(error, "smtp_code", None)
                text = getattr(error, "smtp_error", b"")
                if isinstance(text, bytes):
                    text = text.decode("utf-8", "replace")
                record("smtp", f"{code} {text}", started)
        finally:
            try:
                client.close()
            except OSError:
                pass

    threads = [threading.Thread(target=imap_client) for _ in range(count)]
    threads += [threading.Thread(target=smtp_client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIMIT_SECONDS * 6)
    return {"results": results}


def slow_header(port):
    sock = tls(port)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        return {"closed_after": closed_after(sock, started, trickle=b"X-Slow: " + b"a" * 200)}
    finally:
        sock.close()


def slow_body(port):
    sock = tls(port)
    try:
        # A whole header, then a form body that comes a byte every 100 ms.
        sock.sendall(b"POST /sign-in HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 400\r\n\r\n")
        started = time.monotonic()
        return {"closed_after": closed_after(sock, started, trickle=b"a" * 400)}
    finally:
        sock.close()


def idle_keepalive(port):
    sock = tls(port)
    try:
        sock.sendall(b"GET /static/style.css HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(LIMIT_SECONDS)
        head = sock.recv(65536)
        started = time.monotonic()
        return {"status": head.split(b"\r\n", 1)[0].decode(), "closed_after": closed_after(sock, started)}
    finally:
        sock.close()


def h2_idle(port):
    sock = tls(port)
    try:
        # The connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        started = time.monotonic()
        sock.settimeout(LIMIT_SECONDS)
        first = sock.recv(65536)
        # The server's SETTINGS frame (type 4) says it speaks HTTP/2 here.
        speaks_h2 = len(first) >= 9 and first[3] == 4
        return {"speaks_h2": speaks_h2, "closed_after": closed_after(sock, started)}
    finally:
        sock.close()


def get(port):
    sock = tls(port)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        sock.settimeout(LIMIT_SECONDS)
        data = b""
        while len(data) < 4096:
            try:
                chunk = sock.recv(4096)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return {
            "status": head.split(b"\r\n", 1)[0].decode("utf-8", "replace"),
            "body": body[:200].decode("utf-8", "replace"),
        }
    finally:
        sock.close()


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "hash-burst":
        result = hash_burst(int(args[0]), int(args[1]), args[2], args[3], int(args[4]))
    elif mode == "slow-header":
        result = slow_header(int(args[0]))
    elif mode == "slow-body":
        result = slow_body(int(args[0]))
    elif mode == "idle-keepalive":
        result = idle_keepalive(int(args[0]))
    elif mode == "h2-idle":
        result = h2_idle(int(args[0]))
    elif mode == "get":
        result = get(int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
