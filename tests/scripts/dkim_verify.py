#!/usr/bin/python3
"""Verifies every DKIM signature of a message with dkimpy, the public keys taken from the
output of `sealpost dns records` instead of DNS.

  dkim_verify.py MESSAGE RECORDS   → prints "verified N" and exits 0, or exits 1.
"""
import re
import sys

import dkim

message = open(sys.argv[1], "rb").read()
records = {}
for line in open(sys.argv[2]):
    m = re.match(r"^(\S+)\.\tIN TXT (.*)$", line.rstrip("\n"))
    if m and "._domainkey." in m.group(1):
        records[m.group(1) + "."] = "".join(re.findall(r'"([^"]*)"', m.group(2))).encode()


def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name if name.endswith(".") else name + ".")


d = dkim.DKIM(message)
count = message.count(b"DKIM-Signature:")
ok = 0
for idx in range(count):
    if d.verify(idx=idx, dnsfunc=dnsfunc):
        ok += 1
    else:
        print(f"signature {idx} does not verify", file=sys.stderr)
print(f"verified {ok} of {count}")
sys.exit(0 if ok == count and count >= 2 else 1)
