#!/usr/bin/env python3
"""A full IMAP scenario with Python's imaplib against a running Sealpost, as a user's client
would do it: STARTTLS login, folders, append, fetch, search, flags, move, and IDLE seeing
another connection's delivery at once. Exits 0 when every step held; prints what failed."""
import imaplib, socket, ssl, sys, time

host, port, tls_port, cafile, user, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=cafile)
failures = []

def check(name, condition, detail=""):
    if not condition:
        failures.append(f"{name}: {detail}")

m = imaplib.IMAP4(host, port)
check("cleartext refuses login", "LOGINDISABLED" in m.capabilities)
m.starttls(ssl_context=ctx)
typ, _ = m.login(user, password)
check("login over STARTTLS", typ == "OK")
typ, boxes = m.list()
names = b"\n".join(boxes)
check("special-use folders listed", b"\\Sent" in names and b"\\Trash" in names and b"BACKUP" in names, names)
check("create folder", m.create('"Clinic/Referrals"')[0] == "OK")
msg = (b"From: Dr A <a@example.net>\r\nTo: " + user.encode() + b"\r\nSubject: Referral for review\r\n"
       b"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <ref-1@example.net>\r\n\r\nPlease review the referral.\r\n")
typ, data = m.append('"Clinic/Referrals"', r"(\Flagged)", None, msg)
check("append", typ == "OK" and b"APPENDUID" in data[0], data)
typ, data = m.select('"Clinic/Referrals"')
check("select", typ == "OK" and data[0] == b"1", data)
typ, data = m.fetch("1", "(BODY.PEEK[] FLAGS)")
check("fetch body byte-identical", typ == "OK" and data[0][1] == msg, data)
# The envelope and structure name the subject and the addresses: a read of patient data,
# audited like the body (the Rust side counts the records); flags alone are not.
typ, data = m.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
check("fetch envelope and structure", typ == "OK" and b"Referral for review" in data[0], data)
typ, data = m.fetch("1", "(FLAGS RFC822.SIZE INTERNALDATE)")
check("fetch flags and size", typ == "OK" and b"RFC822.SIZE" in data[0], data)
typ, data = m.search(None, "TEXT", '"review the referral"')
check("search text over the encrypted store", data == [b"1"], data)
typ, data = m.uid("SEARCH", None, "HEADER", "Message-ID", '"<ref-1@example.net>"')
check("search header", data == [b"1"], data)
typ, data = m.store("1", "+FLAGS", r"(\Seen)")
check("store flags", typ == "OK" and b"\\Seen" in data[0], data)
typ, data = m.uid("MOVE", "1", '"Deleted Items"')
check("move to Outlook's Trash name", typ == "OK", data)
m.select("INBOX")

# IDLE in one connection sees a message appended by another at once.
idler = imaplib.IMAP4_SSL(host, tls_port, ssl_context=ctx)
idler.login(user, password)
idler.select("INBOX")
tag = idler._new_tag().decode()
idler.send(f"{tag} IDLE\r\n".encode())
line = idler.readline()
check("IDLE continuation", line.startswith(b"+"), line)
other = imaplib.IMAP4_SSL(host, tls_port, ssl_context=ctx)
other.login(user, password)
started = time.monotonic()
other.append("INBOX", None, None, b"Subject: ping\r\n\r\nping\r\n")
idler.sock.settimeout(5)
try:
    line = idler.readline()
except socket.timeout:
    line = b""
elapsed = time.monotonic() - started
check("IDLE announces the new message", line.strip() == b"* 1 EXISTS", line)
check("IDLE announces within a second", elapsed < 1.0, f"{elapsed:.3f}s")
# An IMAP4rev1 session has it \Recent: the RECENT count follows EXISTS (RFC 3501 7.3.2).
line = idler.readline()
check("IDLE announces RECENT with it", line.strip() == b"* 1 RECENT", line)
idler.send(b"DONE\r\n")
line = idler.readline()
check("IDLE ends with DONE", line.startswith(tag.encode() + b" OK"), line)
for conn in (idler, other, m):
    conn.logout()

bad = imaplib.IMAP4_SSL(host, tls_port, ssl_context=ctx)
try:
    bad.login(user, "wrong password")
    check("wrong password refused", False, "login succeeded")
except imaplib.IMAP4.error:
    pass
bad.logout()

if failures:
    print("FAILED:\n  " + "\n  ".join(str(f) for f in failures))
    sys.exit(1)
print("imap scenario: all steps passed")
