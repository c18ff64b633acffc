#!/usr/bin/env python3
"""IMAP behaviour that RFC 3501/9051 fix and clients rely on, checked from the RFC's text
against any server over implicit TLS: the same checks must pass on the harness's Dovecot (a
check Dovecot fails is a wrong check). Prints PASS/FAIL lines, then "N passed, M failed";
exits 0 only when nothing failed. Works in a mailbox of its own, deleted at the end.

  imap_fidelity.py HOST PORT CAFILE USER PASSWORD
"""

import socket
import ssl
import sys
import time

TIMEOUT_S = 10.0
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f" - {detail!r}"[:400]))


class Client:
    """A raw IMAP client: commands as bytes, every response line kept."""

    def __init__(self, host, port, cafile):
        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
        raw = socket.create_connection((host, port), timeout=TIMEOUT_S)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buffer = b""
        self.tag = 0
        self.read_line()

    def read_line(self):
        deadline = time.monotonic() + TIMEOUT_S
        while b"\r\n" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no response line")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def send(self, data):
        self.sock.sendall(data)

    def next_tag(self):
        self.tag += 1
        return b"t%d" % self.tag

    def wait(self, tag):
        """The untagged lines before `tag`'s answer, and that answer (after the tag)."""
        untagged = []
        for _ in range(100_000):
            line = self.read_line()
            if line.startswith(tag + b" "):
                return untagged, line[len(tag) + 1:]
            untagged.append(line)
        raise RuntimeError("a response too long")

    def command(self, text):
        tag = self.next_tag()
        self.send(tag + b" " + text + b"\r\n")
        return self.wait(tag)

    def append(self, mailbox, message):
        tag = self.next_tag()
        self.send(tag + b" APPEND " + mailbox + b" {%d}\r\n" % len(message))
        line = self.read_line()
        if not line.startswith(b"+"):
            return [], line
        self.send(message + b"\r\n")
        return self.wait(tag)


def search_numbers(untagged):
    for line in untagged:
        if line.startswith(b"* SEARCH"):
            return line[len(b"* SEARCH"):].split()
    return None

def untagged_number(untagged, word):
    """n from the last "* n WORD" line, or None."""
    found = None
    for line in untagged:
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"*" and parts[2] == word and parts[1].isdigit():
            found = int(parts[1])
    return found


def status_recent(client, box):
    untagged, _ = client.command(b"STATUS " + box + b" (RECENT)")
    for line in untagged:
        if line.startswith(b"* STATUS") and b"RECENT " in line:
            return int(line.split(b"RECENT ")[1].split(b")")[0])
    return None


def fetch_flags(client):
    """{sequence number: flags line} from FETCH 1:* (FLAGS)."""
    untagged, _ = client.command(b"FETCH 1:* (FLAGS)")
    return {int(l.split()[1]): l for l in untagged if b" FETCH " in l}


def check_recent(login, box):
    """\\Recent in IMAP4rev1 (RFC 3501 2.3.2, 6.3.1, 6.3.2, 6.3.10, 6.4.4, 7.3.2): the first
    session to see a new message has it \\Recent; EXAMINE shows it without taking it."""
    a, b = login(), login()
    _, answer = a.command(b"CREATE " + box)
    message = b"From: a@example.org\r\nSubject: recent\r\n\r\nbody\r\n"
    a.append(box, message)
    check("STATUS RECENT counts a message no session has seen", status_recent(a, box) == 1, status_recent(a, box))
    untagged, answer = b.command(b"EXAMINE " + box)
    check("EXAMINE reports it in RECENT", untagged_number(untagged, b"RECENT") == 1, untagged)
    b.command(b"CLOSE")
    untagged, answer = a.command(b"SELECT " + box)
    check("EXAMINE did not take \\Recent: the next SELECT has it",
          untagged_number(untagged, b"RECENT") == 1, untagged)
    flags = fetch_flags(a)
    check("FETCH FLAGS shows \\Recent to that session", b"\\Recent" in flags.get(1, b""), flags)
    for key, expected in [(b"RECENT", [b"1"]), (b"NEW", [b"1"]), (b"OLD", [])]:
        untagged, _ = a.command(b"SEARCH " + key)
        check(f"SEARCH {key.decode()} in the session that has \\Recent",
              search_numbers(untagged) == expected, untagged)
    a.command(b"STORE 1 +FLAGS (\\Seen)")
    untagged, _ = a.command(b"SEARCH NEW")
    check("SEARCH NEW is RECENT UNSEEN", search_numbers(untagged) == [], untagged)
    untagged, _ = b.command(b"SELECT " + box)
    check("a later session gets no RECENT", untagged_number(untagged, b"RECENT") == 0, untagged)
    flags = fetch_flags(b)
    check("nor \\Recent in FETCH", 1 in flags and b"\\Recent" not in flags[1], flags)
    untagged, _ = b.command(b"SEARCH OLD")
    check("SEARCH OLD finds it there", search_numbers(untagged) == [b"1"], untagged)
    b.command(b"CLOSE")
    # New mail while a session has the mailbox selected is that session's \\Recent.
    b.append(box, message)
    untagged, _ = a.command(b"NOOP")
    check("new mail: NOOP reports EXISTS and RECENT (the first message stays \\Recent)",
          untagged_number(untagged, b"EXISTS") == 2 and untagged_number(untagged, b"RECENT") == 2, untagged)
    flags = fetch_flags(a)
    check("the new message is \\Recent in that session",
          b"\\Recent" in flags.get(2, b"") and b"\\Recent" in flags.get(1, b""), flags)
    check("STATUS RECENT is 0 once a session took them", status_recent(b, box) == 0, status_recent(b, box))
    a.command(b"CLOSE")
    # A COPY, MOVE or APPEND target gets \\Recent for the next session to select it.
    target = box + b"-target"
    a.command(b"CREATE " + target)
    b.command(b"SELECT " + box)
    _, copied = b.command(b"COPY 1 " + target)
    _, moved = b.command(b"MOVE 1 " + target)
    b.append(target, message)
    b.command(b"CLOSE")
    recent = status_recent(a, target)
    check("COPY, MOVE and APPEND targets count in STATUS RECENT",
          copied.startswith(b"OK") and moved.startswith(b"OK") and recent == 3, (copied, moved, recent))
    untagged, _ = a.command(b"SELECT " + target)
    check("and in the next SELECT's RECENT", untagged_number(untagged, b"RECENT") == 3, untagged)
    flags = fetch_flags(a)
    check("each of them \\Recent in FETCH",
          len(flags) == 3 and all(b"\\Recent" in line for line in flags.values()), flags)
    a.command(b"CLOSE")
    a.command(b"DELETE " + target)
    a.command(b"DELETE " + box)
    a.command(b"LOGOUT")
    b.command(b"LOGOUT")


def parse_list(line):
    """(attributes in lower case, name, what follows) of a LIST or LSUB line."""
    head, _, rest = line.partition(b") ")
    attributes = set(head.split(b"(", 1)[1].lower().split())
    rest = rest.split(b" ", 1)[1]  # the delimiter
    if rest.startswith(b'"'):
        name, _, after = rest[1:].partition(b'"')
    else:
        name, _, after = rest.partition(b" ")
    return attributes, name, after.strip()


def listed(client, command):
    untagged, answer = client.command(command)
    return {parse_list(l)[1]: parse_list(l) for l in untagged if l.startswith((b"* LIST", b"* LSUB"))}, answer


def check_subscriptions(login, base):
    """Subscriptions (RFC 3501 6.3.6, 6.3.9; RFC 5258 3.1, 3.4, 3.5): a subscribed name
    outlives its mailbox, shown as \\NonExistent; RECURSIVEMATCH gives CHILDINFO for the
    parent of a subscribed child; LSUB gives that parent as \\Noselect."""
    c = login()
    child, other, gone = base + b"/child", base + b"/other", base + b"-gone"
    for name in (base, child, other, gone):
        c.command(b"CREATE " + name)
    c.command(b"SUBSCRIBE " + child)
    c.command(b"SUBSCRIBE " + gone)
    c.command(b"DELETE " + gone)
    names, answer = listed(c, b'LIST (SUBSCRIBED) "" "' + base + b'*"')
    attributes = names.get(gone, (set(),))[0]
    check("LIST (SUBSCRIBED) keeps a deleted mailbox's subscription, \\NonExistent",
          {b"\\subscribed", b"\\nonexistent"} <= attributes and b"\\subscribed" in names.get(child, (set(),))[0]
          and base not in names, (names, answer))
    names, answer = listed(c, b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "' + base + b'%"')
    entry = names.get(base, (set(), b"", b""))
    check("RECURSIVEMATCH gives the parent of a subscribed child with CHILDINFO",
          entry[2] == b'(CHILDINFO ("SUBSCRIBED"))' and b"\\subscribed" not in entry[0] and gone in names,
          (names, answer))
    names, answer = listed(c, b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "' + base + b'*"')
    check("RECURSIVEMATCH leaves out an unsubscribed parent whose subscribed child is listed",
          base not in names and child in names, (names, answer))
    names, answer = listed(c, b'LSUB "" "' + base + b'%"')
    check("LSUB gives an unsubscribed parent of a subscribed child as \\Noselect",
          b"\\noselect" in names.get(base, (set(),))[0] and gone in names and child not in names, (names, answer))
    names, answer = listed(c, b'LSUB "" "' + base + b'/%"')
    check("LSUB of the children lists the subscribed one alone",
          set(names) == {child} and b"\\noselect" not in names[child][0], (names, answer))
    c.command(b"CREATE " + gone)
    names, _ = listed(c, b'LIST (SUBSCRIBED) "" "' + gone + b'"')
    check("a mailbox created under a name still subscribed is subscribed",
          gone in names and b"\\nonexistent" not in names[gone][0], names)
    c.command(b"DELETE " + gone)
    _, answer = c.command(b"UNSUBSCRIBE " + gone)
    names, _ = listed(c, b'LIST (SUBSCRIBED) "" "' + base + b'*"')
    check("UNSUBSCRIBE of a deleted mailbox's name", answer.startswith(b"OK") and gone not in names, (answer, names))
    c.command(b"UNSUBSCRIBE " + child)
    # A deleted mailbox's children stay, and "%" still lists its level (RFC 3501 6.3.4,
    # 6.3.8), which has children.
    c.command(b"DELETE " + base)
    names, answer = listed(c, b'LIST "" "' + base + b'%"')
    check("LIST % lists the level of a deleted mailbox that has children",
          base in names and b"\\haschildren" in names[base][0], (names, answer))
    for name in (child, other, base):
        c.command(b"DELETE " + name)
    c.command(b"LOGOUT")


def check_modseq_after_other_store(login, box):
    """FETCH MODSEQ after another session's STORE is that STORE's MODSEQ (RFC 7162 3.1.4)."""
    a, b = login(), login()
    a.command(b"CREATE " + box)
    a.append(box, b"Subject: modseq\r\n\r\nbody\r\n")
    a.command(b"SELECT " + box + b" (CONDSTORE)")
    b.command(b"SELECT " + box + b" (CONDSTORE)")
    untagged, _ = b.command(b"STORE 1 +FLAGS (\\Flagged)")
    stored = [int(l.split(b"MODSEQ (")[1].split(b")")[0]) for l in untagged if b"MODSEQ (" in l]
    untagged, answer = a.command(b"FETCH 1 (MODSEQ)")
    fetched = [int(l.split(b"MODSEQ (")[1].split(b")")[0]) for l in untagged if l.startswith(b"* 1 FETCH") and b"MODSEQ (" in l]
    check("FETCH MODSEQ after another session's STORE is the STORE's",
          stored and fetched and fetched[0] == stored[-1] and max(fetched) == stored[-1], (stored, untagged))
    a.command(b"CLOSE")
    b.command(b"CLOSE")
    a.command(b"DELETE " + box)
    a.command(b"LOGOUT")
    b.command(b"LOGOUT")


def check_esearch_min_max(login, box):
    """ESEARCH with MIN or MAX alone under CONDSTORE: MODSEQ is that message's, not the
    highest of every match (RFC 4731 3.2, RFC 7162 3.1.5)."""
    c = login()
    c.command(b"CREATE " + box)
    for _ in range(3):
        c.append(box, b"Subject: esearch\r\n\r\nbody\r\n")
    c.command(b"SELECT " + box + b" (CONDSTORE)")
    c.command(b"STORE 1 +FLAGS (\\Answered)")
    c.command(b"STORE 3 +FLAGS (\\Flagged)")
    untagged, _ = c.command(b"FETCH 1:3 (MODSEQ)")
    modseqs = {int(l.split()[1]): int(l.split(b"MODSEQ (")[1].split(b")")[0]) for l in untagged if b"MODSEQ (" in l}
    for returned, number in [(b"MIN", 1), (b"MAX", 3)]:
        untagged, _ = c.command(b"SEARCH RETURN (" + returned + b") MODSEQ 1")
        esearch = [l for l in untagged if l.startswith(b"* ESEARCH")]
        expected = b"%s %d MODSEQ %d" % (returned, number, modseqs.get(number, -1))
        check(f"ESEARCH with {returned.decode()} alone gives that message's MODSEQ",
              len(set(modseqs.values())) == 3 and esearch and esearch[0].endswith(expected), (modseqs, untagged))
    c.command(b"CLOSE")
    c.command(b"DELETE " + box)
    c.command(b"LOGOUT")


def main():
    host, port, cafile, user, password = sys.argv[1:6]
    c = Client(host, int(port), cafile)
    _, answer = c.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    check("LOGIN", answer.startswith(b"OK"), answer)
    box = b"fidelity-%d" % (int(time.time() * 1000) % 10**9)
    _, answer = c.command(b"CREATE " + box)
    check("CREATE the test mailbox", answer.startswith(b"OK"), answer)

    # Atoms (RFC 3501 section 9: ATOM-CHAR is any CHAR but atom-specials; "~" is one): a
    # mailbox name or pattern may start with "~"; only "~{" begins a literal8.
    _, answer = c.command(b"SELECT ~fidelity-none")
    check("SELECT ~name is a mailbox name (NO, not BAD)", answer.startswith(b"NO"), answer)
    _, answer = c.command(b'LIST "" ~fidelity-none')
    check('LIST "" ~pattern is a pattern (OK)', answer.startswith(b"OK"), answer)
    # A parse error answers BAD and the session goes on, pipelined commands too.
    tag1, tag2 = c.next_tag(), c.next_tag()
    c.send(tag1 + b" FETCH 1 (BODY[\r\n" + tag2 + b" NOOP\r\n")
    _, first = c.wait(tag1)
    check("a malformed command gets BAD", first.startswith(b"BAD"), first)
    _, second = c.wait(tag2)
    check("the command pipelined after it is answered", second.startswith(b"OK"), second)

    # SENTBEFORE, SENTON, SENTSINCE compare the Date header's day as written, disregarding
    # time and timezone (RFC 3501 section 6.4.4): 00:30 +0200 on the 25th is the 25th.
    message = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: sent-date\r\n"
               b"Date: Sun, 25 Mar 2007 00:30:00 +0200\r\nMessage-ID: <sent-date@example.org>\r\n\r\nbody\r\n")
    _, answer = c.append(box, message)
    check("APPEND a message dated 00:30 +0200", answer.startswith(b"OK"), answer)
    _, answer = c.command(b"SELECT " + box)
    check("SELECT the test mailbox", answer.startswith(b"OK"), answer)
    for key, expected in [
        (b"SENTON 25-Mar-2007", [b"1"]),
        (b"SENTBEFORE 25-Mar-2007", []),
        (b"SENTBEFORE 26-Mar-2007", [b"1"]),
        (b"SENTSINCE 25-Mar-2007", [b"1"]),
        (b"SENTSINCE 26-Mar-2007", []),
        (b"SENTON 24-Mar-2007", []),
    ]:
        untagged, answer = c.command(b"SEARCH " + key)
        found = search_numbers(untagged)
        check(f"SEARCH {key.decode()}", answer.startswith(b"OK") and found == expected, (found, answer))

    # A keyword is announced in an untagged FLAGS before any FETCH shows it (RFC 3501 7.2.6,
    # RFC 9051 7.3.5): set by this session, and by another one.
    def announced_before_shown(lines, keyword):
        for line in lines:
            if line.startswith(b"* FLAGS") and keyword in line:
                return True
            if b" FETCH " in line and keyword in line:
                return False
        return False

    untagged, answer = c.command(b"STORE 1 +FLAGS ($FidelityOwn)")
    check("a keyword this session sets is in FLAGS before the FETCH that shows it",
          answer.startswith(b"OK") and announced_before_shown(untagged, b"$FidelityOwn"), untagged)
    other = Client(host, int(port), cafile)
    other.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    other.command(b"SELECT " + box)
    _, answer = other.command(b"STORE 1 +FLAGS ($FidelityOther)")
    check("another session sets a keyword", answer.startswith(b"OK"), answer)
    other.command(b"LOGOUT")
    untagged, answer = c.command(b"NOOP")
    shows = any(b"$FidelityOther" in l for l in untagged if b" FETCH " in l)
    check("another session's new keyword is in FLAGS before the FETCH that shows it",
          shows and announced_before_shown(untagged, b"$FidelityOther"), untagged)

    # COPY into the selected mailbox: the new message is reported, by the COPY's own
    # response or by the next NOOP at the latest (EXISTS), with its keywords announced.
    copied, answer = c.command(b"COPY 1 " + box)
    check("COPY into the selected mailbox", answer.startswith(b"OK"), answer)
    after_copy, _ = c.command(b"NOOP")
    exists = [l for l in copied + after_copy if l.endswith(b" EXISTS")]
    check("the copy is reported with EXISTS by the next NOOP at the latest",
          exists and exists[-1] == b"* 2 EXISTS", copied + after_copy)
    check("and with RECENT, counting the copy (this session selected the mailbox read-write)",
          untagged_number(copied + after_copy, b"RECENT") == 2, copied + after_copy)
    check("the copy is \\Recent", b"\\Recent" in fetch_flags(c).get(2, b""), fetch_flags(c))

    # MOVE into the selected mailbox (RFC 6851 does not forbid it): the message gets a new
    # UID, the old one is expunged, and COPYUID says which.
    untagged, _ = c.command(b"UID SEARCH ALL")
    before = search_numbers(untagged)
    untagged, answer = c.command(b"UID MOVE " + before[0] + b" " + box)
    copyuid = [l for l in untagged if b"COPYUID" in l]
    expunged = [l for l in untagged if l.endswith(b" EXPUNGE")]
    check("UID MOVE into the selected mailbox", answer.startswith(b"OK") and copyuid and expunged, (untagged, answer))
    untagged, answer = c.command(b"UID SEARCH ALL")
    after = search_numbers(untagged)
    check("the moved message has a new UID, the old one is gone",
          after is not None and len(after) == len(before) and before[0] not in after, (before, after))

    # ESEARCH with CONDSTORE: with ALL or COUNT returned, MODSEQ is the highest of every match
    # (RFC 4731 3.2, RFC 7162 3.1.5).
    c.command(b"STORE 1 +FLAGS (\\Answered)")
    c.command(b"STORE 2 +FLAGS (\\Flagged)")
    untagged, _ = c.command(b"FETCH 1:2 (MODSEQ)")
    modseqs = {}
    for line in untagged:
        parts = line.replace(b"(", b" ").replace(b")", b" ").split()
        if len(parts) >= 5 and parts[2] == b"FETCH" and b"MODSEQ" in parts:
            modseqs[int(parts[1])] = int(parts[parts.index(b"MODSEQ") + 1])
    untagged, answer = c.command(b"SEARCH RETURN (MIN COUNT) MODSEQ 1")
    esearch = [l for l in untagged if l.startswith(b"* ESEARCH")]
    check("ESEARCH with COUNT and MODSEQ gives the highest of every match",
          esearch and esearch[0].endswith(b"MODSEQ %d" % max(modseqs.values(), default=-1)), (modseqs, untagged))

    # Groups (RFC 5322 3.4, RFC 3501 7.4.2): start and end markers, no phantom member for a
    # group that holds only a comment, and SEARCH CC finds a group's name.
    grouped = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: groups\r\n"
               b"Cc: group2: (foo) ;, Friends: c@example.org, d@example.org;\r\n"
               b"Date: Mon, 2 Apr 2007 10:00:00 +0000\r\nMessage-ID: <groups@example.org>\r\n\r\nbody\r\n")
    c.append(box, grouped)
    c.command(b"NOOP")
    untagged, answer = c.command(b"UID SEARCH HEADER Message-ID groups@example.org")
    uids = search_numbers(untagged) or []
    untagged, answer = c.command(b"UID FETCH " + (uids[0] if uids else b"0") + b" (ENVELOPE)")
    envelope = b" ".join(untagged)
    check("ENVELOPE: a comment-only group has no member",
          b"MISSING_MAILBOX" not in envelope and b'(NIL NIL "group2" NIL)(NIL NIL NIL NIL)' in envelope, envelope)
    check("ENVELOPE: a group with members keeps its markers",
          b'(NIL NIL "Friends" NIL)' in envelope and b'"d" "example.org")(NIL NIL NIL NIL)' in envelope, envelope)
    untagged, answer = c.command(b"UID SEARCH CC Friends")
    check("SEARCH CC finds a group's name", uids and search_numbers(untagged) == uids[:1], (uids, untagged))

    # BINARY of a multipart (RFC 3516, RFC 9051 6.4.5): the content as stored, the same bytes
    # as BODY; no UNKNOWN-CTE, since a multipart has no encoding to undo.
    nested = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: binary\r\n"
              b"Message-ID: <binary@example.org>\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
              b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
              b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
              b"--inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--inner--\r\n"
              b"--outer\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"
              b"--outer--\r\n")
    c.append(box, nested)
    c.command(b"NOOP")
    untagged, _ = c.command(b"UID SEARCH HEADER Message-ID binary@example.org")
    uid = (search_numbers(untagged) or [b"0"])[0]

    def literal_of(command):
        tag = c.next_tag()
        c.send(tag + b" " + command + b"\r\n")
        data = b""
        status = b""
        while True:
            line = c.read_line()
            if line.startswith(tag + b" "):
                status = line[len(tag) + 1:]
                break
            if line.endswith(b"}"):
                size = int(line[line.rindex(b"{") + 1:-1])
                while len(c.buffer) < size:
                    c.buffer += c.sock.recv(65536)
                data, c.buffer = c.buffer[:size], c.buffer[size:]
        return status, data

    status, binary = literal_of(b"UID FETCH " + uid + b" (BINARY.PEEK[1])")
    _, body = literal_of(b"UID FETCH " + uid + b" (BODY.PEEK[1])")
    check("BINARY of a multipart section is its content as stored",
          status.startswith(b"OK") and binary == body and b"--inner" in binary, (status, binary[:80], body[:80]))
    status, decoded = literal_of(b"UID FETCH " + uid + b" (BINARY.PEEK[2])")
    check("BINARY of a base64 leaf is decoded", status.startswith(b"OK") and decoded == b"hello", (status, decoded))

    c.command(b"CLOSE")
    _, answer = c.command(b"DELETE " + box)
    check("DELETE the test mailbox", answer.startswith(b"OK"), answer)

    def login():
        client = Client(host, int(port), cafile)
        client.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        return client

    check_recent(login, box + b"-recent")
    check_subscriptions(login, box + b"-subs")
    check_modseq_after_other_store(login, box + b"-modseq")
    check_esearch_min_max(login, box + b"-esearch")
    c.command(b"LOGOUT")
    passed = sum(1 for r in results if r)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
