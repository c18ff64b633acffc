"""Paired A/B of IMAP APPEND between two running Sealpost servers: the same corpus (the
harness's generator, seed 1, 500 messages of 2-200 KiB) appended over 4 connections into a
fresh mailbox, alternating which server goes first each round; wall time and the server
process's CPU (utime+stime from /proc) per batch."""
import os, ssl, sys, time, imaplib, threading, statistics, random
sys.path.insert(0, os.environ.get('SEALPOST_HARNESS_DIR', os.path.join(os.path.dirname(__file__), '../../../shared/harness')))
import hlib

servers = {}  # name -> (port, pid)
for spec in sys.argv[2:]:
    name, port, pid = spec.split(':')
    servers[name] = (int(port), int(pid))
rounds = int(sys.argv[1]); tag = os.environ.get('TAG', 'ab')
rng = random.Random(1)
sizes = hlib.message_sizes(rng, 500, 2 * 1024, 200 * 1024)
msgs = [hlib.make_message(rng, i, s, 'user1@harness.test', needle=None) for i, s in enumerate(sizes)]
msgs = [m if isinstance(m, bytes) else m.encode() for m in msgs]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
tick = os.sysconf('SC_CLK_TCK')

def cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def batch(name, mailbox):
    port, pid = servers[name]
    conns = []
    for _ in range(4):
        c = imaplib.IMAP4_SSL('127.0.0.1', port, ssl_context=ctx)
        c.login('user1@harness.test', 'harness-pw')
        conns.append(c)
    conns[0].create(mailbox)
    c0, t0 = cpu(pid), time.perf_counter()
    def work(k):
        for i in range(k, len(msgs), 4):
            typ, dat = conns[k].append(mailbox, None, None, msgs[i])
            assert typ == 'OK', dat
    errors = []
    def guarded(k):
        try:
            work(k)
        except Exception as e:  # a refused message fails the run, not just its thread
            errors.append(f'connection {k}: {e!r}')
    ts = [threading.Thread(target=guarded, args=(k,)) for k in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    if errors:
        sys.exit(f'{name}: ' + '; '.join(errors))
    wall, used = time.perf_counter() - t0, cpu(pid) - c0
    for c in conns:
        c.logout()
    return wall, used

res = {n: [] for n in servers}
names = list(servers)
for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    for n in order:
        res[n].append(batch(n, f'{tag}{r}'))
for n in names:
    w = [x[0] for x in res[n]]; c = [x[1] for x in res[n]]
    print(f'{n}: wall median {statistics.median(w):.3f} s ({min(w):.3f}-{max(w):.3f}); server cpu median {statistics.median(c):.3f} s ({min(c):.3f}-{max(c):.3f})')
a, b = names
ratios_w = [res[b][i][0] / res[a][i][0] for i in range(rounds)]
ratios_c = [res[b][i][1] / res[a][i][1] for i in range(rounds)]
print(f'{b}/{a} per round: wall median {statistics.median(ratios_w):.3f} ({min(ratios_w):.3f}-{max(ratios_w):.3f}); cpu median {statistics.median(ratios_c):.3f} ({min(ratios_c):.3f}-{max(ratios_c):.3f})')
