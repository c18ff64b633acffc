#!/usr/bin/python3
"""SMTP end to end against a running Sealpost, with real clients: Python's smtplib (and
dkimpy to sign), swaks and msmtp. Every message is read back over IMAP (INBOX and BACKUP)
and must be the bytes sent, after the header fields the server adds.

Environment: SMTP_PORT, SUBMISSION_PORT, SUBMISSIONS_PORT, IMAPS_PORT, CAFILE, DKIM_KEY (PEM
private key of selector "sel" of sender.test, published by the loopback DNS server), WORK (a
scratch folder). Accounts user1 and user2 of harness.test, password harness-pw.
Prints PASS/FAIL lines and exits 1 if anything failed.
"""

import imaplib
import os
import smtplib
import ssl
import subprocess
import sys
import time

import dkim

PASSWORD = "harness-pw"
HOST = "localhost"
SMTP_PORT = int(os.environ["SMTP_PORT"])
SUBMISSION_PORT = int(os.environ["SUBMISSION_PORT"])
SUBMISSIONS_PORT = int(os.environ["SUBMISSIONS_PORT"])
IMAPS_PORT = int(os.environ["IMAPS_PORT"])
CAFILE = os.environ["CAFILE"]
WORK = os.environ["WORK"]
DKIM_KEY = open(os.environ["DKIM_KEY"], "rb").read()
TLS = ssl.create_default_context(cafile=CAFILE)

failures = []


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else " - " + detail), flush=True)
    if not ok:
        failures.append(name)


def message(marker, sender, to="user1@harness.test", body="A line of text.\r\nAnother line.\r\n"):
    return (
        f"From: Sender <{sender}>\r\n"
        f"To: {to}\r\n"
        f"Subject: test {marker}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{marker}@example>\r\n"
        f"\r\n"
        f"{body}marker {marker}\r\n"
    ).encode()


def signed(raw):
    signature = dkim.sign(raw, b"sel", b"sender.test", DKIM_KEY,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + raw


def fetch(user, mailbox, marker, timeout=10.0):
    """The raw message in MAILBOX of USER whose text holds MARKER, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        imap = imaplib.IMAP4_SSL(HOST, IMAPS_PORT, ssl_context=TLS)
        try:
            imap.login(user, PASSWORD)
            imap.select(mailbox, readonly=True)
            typ, data = imap.uid("SEARCH", None, "BODY", marker)
            uids = data[0].split() if typ == "OK" and data and data[0] else []
            if uids:
                typ, data = imap.uid("FETCH", uids[-1], "(BODY.PEEK[])")
                return data[0][1]
        finally:
            imap.logout()
        time.sleep(0.2)
    return None


def added_fields(fetched, sent):
    """The names of the header fields before the sent bytes, or None if the rest differs."""
    if fetched is None or not fetched.endswith(sent):
        return None
    prefix = fetched[: len(fetched) - len(sent)].decode()
    names = []
    for line in prefix.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            continue
        names.append(line.split(":", 1)[0])
    return names


def readback(name, user, marker, sent, expect_fields, contains=()):
    for mailbox in ("INBOX", "BACKUP"):
        got = fetch(user, mailbox, marker)
        fields = added_fields(got, sent)
        check(f"{name}: in {mailbox}, the bytes sent after the added fields",
              fields is not None and sorted(set(fields)) == sorted(set(expect_fields)),
              f"added fields {fields!r}" if got else "not found")
        if got is not None:
            head = got[: len(got) - len(sent)].decode()
            for text in contains:
                check(f"{name}: {mailbox} says {text}", text in head, head)


def inbound(raw, sender, source="127.0.0.1", to="user1@harness.test"):
    with smtplib.SMTP(HOST, SMTP_PORT, source_address=(source, 0), timeout=30) as smtp:
        smtp.ehlo("client.sender.test")
        return smtp.sendmail(sender, [to], raw)


# -- inbound: SPF, DKIM and DMARC through the loopback DNS server -----------------------
raw = signed(message("dkimpass", "alice@sender.test"))
inbound(raw, "alice@sender.test")
readback("signed message", "user1", "dkimpass", raw, ["Received", "Authentication-Results"],
         ["dkim=pass", "spf=pass", "dmarc=pass", "header.i=@sender.test header.s=sel"])

# A signed header changed after signing: the signature fails.
raw = signed(message("dkimfail", "alice@sender.test"))
raw = raw.replace(b"Subject: test dkimfail", b"Subject: test dkimfail, altered")
inbound(raw, "alice@sender.test")
readback("message with an altered signed header", "user1", "dkimfail", raw,
         ["Received", "Authentication-Results"], ["dkim=fail", "spf=pass"])

# The body changed after signing: the body hash does not verify (RFC 6376 6.1.3).
raw = signed(message("bodyhash", "alice@sender.test"))
raw = raw.replace(b"Another line.", b"An altered line.")
inbound(raw, "alice@sender.test")
readback("message with an altered body", "user1", "bodyhash", raw, ["Received", "Authentication-Results"],
         ["(body hash did not verify)", "spf=pass"])

raw = message("softfail", "bob@sender.test")
inbound(raw, "bob@sender.test", source="127.0.0.2")
readback("from a ~all address", "user1", "softfail", raw, ["Received", "Authentication-Results"],
         ["spf=softfail"])

raw = message("spffail", "bob@sender.test")
inbound(raw, "bob@sender.test", source="127.0.0.3")
readback("from a -all address", "user1", "spffail", raw, ["Received", "Authentication-Results"],
         ["spf=fail"])

# A verdict forged in our name is removed; the sender's own stays out of the way.
forged = b"Authentication-Results: localhost; dkim=pass header.d=harness.test\r\n"
raw = message("forged", "alice@sender.test")
inbound(forged + raw, "alice@sender.test")
got = fetch("user1", "INBOX", "forged")
check("a forged Authentication-Results in our name is removed",
      got is not None and got.endswith(raw) and forged not in got, repr(got and got[:600]))

raw = message("dmarcreject", "eve@strict.test")
try:
    inbound(raw, "eve@strict.test", source="127.0.0.3")
    check("DMARC p=reject failure refused", False, "accepted")
except smtplib.SMTPDataError as error:
    check("DMARC p=reject failure refused with 550 5.7.1", error.smtp_code == 550 and b"5.7.1" in error.smtp_error,
          repr(error))
check("the refused message is nowhere", fetch("user1", "INBOX", "dmarcreject", timeout=1) is None)

# -- submission with smtplib: STARTTLS on 587, implicit TLS on 465, BDAT -----------------
raw = message("sub587", "user1@harness.test", to="user2@harness.test")
with smtplib.SMTP(HOST, SUBMISSION_PORT, timeout=30) as smtp:
    smtp.ehlo("laptop")
    check("587 offers STARTTLS and no AUTH before it",
          smtp.has_extn("starttls") and not smtp.has_extn("auth"))
    smtp.starttls(context=TLS)
    smtp.ehlo("laptop")
    check("587 offers AUTH PLAIN LOGIN after STARTTLS", "PLAIN" in smtp.esmtp_features.get("auth", "").upper())
    smtp.login("user1@harness.test", PASSWORD)
    smtp.sendmail("user1@harness.test", ["user2@harness.test", "someone@elsewhere.example"], raw,
                  mail_options=["RET=HDRS", "ENVID=env-587"],
                  rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;someone@elsewhere.example"])
readback("smtplib on 587", "user2", "sub587", raw, ["Received"], ["ESMTPSA", "TLS"])
check("smtplib on 587: the sender's BACKUP has it",
      added_fields(fetch("user1", "BACKUP", "sub587"), raw) is not None)

raw = message("sub465", "user1@harness.test", to="user2@harness.test")
with smtplib.SMTP_SSL(HOST, SUBMISSIONS_PORT, context=TLS, timeout=30) as smtp:
    smtp.login("user1@harness.test", PASSWORD)
    smtp.sendmail("user1@harness.test", ["user2@harness.test"], raw)
readback("smtplib on 465", "user2", "sub465", raw, ["Received"])

raw = message("bdat", "user1@harness.test", to="user2@harness.test", body="x" * 5000 + "\r\n.\r\n")
with smtplib.SMTP_SSL(HOST, SUBMISSIONS_PORT, context=TLS, timeout=30) as smtp:
    smtp.ehlo("laptop")
    check("CHUNKING is offered", smtp.has_extn("chunking"))
    smtp.login("user1@harness.test", PASSWORD)
    smtp.mail("user1@harness.test")
    smtp.rcpt("user2@harness.test")
    half = len(raw) // 2
    smtp.send(b"BDAT %d\r\n" % half + raw[:half])
    code, _ = smtp.getreply()
    smtp.send(b"BDAT %d LAST\r\n" % (len(raw) - half) + raw[half:])
    last, text = smtp.getreply()
    check("BDAT in two chunks accepted", code == 250 and last == 250, f"{code} {last} {text!r}")
readback("BDAT", "user2", "bdat", raw, ["Received"])

# A message without Date and Message-ID gets both.
raw = (b"From: user1@harness.test\r\nTo: user2@harness.test\r\nSubject: test nodate\r\n\r\n"
       b"marker nodate\r\n")
with smtplib.SMTP_SSL(HOST, SUBMISSIONS_PORT, context=TLS, timeout=30) as smtp:
    smtp.login("user1@harness.test", PASSWORD)
    smtp.sendmail("user1@harness.test", ["user2@harness.test"], raw)
readback("submission without Date and Message-ID", "user2", "nodate", raw,
         ["Received", "Date", "Message-ID"], ["Message-ID: <", "@localhost>"])

# Submission refuses another sender.
with smtplib.SMTP_SSL(HOST, SUBMISSIONS_PORT, context=TLS, timeout=30) as smtp:
    smtp.login("user1@harness.test", PASSWORD)
    code, text = smtp.mail("user2@harness.test")
    check("sending as another account is refused (553)", code == 553, f"{code} {text!r}")

# -- swaks ------------------------------------------------------------------------------
def swaks(name, args, marker, user="user2"):
    result = subprocess.run(["swaks", "--server", HOST, "--header", f"Subject: test {marker}",
                             "--body", f"marker {marker}"] + args,
                            capture_output=True, text=True, timeout=60)
    check(f"swaks {name} exits 0", result.returncode == 0, result.stdout[-800:] + result.stderr[-400:])
    check(f"swaks {name} arrives", fetch(user, "INBOX", marker) is not None)
    return result


swaks("STARTTLS + AUTH PLAIN on 587",
      ["--port", str(SUBMISSION_PORT), "--tls", "--auth", "PLAIN", "--auth-user", "user1@harness.test",
       "--auth-password", PASSWORD, "--from", "user1@harness.test", "--to", "user2@harness.test"], "swaks587")
swaks("implicit TLS + AUTH LOGIN on 465",
      ["--port", str(SUBMISSIONS_PORT), "--tlsc", "--auth", "LOGIN", "--auth-user", "user1@harness.test",
       "--auth-password", PASSWORD, "--from", "user1@harness.test", "--to", "user2@harness.test"], "swaks465")
result = swaks("PIPELINING inbound on 25",
               ["--port", str(SMTP_PORT), "--pipeline", "--from", "carol@sender.test", "--to", "user2@harness.test"],
               "swakspipe")
check("swaks saw PIPELINING used", "PIPELINING" in result.stdout, result.stdout[-500:])

# -- msmtp ------------------------------------------------------------------------------
conf = os.path.join(WORK, "msmtprc")
with open(conf, "w") as f:
    f.write(f"""account default
host {HOST}
port {SUBMISSION_PORT}
tls on
tls_starttls on
tls_trust_file {CAFILE}
auth on
user user1@harness.test
password {PASSWORD}
from user1@harness.test
""")
os.chmod(conf, 0o600)
raw = message("msmtp", "user1@harness.test", to="user2@harness.test")
result = subprocess.run(["msmtp", "-C", conf, "user2@harness.test"], input=raw, capture_output=True, timeout=60)
check("msmtp over STARTTLS exits 0", result.returncode == 0, result.stderr.decode()[-500:])
readback("msmtp", "user2", "msmtp", raw, ["Received"])

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
