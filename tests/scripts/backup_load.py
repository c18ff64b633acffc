"""Mail load for the backup test: one thread APPENDs to nina's INBOX over IMAPS, another
submits mail from nina to herself over SMTPS, until the file STOP exists (at most 60 s).
Each acknowledged message is printed as a JSON line: its kind, subject, the Unix time the
server's OK arrived, and the bytes sent (base64)."""

import base64
import imaplib
import json
import os
import smtplib
import ssl
import sys
import threading
import time

BASE = int(os.environ["BASE"])
PASSWORD = os.environ["PASSWORD"]
STOP = os.environ["STOP"]
CTX = ssl.create_default_context(cafile=os.environ["CAFILE"])
LOCK = threading.Lock()
DEADLINE = time.time() + 60


def report(kind, subject, raw):
    with LOCK:
        print(json.dumps({"kind": kind, "subject": subject, "acked_at": time.time(),
                          "raw": base64.b64encode(raw).decode()}), flush=True)


def message(kind, n):
    subject = f"backup-load {kind} {n}"
    body = "".join(f"line {i} of {subject}, some words to make it longer\r\n" for i in range(40))
    raw = (f"From: nina@clinic.test\r\nTo: nina@clinic.test\r\nSubject: {subject}\r\n"
           f"Message-ID: <{kind}.{n}@clinic.test>\r\nDate: Wed, 02 Dec 2026 08:00:00 +0000\r\n\r\n{body}")
    return subject, raw.encode()


def running():
    return not os.path.exists(STOP) and time.time() < DEADLINE


def appends():
    m = imaplib.IMAP4_SSL("localhost", BASE + 993, ssl_context=CTX)
    m.login("nina@clinic.test", PASSWORD)
    n = 0
    while running():
        subject, raw = message("append", n)
        typ, _ = m.append("INBOX", None, None, raw)
        if typ == "OK":
            report("append", subject, raw)
        n += 1
    m.logout()


def submissions():
    s = smtplib.SMTP_SSL("localhost", BASE + 465, context=CTX)
    s.login("nina@clinic.test", PASSWORD)
    n = 0
    while running():
        subject, raw = message("smtp", n)
        s.sendmail("nina@clinic.test", ["nina@clinic.test"], raw)
        report("smtp", subject, raw)
        n += 1
    s.quit()


threads = [threading.Thread(target=appends), threading.Thread(target=submissions)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"done": True}), flush=True)
sys.exit(0)
