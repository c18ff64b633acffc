#!/usr/bin/python3
"""A receiving SMTP server for outbound tests, on aiosmtpd (a real SMTP implementation).

  smtp_receiver.py HOST PORT OUTDIR [--cert CERT --key KEY] [--tempfail N] [--reject]

With --cert/--key it offers STARTTLS; without, it offers none. --tempfail N answers 451 to
the first N RCPT commands; --reject answers 550 to every RCPT. Each accepted message is
written to OUTDIR/<n>.eml, with OUTDIR/<n>.json holding the envelope and whether the
session was under TLS. Runs until killed; prints "ready" once listening.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("outdir")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--tempfail", type=int, default=0)
p.add_argument("--reject", action="store_true")
p.add_argument("--slow", type=float, default=0.0, help="seconds to hold each DATA")
a = p.parse_args()
os.makedirs(a.outdir, exist_ok=True)


class Handler:
    def __init__(self):
        self.tempfails_left = a.tempfail
        self.count = 0
        # Connections open at once, by client address and port (STARTTLS makes a new
        # session object for the same connection); the most seen goes to OUTDIR/concurrency.
        self.open = set()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.open.add(session.peer)
        path = os.path.join(a.outdir, "concurrency")
        seen = int(open(path).read()) if os.path.exists(path) else 0
        with open(path + ".tmp", "w") as f:
            f.write(str(max(seen, len(self.open))))
        os.replace(path + ".tmp", path)
        session.host_name = hostname
        return responses

    async def handle_QUIT(self, server, session, envelope):
        self.open.discard(session.peer)
        return "221 Bye"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if a.reject:
            return "550 5.1.1 no such user here"
        if self.tempfails_left > 0:
            self.tempfails_left -= 1
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if a.slow:
            await asyncio.sleep(a.slow)
        self.count += 1
        base = os.path.join(a.outdir, str(self.count))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        tls = session.ssl is not None
        # Written aside and renamed: a reader sees the whole envelope or none.
        with open(base + ".json.tmp", "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos, "tls": tls}, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 stored"


context = None
if a.cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(a.cert, a.key)

controller = Controller(Handler(), hostname=a.host, port=a.port, tls_context=context,
                        require_starttls=False, decode_data=False, server_hostname="receiver")
controller.start()
print("ready", flush=True)
try:
    asyncio.get_event_loop().run_forever()
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
    sys.exit(0)
