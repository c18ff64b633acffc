#!/usr/bin/env python3
"""Many concurrent IDLE sessions over TLS against a running Sealpost: the server's memory
growth per session, and how long one APPEND takes to reach every idler.

  idle_bench.py --host H --port IMAPS --cafile CA --users u1,u2,... --password P \
                --sessions 1000 --server-pid PID [--check]

Sessions are spread over the users (an account may hold a limited number). With --check it
exits 1 when growth is 64 KiB per session or more, or an idler misses the APPEND."""
import argparse, resource, selectors, socket, ssl, sys, threading, time

GROWTH_GOAL_BYTES = 64 * 1024

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS for pid %s" % pid)

def read_until(sock, marker, limit=1 << 16):
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed while waiting for %r" % marker)
        data += chunk
        if len(data) > limit:
            raise ConnectionError("too much data")
    return data

def open_idler(args, ctx, user):
    raw = socket.create_connection((args.host, args.port), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    read_until(sock, b"\r\n")
    sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), args.password.encode()))
    if b"a OK" not in read_until(sock, b"a "):
        raise ConnectionError("login failed for %s" % user)
    sock.sendall(b"b SELECT INBOX\r\n")
    read_until(sock, b"b OK")
    sock.sendall(b"c IDLE\r\n")
    read_until(sock, b"+ ")
    return sock

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--users", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sessions * 2 + 100)), hard))
    ctx = ssl.create_default_context(cafile=args.cafile)
    users = args.users.split(",")

    # Warm up with logins in parallel, as in the measured phase, so that what logins need
    # (password hashing memory, TLS, the thread pool) is in the "before" figure and only the
    # sessions themselves count.
    def warm(k):
        for user in users[k::args.threads] or users[:1]:
            open_idler(args, ctx, user).close()
    warmers = [threading.Thread(target=warm, args=(k,)) for k in range(args.threads)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join()
    time.sleep(1)
    before = rss_kib(args.server_pid)
    idlers, errors = [], []
    lock = threading.Lock()
    def worker(indexes):
        for i in indexes:
            try:
                s = open_idler(args, ctx, users[i % len(users)])
                with lock:
                    idlers.append((users[i % len(users)], s))
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(range(t, args.sessions, args.threads),)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    setup = time.monotonic() - started
    time.sleep(2)
    after = rss_kib(args.server_pid)
    growth = (after - before) * 1024 / max(1, len(idlers))

    # One APPEND per user; every idler of that user must see EXISTS.
    sel = selectors.DefaultSelector()
    for user, s in idlers:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, user)
    appended_at = time.monotonic()
    for user in users:
        raw = socket.create_connection((args.host, args.port), timeout=30)
        w = ctx.wrap_socket(raw, server_hostname="localhost")
        read_until(w, b"\r\n")
        w.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), args.password.encode()))
        if b"a OK" not in read_until(w, b"a "):
            raise SystemExit("the appending login for %s was refused (sessions per account limit?)" % user)
        w.sendall(b"b APPEND INBOX {14+}\r\nSubject: x\r\n\r\n\r\n")
        read_until(w, b"b OK")
        w.close()
    seen, latest = set(), 0.0
    deadline = time.monotonic() + 10
    while len(seen) < len(idlers) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(4096)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            if b"EXISTS" in data and key.fileobj not in seen:
                seen.add(key.fileobj)
                latest = time.monotonic() - appended_at
    for _, s in idlers:
        try:
            s.setblocking(True)
            s.sendall(b"DONE\r\nd LOGOUT\r\n")
            s.close()
        except OSError:
            pass
    print("| sessions | setup s | server RSS before | after | growth per session | idlers notified | last notified after |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(idlers)} | {setup:.1f} | {before/1024:.1f} MiB | {after/1024:.1f} MiB | {growth/1024:.1f} KiB | {len(seen)}/{len(idlers)} | {latest:.3f} s |")
    if errors:
        print("errors (%d): %s" % (len(errors), errors[:3]))
    ok = not errors and growth < GROWTH_GOAL_BYTES and len(seen) == len(idlers) == args.sessions
    print("goal: growth under 64 KiB per session, every idler notified:", "met" if ok else "NOT met")
    if args.check and not ok:
        sys.exit(1)

main()
