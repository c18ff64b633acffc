#!/usr/bin/python3
"""Acknowledged mail survives a crash.

send ACKFILE: submits numbered messages over implicit TLS until the server goes away (at most
2,000, at most 60 s), appending each number to ACKFILE, flushed, once the server answered 250.
check ACKFILE: every acknowledged number is in user2's INBOX and in user1's BACKUP.
Environment: SUBMISSIONS_PORT, IMAPS_PORT, CAFILE.
"""

import imaplib
import os
import smtplib
import ssl
import sys
import time

TLS = ssl.create_default_context(cafile=os.environ["CAFILE"])
mode, ackfile = sys.argv[1], sys.argv[2]

if mode == "send":
    deadline = time.monotonic() + 60
    with open(ackfile, "a") as acks:
        try:
            smtp = smtplib.SMTP_SSL("localhost", int(os.environ["SUBMISSIONS_PORT"]), context=TLS, timeout=10)
            smtp.login("user1@harness.test", "harness-pw")
            for n in range(2000):
                if time.monotonic() > deadline:
                    break
                raw = (f"From: user1@harness.test\r\nTo: user2@harness.test\r\nSubject: crash {n}\r\n"
                       f"Message-ID: <crash-{n}@example>\r\n\r\nnumber crashmark{n}x\r\n" + "y" * (n % 7 * 1000))
                smtp.sendmail("user1@harness.test", ["user2@harness.test"], raw.encode())
                acks.write(f"{n}\n")
                acks.flush()
                os.fsync(acks.fileno())
        except (OSError, smtplib.SMTPException) as error:
            print(f"stopped: {error!r}")
    sys.exit(0)

acked = [int(line) for line in open(ackfile) if line.strip()]
missing = []
for user, mailbox in (("user2", "INBOX"), ("user1", "BACKUP")):
    imap = imaplib.IMAP4_SSL("localhost", int(os.environ["IMAPS_PORT"]), ssl_context=TLS)
    imap.login(user, "harness-pw")
    imap.select(mailbox, readonly=True)
    typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = {item[1].decode().strip() for item in data if isinstance(item, tuple)}
    for n in acked:
        if f"Subject: crash {n}" not in subjects:
            missing.append(f"{user} {mailbox} {n}")
    imap.logout()
print(f"{len(acked)} acknowledged, {len(missing)} missing: {missing[:10]}")
sys.exit(1 if missing or not acked else 0)
