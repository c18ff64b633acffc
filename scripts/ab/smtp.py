"""Paired A/B of inbound SMTP between two running Sealpost servers: the harness's corpus
(seed 1, 500 messages) sent to user1@harness.test over 4 connections on port 25+base, plain
(inbound, no TLS), alternating which server goes first; wall time and server CPU."""
import os, sys, time, smtplib, threading, statistics, random
sys.path.insert(0, os.environ.get('SEALPOST_HARNESS_DIR', os.path.join(os.path.dirname(__file__), '../../../shared/harness')))
import hlib
servers = {}
for spec in sys.argv[2:]:
    name, port, pid = spec.split(':'); servers[name] = (int(port), int(pid))
rounds = int(sys.argv[1])
rng = random.Random(1)
sizes = hlib.message_sizes(rng, 500, 2 * 1024, 200 * 1024)
msgs = [hlib.make_message(rng, i, s, 'user1@harness.test', needle=None) for i, s in enumerate(sizes)]
msgs = [m if isinstance(m, bytes) else m.encode() for m in msgs]
tick = os.sysconf('SC_CLK_TCK')
def cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def batch(name):
    port, pid = servers[name]
    conns = [smtplib.SMTP('127.0.0.1', port, timeout=60) for _ in range(4)]
    for c in conns: c.ehlo('bench.example')
    c0, t0 = cpu(pid), time.perf_counter()
    def work(k):
        for i in range(k, len(msgs), 4):
            conns[k].sendmail('bench-sender@example.org', ['user1@harness.test'], msgs[i])
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
    for c in conns: c.quit()
    return wall, used
res = {n: [] for n in servers}; names = list(servers)
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        res[n].append(batch(n))
for n in names:
    w = [x[0] for x in res[n]]; c = [x[1] for x in res[n]]
    print(f'{n}: wall median {statistics.median(w):.3f} s ({min(w):.3f}-{max(w):.3f}); server cpu median {statistics.median(c):.3f} s ({min(c):.3f}-{max(c):.3f})')
a, b = names
rw = [res[b][i][0] / res[a][i][0] for i in range(rounds)]; rc = [res[b][i][1] / res[a][i][1] for i in range(rounds)]
print(f'{b}/{a} per round: wall median {statistics.median(rw):.3f} ({min(rw):.3f}-{max(rw):.3f}); cpu median {statistics.median(rc):.3f} ({min(rc):.3f}-{max(rc):.3f})')
