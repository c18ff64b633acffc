"""IMAP amplification against a running Sealpost (tests/imap_abuse.rs).

One user (the attacker) sends, on several TLS connections at once, commands whose cost
used to grow with what the client wrote rather than with the mailbox: huge overlapping
sequence and UID sets, a huge QRESYNC known-UID set, UID FETCH ... (CHANGEDSINCE VANISHED)
over such a set, a LIST pattern of a megabyte of wildcards, and BODYSTRUCTURE, BINARY,
section and SEARCH TEXT work over a folder of a few large messages. Meanwhile another user
sends a NOOP every NOOP_EVERY_MS and the server's /proc/PID/status is sampled.

Every loop is bounded in count and time. Prints one JSON object; the Rust test judges it.

Environment: PORT (implicit TLS), CAFILE, PASS, ATTACKER, VICTIM, PID, ATTACK_S,
SMALL_MESSAGES, BIG_MESSAGES, BIG_MESSAGE_BYTES, ABORT_RSS_GROWTH_MIB.
"""

import base64
import json
import os
import re
import socket
import ssl
import threading
import time

PORT = int(os.environ["PORT"])
CAFILE = os.environ["CAFILE"]
PASS = os.environ["PASS"]
ATTACKER = os.environ["ATTACKER"]
VICTIM = os.environ["VICTIM"]
PID = int(os.environ["PID"])
ATTACK_S = float(os.environ.get("ATTACK_S", "20"))
SMALL_MESSAGES = int(os.environ.get("SMALL_MESSAGES", "1500"))
BIG_MESSAGES = int(os.environ.get("BIG_MESSAGES", "3"))
BIG_MESSAGE_BYTES = int(os.environ.get("BIG_MESSAGE_BYTES", str(4 * 1024 * 1024)))
# Past this growth the run stops at once (the Rust test then fails and kills the server):
# the old code grew without bound, and this machine is shared.
ABORT_RSS_GROWTH_MIB = int(os.environ.get("ABORT_RSS_GROWTH_MIB", "600"))

NOOP_EVERY_MS = 100
READ_TIMEOUT_S = 60
# Bounds on every loop, besides ATTACK_S.
ATTACK_COMMANDS_PER_CONNECTION_MAX = 10_000
NOOPS_MAX = 100_000
SAMPLES_MAX = 1_000_000
RESPONSE_LINES_MAX = 10_000_000


def proc_status_kib(field):
    with open(f"/proc/{PID}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{PID}/status")


class Imap:
    """A raw IMAP client: commands as bytes, responses read and mostly discarded."""

    def __init__(self):
        context = ssl.create_default_context(cafile=CAFILE)
        raw = socket.create_connection(("localhost", PORT), timeout=READ_TIMEOUT_S)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""
        self.counter = 0
        self.read_line()

    def read_line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def skip(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(min(1 << 20, count - len(self.buffer)))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        self.buffer = self.buffer[count:]

    def command(self, text, literal=None, keep=False):
        """Sends one command (with an optional LITERAL+ literal after `text`) and reads to
        its tagged reply. Returns (status line, untagged lines if `keep`)."""
        self.counter += 1
        tag = f"t{self.counter}".encode()
        data = tag + b" " + text
        if literal is not None:
            data += b"{%d+}\r\n" % len(literal) + literal
        self.sock.sendall(data + b"\r\n")
        kept = []
        for _ in range(RESPONSE_LINES_MAX):
            line = self.read_line()
            # A literal in the response: its bytes, then the rest of the line.
            while True:
                found = re.search(rb"~?\{(\d+)\}$", line)
                if not found:
                    break
                self.skip(int(found.group(1)))
                line = line[: found.start()] + b"<literal>" + self.read_line()
            if line.startswith(tag + b" "):
                return line[len(tag) + 1 :].decode(errors="replace"), kept
            if keep:
                kept.append(line.decode(errors="replace"))
        raise RuntimeError("a response longer than RESPONSE_LINES_MAX lines")

    def ok(self, text, literal=None, keep=False):
        status, kept = self.command(text, literal, keep)
        if not status.startswith("OK"):
            raise RuntimeError(f"{text[:60]!r} answered {status}")
        return kept

    def login(self, user):
        self.ok(b'LOGIN "%s" "%s"' % (user.encode(), PASS.encode()))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def big_message(i):
    """multipart/mixed: a quoted-printable text part and a base64 attachment."""
    text_bytes = BIG_MESSAGE_BYTES // 4
    attachment = bytes((j * 7 + i) % 256 for j in range(BIG_MESSAGE_BYTES // 2))
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    text = (b"Caf=C3=A9 line with a needle-%d =\r\n" % i) * (text_bytes // 36)
    return (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: big %d\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BOUND\r\n\r\n"
        b"--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" % i
        + text
        + b"\r\n--BOUND\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"\r\n--BOUND--\r\n"
    )


def fill():
    """The attacker's INBOX of small messages (a few expunged, for VANISHED) and a folder
    `Big` of a few large ones."""
    m = Imap()
    m.login(ATTACKER)
    m.ok(b"CREATE Big")
    for i in range(SMALL_MESSAGES):
        body = b"From: a@example.org\r\nSubject: small %d\r\n\r\nhello %d\r\n" % (i, i)
        m.ok(b"APPEND INBOX (\\Seen) ", body)
    for i in range(BIG_MESSAGES):
        m.ok(b"APPEND Big () ", big_message(i))
    m.ok(b"SELECT INBOX")
    m.ok(b"UID STORE 1:%d +FLAGS.SILENT (\\Deleted)" % (SMALL_MESSAGES // 10))
    m.ok(b"EXPUNGE")
    uid_validity = None
    for line in m.ok(b"STATUS INBOX (UIDVALIDITY)", keep=True):
        found = re.search(r"UIDVALIDITY (\d+)", line)
        if found:
            uid_validity = int(found.group(1))
    m.ok(b"LOGOUT")
    m.close()
    return uid_validity


# Sets of about 40 KB, within the 64 KiB command line: 10,000 ranges naming the whole
# mailbox, or 3,000 ranges naming 2^32 UIDs each.
STAR_SET = b",".join([b"1:*"] * 10_000)
FULL_UID_SET = b",".join([b"1:4294967295"] * 3_000)
# Disjoint ranges far apart: the old known-UID code made a million entries of each.
SPREAD_UID_SET = b",".join(b"%d:4294967295" % (1 + k * 1_000_003) for k in range(2_000))
BEYOND_UID_SET = b",".join([b"1000000:4294967295"] * 2_000)
PATTERN = b"%*" * (512 * 1024)


def attack_sets(stop, report):
    m = Imap()
    m.login(ATTACKER)
    m.ok(b"SELECT INBOX")
    commands = [
        b"FETCH " + STAR_SET + b" (FLAGS)",
        b"UID FETCH " + FULL_UID_SET + b" (UID)",
        b"UID SEARCH UID " + FULL_UID_SET,
        b"SEARCH " + STAR_SET,
        b"UID STORE " + FULL_UID_SET + b" +FLAGS.SILENT (seen-by-attacker)",
        # Ranges past UIDNEXT name nothing: nothing is copied, moved or expunged.
        b"UID COPY " + BEYOND_UID_SET + b" Trash",
        b"UID MOVE " + BEYOND_UID_SET + b" Trash",
        b"UID EXPUNGE " + BEYOND_UID_SET,
    ]
    run(m, commands, stop, report)


def attack_qresync(uid_validity, stop, report):
    m = Imap()
    m.login(ATTACKER)
    m.ok(b"ENABLE QRESYNC")
    m.ok(b"SELECT INBOX")
    # seq-match-data: (known sequence numbers, their UIDs), a hint the server may ignore (no
    # `*` in it: RFC 7162 section 7 leaves it out of these sets).
    seq_match = b" (" + b",".join([b"1:4294967295"] * 2_000) + b" " + b",".join([b"1:4294967295"] * 1_500) + b")"
    commands = [
        b"SELECT INBOX (QRESYNC (%d 1 " % uid_validity + SPREAD_UID_SET + b"))",
        b"SELECT INBOX (QRESYNC (%d 1 1:4294967295" % uid_validity + seq_match + b"))",
        b"UID FETCH " + FULL_UID_SET + b" (FLAGS) (CHANGEDSINCE 1 VANISHED)",
        (b'LIST "" ', PATTERN),
        (b"LSUB \"\" ", PATTERN),
    ]
    run(m, commands, stop, report)


def attack_bodies(stop, report):
    m = Imap()
    m.login(ATTACKER)
    m.ok(b"SELECT Big")
    commands = [
        b"FETCH 1:* (BODYSTRUCTURE BINARY.PEEK[2] BINARY.SIZE[1])",
        b"FETCH 1:* (BODY.PEEK[1.MIME] BODY.PEEK[2]<0.1000> BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        b'SEARCH TEXT "needle-1"',
        b'SEARCH BODY "nothing-here"',
        # One section 200 times: refused (NO [LIMIT]) instead of built in memory.
        b"FETCH 1 (" + b" ".join([b"BODY.PEEK[2]"] * 200) + b")",
    ]
    run(m, commands, stop, report)


def run(m, commands, stop, report):
    """Sends `commands` round after round until `stop`, at most
    ATTACK_COMMANDS_PER_CONNECTION_MAX commands."""
    for n in range(ATTACK_COMMANDS_PER_CONNECTION_MAX):
        if stop.is_set():
            break
        command = commands[n % len(commands)]
        text, literal = command if isinstance(command, tuple) else (command, None)
        name = text[:24].decode(errors="replace")
        started = time.monotonic()
        try:
            status, _ = m.command(text, literal)
        except (OSError, ConnectionError, RuntimeError) as error:
            report.setdefault("errors", []).append(f"{name}: {error}")
            break
        seconds = time.monotonic() - started
        entry = report.setdefault(name, {"count": 0, "slowest_s": 0.0, "status": ""})
        entry["count"] += 1
        entry["slowest_s"] = max(entry["slowest_s"], round(seconds, 3))
        entry["status"] = status[:100]
    m.close()


def victim(stop, report):
    m = Imap()
    m.login(VICTIM)
    m.ok(b"SELECT INBOX")
    latencies = []
    for _ in range(NOOPS_MAX):
        if stop.is_set():
            break
        started = time.monotonic()
        try:
            m.ok(b"NOOP")
        except (OSError, ConnectionError, RuntimeError) as error:
            report["error"] = str(error)
            latencies.append(READ_TIMEOUT_S)
            break
        latencies.append(time.monotonic() - started)
        time.sleep(NOOP_EVERY_MS / 1000)
    report["noops"] = len(latencies)
    report["slowest_noop_s"] = round(max(latencies, default=0.0), 3)
    report["noops_over_1s"] = sum(1 for s in latencies if s > 1.0)
    m.close()


def main():
    uid_validity = fill()
    baseline_rss_kib = proc_status_kib("VmRSS")
    baseline_hwm_kib = proc_status_kib("VmHWM")
    stop_attack = threading.Event()
    stop_victim = threading.Event()
    reports = {"sets": {}, "sets2": {}, "qresync": {}, "bodies": {}, "victim": {}}
    attackers = [
        threading.Thread(target=attack_sets, args=(stop_attack, reports["sets"])),
        threading.Thread(target=attack_sets, args=(stop_attack, reports["sets2"])),
        threading.Thread(target=attack_qresync, args=(uid_validity, stop_attack, reports["qresync"])),
        threading.Thread(target=attack_bodies, args=(stop_attack, reports["bodies"])),
    ]
    watcher = threading.Thread(target=victim, args=(stop_victim, reports["victim"]))
    watcher.start()
    for thread in attackers:
        thread.start()
    deadline = time.monotonic() + ATTACK_S
    rss_max_kib = baseline_rss_kib
    aborted = False
    for _ in range(SAMPLES_MAX):
        if time.monotonic() > deadline:
            break
        try:
            rss = proc_status_kib("VmRSS")
        except (OSError, RuntimeError):
            aborted = True
            break
        rss_max_kib = max(rss_max_kib, rss)
        if rss - baseline_rss_kib > ABORT_RSS_GROWTH_MIB * 1024:
            aborted = True
            break
        time.sleep(0.05)
    stop_attack.set()
    result = {"baseline_rss_kib": baseline_rss_kib, "baseline_hwm_kib": baseline_hwm_kib}
    if aborted:
        # The server is left to the Rust test, which kills it; the threads are daemons of a
        # process that ends now.
        result.update(aborted=True, rss_max_kib=rss_max_kib, reports=reports)
        print(json.dumps(result), flush=True)
        os._exit(0)
    # The attackers get a bounded time, all together, to finish their last command.
    join_deadline = time.monotonic() + READ_TIMEOUT_S
    for thread in attackers:
        thread.join(timeout=max(0.0, join_deadline - time.monotonic()))
    stop_victim.set()
    watcher.join(timeout=READ_TIMEOUT_S)
    result.update(
        aborted=False,
        attackers_stuck=sum(1 for t in attackers if t.is_alive()),
        rss_max_kib=max(rss_max_kib, proc_status_kib("VmRSS")),
        hwm_kib=proc_status_kib("VmHWM"),
        reports=reports,
    )
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
