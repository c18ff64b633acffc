#!/usr/bin/env python3
"""A stateful IMAP stress client: N connections over several accounts, for a bounded time,
each sending random SELECT, EXAMINE, FETCH, STORE (with and without UNCHANGEDSINCE), APPEND,
COPY, MOVE, EXPUNGE, SEARCH, IDLE and NOOP, and checking every untagged reply against a model
of what the session must know (RFC 3501, RFC 9051, RFC 7162):

- sequence numbers: EXISTS never shrinks the mailbox, EXPUNGE names a message that exists,
  and no EXPUNGE comes while a FETCH, STORE or SEARCH (not their UID forms) is answered
  (RFC 3501 7.4.1); a FETCH names a message that exists, with the UID it had;
- UIDs: ascending by sequence number; a UID a session was told is expunged never comes
  back in it; APPENDUID and COPYUID never give a UID given before, in any session of the run;
- flags: a FETCH shows no keyword the session was not told of in FLAGS (RFC 3501 7.2.6 says
  FLAGS lists the flags in use; that it comes before a FETCH shows a new one is issue #27's
  rule, which clients keeping a flag table need, and Dovecot keeps);
- \\Recent: a message is \\Recent in one read-write selection at most (RFC 3501 2.3.2);
- MODSEQ: a message's MODSEQ never goes down in a session (RFC 7162 3.1.1);
- VANISHED (sessions that ENABLE QRESYNC, which get no EXPUNGE, RFC 7162 3.2.10): names
  messages the session has, once;
- no BAD (every command sent is valid) and no NO [SERVERBUG].

Prints the figures and every broken rule; exits 0 only when nothing broke.

  imap_stress.py HOST PORT CAFILE USER_FORMAT PASSWORD [--seconds S] [--connections N]
                 [--accounts A] [--seed X]

USER_FORMAT has {} for the account number (1..A): "user{}" or "user{}@harness.test".
"""

import argparse
import random
import re
import socket
import ssl
import sys
import threading
import time
from collections import Counter

COMMAND_TIMEOUT_S = 30.0
MAILBOXES = [b"INBOX", b"stress-a", b"stress-b"]
KEYWORDS = [b"$Label1", b"$Label2", b"$Label3", b"$Stress1", b"$Stress2", b"$Stress3"]
SYSTEM_FLAGS = [b"\\Seen", b"\\Flagged", b"\\Answered", b"\\Draft", b"\\Deleted"]
# Mailboxes are kept small: past this many messages a session deletes some.
MESSAGES_PER_MAILBOX_MAX = 120
VIOLATIONS_SHOWN_MAX = 40


class Violation(Exception):
    pass


class Shared:
    """What every session of the run shares: per (account, mailbox, UIDVALIDITY), the UIDs
    APPENDUID and COPYUID gave (none may be given twice)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.given = {}
        # (account, mailbox, UIDVALIDITY) -> {UID: the read-write selection that had it \\Recent}
        self.recent = {}
        self.violations = []
        self.counts = Counter()

    def violation(self, text):
        with self.lock:
            self.violations.append(text)

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] += n


LITERAL = re.compile(rb"\{(\d+)\+?\}$")


class Connection:
    def __init__(self, host, port, cafile):
        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
        raw = socket.create_connection((host, port), timeout=COMMAND_TIMEOUT_S)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buffer = b""
        self.tag = 0

    def fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def read_response(self, deadline):
        """One response line with its literals inlined as b"{n}" placeholders; the
        literals' bytes are dropped (the model needs none)."""
        parts = []
        while True:
            while b"\r\n" not in self.buffer:
                self.fill(deadline)
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            match = LITERAL.search(line)
            if not match:
                parts.append(line)
                return b"".join(parts)
            size = int(match.group(1))
            parts.append(line[: match.start()] + b"{literal}")
            while len(self.buffer) < size:
                self.fill(deadline)
            self.buffer = self.buffer[size:]

    def send(self, data):
        self.sock.sendall(data)

    def next_tag(self):
        self.tag += 1
        return b"s%d" % self.tag


class Session:
    def __init__(self, number, args, shared, rng):
        self.number = number
        self.args = args
        self.shared = shared
        self.rng = rng
        self.conn = None
        self.account = None
        self.reset_selected()
        self.qresync = False
        self.last_target = None
        # The last lines sent and received, shown with a violation.
        self.seen = []

    def reset_selected(self):
        self.mailbox = None
        self.read_only = False
        self.uidvalidity = None
        # One entry per sequence number: the UID, or None until a FETCH tells it.
        self.uids = []
        self.modseqs = {}
        self.keywords = set()
        # UIDs this session was told are expunged: none may come back.
        self.gone = set()
        self.selection = getattr(self, "selection", 0) + 1

    def key(self):
        return (self.account, self.mailbox, self.uidvalidity)

    def fail(self, text):
        context = b" | ".join(line[:120] for line in self.seen[-6:])
        raise Violation(f"session {self.number} ({self.account}, {self.mailbox!r}): {text}\n    after: {context!r}")

    # -- responses ------------------------------------------------------------------------

    def untagged(self, line, command):
        """Checks one untagged line against the model and applies it."""
        self.note(line)
        if line.startswith(b"* OK") or line.startswith(b"* NO") or line.startswith(b"* BYE"):
            if b"[SERVERBUG]" in line:
                self.fail(f"untagged SERVERBUG: {line[:200]!r}")
            if b"[COPYUID " in line:  # MOVE's (RFC 6851 4.3)
                self.new_uids(b"COPYUID", line)
            if b"[UIDVALIDITY " in line:
                self.uidvalidity = int(line.split(b"[UIDVALIDITY ")[1].split(b"]")[0])
            return
        if line.startswith(b"* FLAGS "):
            inside = line[len(b"* FLAGS ("):].rstrip(b")")
            self.keywords = {f.lower() for f in inside.split() if not f.startswith(b"\\")}
            return
        parts = line.split(b" ", 3)
        if len(parts) >= 3 and parts[1].isdigit():
            number, kind = int(parts[1]), parts[2].upper()
            if kind == b"EXISTS":
                if number < len(self.uids):
                    self.fail(f"EXISTS {number} with {len(self.uids)} messages and no EXPUNGE")
                self.uids.extend([None] * (number - len(self.uids)))
            elif kind == b"RECENT":
                if number > len(self.uids):
                    self.fail(f"RECENT {number} with {len(self.uids)} messages")
            elif kind == b"EXPUNGE":
                if self.qresync:
                    self.fail("EXPUNGE in a session that enabled QRESYNC (RFC 7162 3.2.10)")
                if command in (b"FETCH", b"STORE", b"SEARCH"):
                    self.fail(f"EXPUNGE during {command.decode()} (RFC 3501 7.4.1)")
                if not 1 <= number <= len(self.uids):
                    self.fail(f"EXPUNGE {number} with {len(self.uids)} messages")
                self.forget(self.uids.pop(number - 1))
            elif kind == b"FETCH":
                self.fetched(number, line)
            return
        if line.startswith(b"* VANISHED "):
            if line.startswith(b"* VANISHED (EARLIER)"):
                return
            if command in (b"FETCH", b"STORE", b"SEARCH"):
                self.fail(f"VANISHED during {command.decode()}")
            for uid in expand_set(line[len(b"* VANISHED "):]):
                if uid in self.gone:
                    self.fail(f"VANISHED {uid} a second time")
                if uid in self.uids:
                    self.uids.remove(uid)
                    self.forget(uid)
                    continue
                # A message whose UID this session was not told yet (new, or left out of a
                # FETCH): one numbered between the known UIDs around it.
                low = max((i + 1 for i, u in enumerate(self.uids) if u is not None and u < uid), default=0)
                high = min((i for i, u in enumerate(self.uids) if u is not None and u > uid), default=len(self.uids))
                unknown = [i for i in range(low, high) if self.uids[i] is None]
                if not unknown:
                    self.fail(f"VANISHED {uid}, a UID this session does not have")
                self.uids.pop(unknown[0])
                self.forget(uid)
            return
        # SEARCH, ESEARCH, LIST, STATUS, CAPABILITY, ENABLED and the like: nothing to model.

    def note(self, line):
        self.seen.append(line)
        del self.seen[:-8]

    def forget(self, uid):
        if uid is None:
            return
        self.modseqs.pop(uid, None)
        self.gone.add(uid)

    def fetched(self, number, line):
        if not 1 <= number <= len(self.uids):
            self.fail(f"FETCH of message {number} with {len(self.uids)} messages")
        found = re.search(rb"[( ]UID (\d+)", line)
        if found:
            uid = int(found.group(1))
            known = self.uids[number - 1]
            if known is not None and known != uid:
                self.fail(f"message {number} has UID {known}, a FETCH says {uid}")
            if known is None:
                before = [u for u in self.uids[: number - 1] if u is not None]
                after = [u for u in self.uids[number:] if u is not None]
                if (before and before[-1] >= uid) or (after and after[0] <= uid) or uid in self.uids:
                    self.fail(f"UID {uid} out of order at message {number}")
                if uid in self.gone:
                    self.fail(f"UID {uid} back after its EXPUNGE")
                self.uids[number - 1] = uid
        uid = self.uids[number - 1]
        flags = re.search(rb"FLAGS \(([^)]*)\)", line)
        if flags:
            for flag in flags.group(1).split():
                if not flag.startswith(b"\\") and flag.lower() not in self.keywords:
                    self.fail(f"FETCH shows keyword {flag.decode()} before FLAGS announced it")
            if b"\\Recent" in flags.group(1).split() and uid is not None and not self.read_only:
                mine = (self.number, self.selection)
                with self.shared.lock:
                    owner = self.shared.recent.setdefault(self.key(), {}).setdefault(uid, mine)
                if owner != mine:
                    self.fail(f"UID {uid} \\Recent here and in session {owner[0]}'s selection {owner[1]}")
        modseq = re.search(rb"MODSEQ \((\d+)\)", line)
        if modseq and uid is not None:
            value = int(modseq.group(1))
            if value < self.modseqs.get(uid, 0):
                self.fail(f"MODSEQ of UID {uid} went down from {self.modseqs[uid]} to {value}")
            self.modseqs[uid] = value

    def run(self, text, command=None, literal=None):
        """Sends one command (with one synchronising literal) and checks its answer; the
        tagged answer after the tag."""
        conn = self.conn
        tag = conn.next_tag()
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        name = command or text.split(b" ")[0].upper()
        self.note(b"C: " + text[:100])
        if literal is not None:
            conn.send(tag + b" " + text + b" {%d}\r\n" % len(literal))
            line = conn.read_response(deadline)
            while not line.startswith(b"+"):
                if line.startswith(tag + b" "):
                    return self.tagged(line[len(tag) + 1:], text)
                self.untagged(line, name)
                line = conn.read_response(deadline)
            conn.send(literal + b"\r\n")
        else:
            conn.send(tag + b" " + text + b"\r\n")
        while True:
            line = conn.read_response(deadline)
            if line.startswith(tag + b" "):
                return self.tagged(line[len(tag) + 1:], text)
            self.untagged(line, name)

    def tagged(self, answer, text):
        self.note(b"tagged: " + answer[:100])
        if answer.startswith(b"BAD"):
            self.fail(f"BAD to {text[:80]!r}: {answer[:200]!r}")
        if b"[SERVERBUG]" in answer:
            self.fail(f"SERVERBUG to {text[:80]!r}: {answer[:200]!r}")
        self.shared.count("OK" if answer.startswith(b"OK") else "NO")
        for code in (b"APPENDUID", b"COPYUID"):
            if b"[" + code in answer:
                self.new_uids(code, answer)
        return answer

    def new_uids(self, code, answer):
        fields = answer.split(b"[" + code + b" ")[1].split(b"]")[0].split()
        validity, uids = int(fields[0]), expand_set(fields[-1])
        target = self.last_target
        key = (self.account, target, validity)
        with self.shared.lock:
            given = self.shared.given.setdefault(key, set())
            reused = [u for u in uids if u in given]
            given.update(uids)
        if reused:
            self.fail(f"{code.decode()} gave UIDs {reused} of {target!r} that were given before")

    # -- commands -------------------------------------------------------------------------

    def connect(self):
        self.conn = Connection(self.args.host, self.args.port, self.args.cafile)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        self.conn.read_response(deadline)
        number = self.rng.randint(1, self.args.accounts)
        self.account = number
        user = self.args.user_format.replace("{}", str(number)).encode()
        answer = self.run(b'LOGIN "%s" "%s"' % (user, self.args.password.encode()))
        if not answer.startswith(b"OK"):
            self.fail(f"LOGIN refused: {answer!r}")
        self.qresync = self.rng.random() < 0.3
        if self.qresync:
            self.run(b"ENABLE QRESYNC")
        self.reset_selected()

    def select(self):
        mailbox = self.rng.choice(MAILBOXES)
        examine = self.rng.random() < 0.2
        self.reset_selected()
        self.mailbox = mailbox
        self.read_only = examine
        answer = self.run((b"EXAMINE " if examine else b"SELECT ") + mailbox + b" (CONDSTORE)", b"SELECT")
        if not answer.startswith(b"OK"):
            self.fail(f"SELECT refused: {answer!r}")
        self.learn_uids()

    def learn_uids(self):
        if None in self.uids:
            first = self.uids.index(None) + 1
            self.run(b"FETCH %d:* (UID FLAGS)" % first, b"FETCH")

    def sequence_range(self):
        count = len(self.uids)
        low = self.rng.randint(1, count)
        high = self.rng.randint(low, min(count, low + 20))
        return low, high

    def step(self):
        if self.mailbox is None or self.rng.random() < 0.05:
            return self.select()
        count = len(self.uids)
        choice = self.rng.random()
        if count > MESSAGES_PER_MAILBOX_MAX and not self.read_only:
            self.shared.count("trim")
            self.run(b"STORE 1:%d +FLAGS.SILENT (\\Deleted)" % (count // 2), b"STORE")
            self.run(b"EXPUNGE")
            return
        if choice < 0.15 or count == 0:
            self.shared.count("APPEND")
            target = self.rng.choice(MAILBOXES)
            self.last_target = target
            body = (b"From: stress@example.org\r\nSubject: stress %d\r\n"
                    b"Message-ID: <%d.%d@stress.example>\r\n\r\nbody %d\r\n"
                    % (self.rng.randint(0, 10**6), self.number, self.rng.randint(0, 10**9), self.number))
            flags = b" (" + self.rng.choice(KEYWORDS) + b")" if self.rng.random() < 0.3 else b""
            self.run(b"APPEND " + target + flags, b"APPEND", literal=body)
        elif choice < 0.35:
            self.shared.count("FETCH")
            low, high = self.sequence_range()
            items = self.rng.choice([b"(FLAGS)", b"(UID FLAGS)", b"(ENVELOPE)", b"(BODYSTRUCTURE)",
                                     b"(UID BODY.PEEK[])", b"(FLAGS MODSEQ)", b"(BODY[])", b"(UID RFC822.SIZE FLAGS)"])
            if self.rng.random() < 0.3:
                self.run(b"UID FETCH %d:* " % self.rng.randint(1, 400) + items, b"UID")
            else:
                self.run(b"FETCH %d:%d " % (low, high) + items, b"FETCH")
        elif choice < 0.55 and not self.read_only:
            self.shared.count("STORE")
            low, high = self.sequence_range()
            flag = self.rng.choice(SYSTEM_FLAGS[:4] + KEYWORDS)
            mode = self.rng.choice([b"+FLAGS", b"-FLAGS", b"+FLAGS.SILENT"])
            modifier = b""
            if self.rng.random() < 0.3:
                known = [self.modseqs.get(u, 1) for u in self.uids[low - 1:high] if u is not None]
                modifier = b" (UNCHANGEDSINCE %d)" % (max(known) if known and self.rng.random() < 0.7 else 1)
            if self.rng.random() < 0.3:
                uids = [u for u in self.uids[low - 1:high] if u is not None]
                if uids:
                    self.run(b"UID STORE %d:%d" % (uids[0], uids[-1]) + modifier + b" " + mode + b" (" + flag + b")", b"UID")
            else:
                self.run(b"STORE %d:%d" % (low, high) + modifier + b" " + mode + b" (" + flag + b")", b"STORE")
        elif choice < 0.63:
            self.shared.count("COPY/MOVE")
            low, high = self.sequence_range()
            target = self.rng.choice(MAILBOXES)
            self.last_target = target
            verb = b"MOVE" if (self.rng.random() < 0.5 and not self.read_only) else b"COPY"
            self.run(verb + b" %d:%d " % (low, high) + target, verb)
        elif choice < 0.68 and not self.read_only:
            self.shared.count("EXPUNGE")
            low, high = self.sequence_range()
            self.run(b"STORE %d:%d +FLAGS.SILENT (\\Deleted)" % (low, high), b"STORE")
            self.run(b"EXPUNGE")
        elif choice < 0.80:
            self.shared.count("SEARCH")
            criteria = self.rng.choice([b"UNSEEN", b"FLAGGED", b"KEYWORD $Label1", b"ALL", b"NOT DELETED",
                                        b"SUBJECT stress", b"UID 1:50", b"MODSEQ 5", b"RETURN (MIN MAX COUNT) ALL"])
            if self.rng.random() < 0.3:
                self.run(b"UID SEARCH " + criteria, b"UID")
            else:
                self.run(b"SEARCH " + criteria, b"SEARCH")
        elif choice < 0.88:
            self.shared.count("IDLE")
            self.idle(self.rng.uniform(0.1, 0.8))
        else:
            self.shared.count("NOOP")
            self.run(b"NOOP")
        self.learn_uids()

    def idle(self, seconds):
        conn = self.conn
        tag = conn.next_tag()
        conn.send(tag + b" IDLE\r\n")
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        line = conn.read_response(deadline)
        while not line.startswith(b"+"):
            if line.startswith(tag + b" "):
                self.tagged(line[len(tag) + 1:], b"IDLE")
                return
            self.untagged(line, b"IDLE")
            line = conn.read_response(deadline)
        until = time.monotonic() + seconds
        while True:
            try:
                line = conn.read_response(until)
            except (TimeoutError, socket.timeout):
                break
            self.untagged(line, b"IDLE")
        conn.send(b"DONE\r\n")
        while True:
            line = conn.read_response(deadline)
            if line.startswith(tag + b" "):
                self.tagged(line[len(tag) + 1:], b"IDLE")
                return
            self.untagged(line, b"IDLE")

    def main(self, stop_at):
        commands_per_login = self.rng.randint(50, 300)
        done = 0
        try:
            self.connect()
            while time.monotonic() < stop_at:
                self.step()
                done += 1
                self.shared.count("commands")
                if done >= commands_per_login:
                    self.run(b"LOGOUT")
                    self.conn.sock.close()
                    self.connect()
                    done = 0
                    commands_per_login = self.rng.randint(50, 300)
            self.run(b"LOGOUT")
        except Violation as error:
            self.shared.violation(str(error))
        except Exception as error:  # a timeout, a dropped connection: the run failed
            self.shared.violation(f"session {self.number}: {type(error).__name__}: {error}")
        finally:
            if self.conn is not None:
                try:
                    self.conn.sock.close()
                except OSError:
                    pass


def expand_set(text):
    out = []
    for part in text.strip().split(b","):
        if b":" in part:
            a, b = (int(x) for x in part.split(b":"))
            out.extend(range(min(a, b), max(a, b) + 1))
        elif part:
            out.append(int(part))
    return out


def prepare(args):
    """Creates the stress mailboxes in every account (an existing one is fine)."""
    for number in range(1, args.accounts + 1):
        conn = Connection(args.host, args.port, args.cafile)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        conn.read_response(deadline)
        user = args.user_format.replace("{}", str(number)).encode()
        for text in [b'LOGIN "%s" "%s"' % (user, args.password.encode())] + [
                b"CREATE " + m for m in MAILBOXES[1:]] + [b"LOGOUT"]:
            tag = conn.next_tag()
            conn.send(tag + b" " + text + b"\r\n")
            while True:
                line = conn.read_response(deadline)
                if line.startswith(tag + b" "):
                    if text.startswith(b"LOGIN") and not line[len(tag) + 1:].startswith(b"OK"):
                        raise SystemExit(f"LOGIN as {user!r} refused: {line!r}")
                    break
        conn.sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("cafile")
    parser.add_argument("user_format")
    parser.add_argument("password")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**9)
    print(f"seed {seed}: {args.connections} connections over {args.accounts} accounts for {args.seconds:.0f} s")
    prepare(args)
    shared = Shared()
    stop_at = time.monotonic() + args.seconds
    sessions = [Session(n, args, shared, random.Random(seed * 1000 + n)) for n in range(args.connections)]
    threads = [threading.Thread(target=s.main, args=(stop_at,), daemon=True) for s in sessions]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.seconds + 3 * COMMAND_TIMEOUT_S)
    alive = sum(1 for t in threads if t.is_alive())
    if alive:
        shared.violation(f"{alive} sessions still running long after the end")
    elapsed = time.monotonic() - started
    counts = shared.counts
    print(f"{counts['commands']} commands in {elapsed:.1f} s ({counts['commands'] / max(elapsed, 0.001):.0f}/s); "
          f"tagged OK {counts['OK']}, NO {counts['NO']}")
    print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                                  if k not in ("commands", "OK", "NO")))
    for text in shared.violations[:VIOLATIONS_SHOWN_MAX]:
        print("VIOLATION " + text)
    print(f"{len(shared.violations)} violations")
    sys.exit(0 if not shared.violations else 1)


if __name__ == "__main__":
    main()
