#!/usr/bin/env bash
# mbsync (isync) against a running Sealpost over implicit TLS: pull an account into an empty
# Maildir, change it locally (new message, a flag, a deletion), push back, and compare counts
# and flags on the server. Exits 0 and prints "mbsync roundtrip passed" when all holds.
#   mbsync_roundtrip.sh HOST IMAPS_PORT CAFILE USER PASSWORD
set -euo pipefail
host=$1 port=$2 cafile=$3 user=$4 password=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
imap() {  # imap PYTHON-STATEMENTS: runs them with M logged in
  python3 - "$host" "$port" "$cafile" "$user" "$password" "$1" <<'PY'
import imaplib, ssl, sys
host, port, cafile, user, password, code = sys.argv[1:]
M = imaplib.IMAP4_SSL(host, int(port), ssl_context=ssl.create_default_context(cafile=cafile))
M.login(user, password)
exec(code)
M.logout()
PY
}
before=$(imap '
typ, data = M.select("INBOX")
print(int(data[0]))
')
imap '
M.create("Projects")
for i in range(5):
    M.append("INBOX", None, None, b"Subject: inbox %d\r\nMessage-ID: <i%d@x>\r\n\r\nbody %d\r\n" % (i, i, i))
for i in range(2):
    M.append("Projects", None, None, b"Subject: project %d\r\n\r\nproject body %d\r\n" % (i, i))
'
mkdir -p "$work/mail"
cat > "$work/mbsyncrc" <<CFG
IMAPAccount sealpost
Host $host
Port $port
User $user
Pass $password
SSLType IMAPS
CertificateFile $cafile

IMAPStore remote
Account sealpost

MaildirStore local
Path $work/mail/
Inbox $work/mail/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns INBOX Projects
Create Both
Expunge Both
SyncState *
CFG
count() { find "$work/mail/$1/cur" "$work/mail/$1/new" -type f | wc -l; }
fail() { echo "FAILED: $*"; exit 1; }

mbsync -c "$work/mbsyncrc" -a >"$work/sync1.log" 2>&1 || fail "first sync: $(tail -3 "$work/sync1.log")"
inbox=$((before + 5))
[ "$(count INBOX)" = "$inbox" ] || fail "INBOX has $(count INBOX) messages locally, not $inbox"
[ "$(count Projects)" = 2 ] || fail "Projects has $(count Projects) messages locally, not 2"
grep -rq "project body 1" "$work/mail/Projects" || fail "message content did not arrive"

printf 'Subject: local\r\nMessage-ID: <local@x>\r\n\r\nwritten locally\r\n' > "$work/mail/INBOX/new/$(date +%s).local1.host"
# Flag one message (move it to cur/ with the F flag, as a mail client does) and delete another.
first=$(find "$work/mail/INBOX/cur" "$work/mail/INBOX/new" -type f -not -name '*local1*' | sort | head -1)
[ -n "$first" ] || fail "no message to flag"
base=$(basename "${first%%:2,*}")
mv "$first" "$work/mail/INBOX/cur/$base:2,F"
second=$(find "$work/mail/INBOX/cur" "$work/mail/INBOX/new" -type f -not -name '*:2,F' -not -name '*local1*' | sort | head -1)
[ -n "$second" ] || fail "no message to delete"
rm "$second"
mbsync -c "$work/mbsyncrc" -a >"$work/sync2.log" 2>&1 || fail "second sync: $(tail -3 "$work/sync2.log")"

result=$(imap '
M.select("INBOX")
typ, all_ = M.search(None, "ALL")
typ, flagged = M.search(None, "FLAGGED")
typ, local = M.search(None, "SUBJECT", "local")
print(len(all_[0].split()), len(flagged[0].split()), len(local[0].split()))
')
[ "$result" = "$inbox 1 1" ] || fail "server INBOX (messages, flagged, the local one) is '$result', not '$inbox 1 1'"
mbsync -c "$work/mbsyncrc" -a >"$work/sync3.log" 2>&1 || fail "third sync: $(tail -3 "$work/sync3.log")"
[ "$(count INBOX)" = "$inbox" ] || fail "after an idempotent sync INBOX has $(count INBOX), not $inbox"
echo "mbsync roundtrip passed"
