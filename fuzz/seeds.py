#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*, from the
SMTP and IMAP transcript tests and a few hand-written messages, records and forms. Run once
when a target is added (scripts/fuzz keeps the corpora afterwards); the first byte(s) of each
seed are the target's selector (see each target's function in the crates' `fuzzing` modules).
"""
import base64
import hashlib
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def expand(text):
    return text.replace("{{CRLF}}", "\r\n")


def transcript_input(path):
    """What the client sends in a transcript: C: lines with CRLF, R: lines as they are."""
    out = []
    options = {}
    for line in path.read_text().splitlines():
        if line.startswith("#! "):
            options = dict(o.split("=", 1) for o in line[3:].split())
        elif line.startswith("C: ") or line == "C:":
            out.append(expand(line[3:]) + "\r\n")
        elif line.startswith("R: "):
            out.append(expand(line[3:]))
    return "".join(out).encode(), options


def smtp_messages(path):
    """The messages sent with DATA in an SMTP transcript (dot-unstuffed)."""
    messages, current = [], None
    for line in path.read_text().splitlines():
        if line == "C: DATA":
            current = []
        elif current is not None and (line.startswith("C: ") or line == "C:"):
            text = line[3:]
            if text == ".":
                messages.append(("\r\n".join(current) + "\r\n").encode())
                current = None
            else:
                current.append(text[1:] if text.startswith("..") else text)
    return messages


MESSAGES = [
    b"From: Alice Example <alice@example.org>\r\nTo: bob@example.org, \"Carol, C.\" <carol@example.org>\r\n"
    b"Subject: Hello\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob\r\nBye\r\n",
    b"From: a@x.org\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nH=C3=A9llo\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@x.org\r\nSubject: inner\r\n"
    b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--alt\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--alt--\r\n\r\n--outer\r\n"
    b"Content-Type: image/png; name=\"dot.png\"\r\nContent-Disposition: attachment; filename*=utf-8''d%C3%B6t.png\r\n"
    b"Content-ID: <img1@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--outer--\r\nepilogue\r\n",
    b"From: <<<>>>@@@,,,;;;:::\"\r\nTo: (((\r\n\r\n",
    b"From: \"Doc Holliday\" <ceo@examp1e.test>\r\nTo: alice@example.test\r\nSubject: [EXTERNAL] wire\r\n"
    b"Authentication-Results: mx.example.test; dkim=pass\r\n\tspf=pass\r\nAuthentication-Results: other.example; spf=fail\r\n"
    b"X-Sealpost-Warning: forged\r\n continued\r\nx-sealpost-spam: low\r\n\r\nAuthentication-Results: mx.example.test; body\r\n",
    b"Received: from a by b; Mon, 2 Nov 2026 10:00:00 +0000\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel;\r\n"
    b" c=relaxed/relaxed; h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n"
    b"From: x@example.org\r\nTo: y@example.test\r\nSubject: signed\r\n\r\nbody\r\n",
    b"From: a@b\nSubject: bare line feeds\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n",
    b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\ndeep\r\n--c--\r\n--b--\r\n--a--\r\n",
]

HTML = [
    b"<p>Hello <b>Bob</b></p><script>alert(1)</script><img src=x onerror=alert(1)>",
    b"<a href=\"javascript:alert(1)\">x</a><a href=\"https://example.org\" target=_top>y</a>"
    b"<img src=\"cid:img1@x\"><img src=\"https://tracker.example/p.gif\"><img src=\"data:image/png;base64,AAAA\">",
    b"<style>body{background:url(https://x)}</style><form action=/x><input name=p></form><iframe src=//x></iframe>",
    b"<svg><script>alert(1)</script></svg><math><mi xlink:href=\"javascript:alert(1)\">x</mi></math>"
    b"<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    b"<table style=\"width:100%\"><tr><td>cell</td></tr></table><!-- comment --><![CDATA[x]]><base href=//evil>",
]


def dns_tlsa_answer():
    """A DNS response to _25._tcp.mx.example.org TLSA with one DANE-EE 3 1 1 record, AD set."""
    def name(text):
        return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"
    qname = name("_25._tcp.mx.example.org")
    header = struct.pack(">HHHHHH", 0x1234, 0x8000 | 0x0100 | 0x0080 | 0x0020, 1, 1, 0, 0)
    question = qname + struct.pack(">HH", 52, 1)
    data = bytes([3, 1, 1]) + hashlib.sha256(b"key").digest()
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 52, 1, 300, len(data)) + data
    return header + question + answer


def multipart(fields):
    boundary = b"sealpostfuzz"
    out = b""
    for name, filename, value in fields:
        out += b"--" + boundary + b"\r\n"
        disposition = b"Content-Disposition: form-data; name=\"" + name + b"\""
        if filename is not None:
            disposition += b"; filename=\"" + filename + b"\"\r\nContent-Type: application/pdf"
        out += disposition + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def seeds():
    smtp = ROOT / "crates/smtp/tests/transcripts"
    imap = ROOT / "crates/imap/tests/transcripts"
    messages = list(MESSAGES)
    for path in sorted(smtp.glob("*.txt")):
        messages += smtp_messages(path)
    out = {t: {} for t in ["imap_command", "smtp_session", "mime_message", "smtp_headers",
                           "auth_inputs", "web_html", "web_forms", "control_wire"]}
    for path in sorted(smtp.glob("*.txt")):
        sent, options = transcript_input(path)
        flags = (1 if options.get("role") == "submission" else 0) | (2 if options.get("tls") == "yes" else 0)
        out["smtp_session"][path.stem] = bytes([flags, 255]) + sent
        out["smtp_session"][path.stem + "-pieces"] = bytes([flags, 6]) + sent
    for path in sorted(imap.glob("*.txt")):
        sent, _ = transcript_input(path)
        out["imap_command"][path.stem] = bytes([63]) + sent[:60000]
    for i, message in enumerate(messages):
        out["mime_message"][f"message-{i}"] = b"\0" + message
        out["mime_message"][f"message-{i}-small-limits"] = b"\1" + message
        out["smtp_headers"][f"message-{i}"] = b"\0" + message
        out["web_html"][f"message-{i}"] = b"\1" + message
    out["smtp_headers"]["forged-results-hidden"] = (
        b"\0Authentication-Results: (our (verdict)) mx.example.test; dkim=pass\r\n"
        b"Authentication-Results:\t\"mx.example.test\"; spf=pass\r\nAuthentication-Results: mx.example.test. 1; dmarc=pass\r\n"
        b"From: a@b.test\nSubject: hi\n\nX-Sealpost-Note: body\n kept\r\n\r\n")
    for i, html in enumerate(HTML):
        out["web_html"][f"html-{i}"] = b"\0" + html
        out["web_html"][f"html-{i}-remote"] = b"\2" + html
    auth = out["auth_inputs"]
    auth["sts-record"] = b"\0v=STSv1; id=20260101T000000"
    auth["sts-record-bad"] = b"\0v=STSv1; id=bad id!; id="
    policy = b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.backup.example.com\r\nmax_age: 86400\r\n"
    auth["sts-policy"] = b"\1" + policy
    auth["sts-policy-testing"] = b"\1version: STSv1\nmode: testing\nmx: a.\nmax_age: 99999999999\n"
    auth["sts-http"] = b"\2HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(policy) + policy
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(policy[i:i + 20]), policy[i:i + 20]) for i in range(0, len(policy), 20))
    auth["sts-http-chunked"] = b"\2HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
    auth["sts-stored"] = b"\3" + b"20260101\n1\n86400\n1700000000000\nmail.example.com\n*.backup.example.com\n"
    auth["dane-answer"] = b"\4" + dns_tlsa_answer()
    auth["message-signed"] = b"\5" + MESSAGES[4]
    forms = out["web_forms"]
    forms["multipart-reply"] = b"\0" + multipart([(b"csrf", None, b"token"), (b"body", None, b"thanks\r\nbye"),
                                                   (b"files", b"scan.pdf", b"%PDF-1.4 ...")])
    forms["multipart-empty-file"] = b"\0" + multipart([(b"files", b"", b""), (b"to", None, b"a@b")])
    forms["code-form"] = b"\1form=abc&code=123+456"
    forms["password-form"] = b"\2form=abc&password=p%C3%A4ss%00word"
    forms["choose-form"] = b"\3csrf=x&password=a&confirm=a&action=forget&extra=1"
    forms["bulk-action"] = b"\4csrf=x&uid=1&uid=2&uid=99999999999&action=delete&target=%FF"
    forms["cookie"] = b"\5sealpost_session=abc; other=1; =; sealpost_session=dup"
    forms["addresses"] = b"\6\"Smith, Jo\" <jo@example.org>, b@y; C <c@z>, <<x>>"
    forms["pickup-id"] = b"\7" + b"0f" * 32
    forms["network"] = b"\7" + b"192.0.2.0/24"
    control = out["control_wire"]
    control["request"] = b"\1" + b'{"args":["account","list"],"input":null,"user":"root"}\n'
    control["request-input"] = b"\1" + b'{"args":["policy","set"],"input":"[sending]\\n\\u0000","user":"a\\tb"}\nrest'
    control["frames"] = b"\0" + b"o\0\0\0\5hello" + b"e\0\0\0\3err" + b"x\0\0\0\1\0"
    control["frame-too-long"] = b"\0" + b"o\xff\xff\xff\xff"
    control["frame-short"] = b"\0" + b"o\0\0\0\x09abc"
    return out


def main():
    for target, files in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
