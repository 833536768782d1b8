"""fork_lifetimes.py PORT PORT2 — how long a socket shared across fork lives, on whatever sockets Python
gets (the kernel's, or the stack's under the preload library). Exit 0 when all of it holds:

1. daemon: a process listens, forks and exits at once; its child keeps the listener and serves
   three connections (the listener outlives the process that made it);
2. a child that exits without touching what it inherited: the parent's close then sends EOF;
3. a child that sleeps 1 s holding a connection the parent closed: EOF comes only when it exits;
4. a child that closes its copy: the parent's copy keeps working.
"""
import os, socket, sys, time

port, port2 = int(sys.argv[1]), int(sys.argv[2])
__import__("signal").alarm(30)  # never outlive a test that gave up on us
results = []

def check(name, ok, detail=""):
    results.append(ok)
    print(f"{name}: {'ok' if ok else 'FAILED'} {detail}", flush=True)

def listener(p):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", p))
    l.listen()
    return l

# 1. The daemon pattern, in a process of its own that inherits nothing.
starter = os.fork()
if starter == 0:
    l = listener(port)
    if os.fork():
        os._exit(0)
    time.sleep(0.3)  # the parent is gone by now
    for _ in range(3):
        c, _ = l.accept()
        c.sendall(c.recv(100).upper())
        c.close()
    os._exit(0)
os.waitpid(starter, 0)
answers = []
for i in range(3):
    for attempt in range(200):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except ConnectionRefusedError:
            time.sleep(0.02)
    c.sendall(b"hello %d" % i)
    answers.append((c.recv(100), c.recv(100)))
    c.close()
check("daemon", answers == [(b"HELLO %d" % i, b"") for i in range(3)], str(answers))

l = listener(port2)
# 2. A child that exits at once.
a = socket.create_connection(("127.0.0.1", port2)); b, _ = l.accept()
pid = os.fork()
if pid == 0:
    os._exit(0)
b.sendall(b"data"); b.close()
a.settimeout(5)
got = a.recv(10); eof = a.recv(10)
os.waitpid(pid, 0)
check("child exits untouched", (got, eof) == (b"data", b""), str((got, eof)))

# 3. A child that holds the connection for a second.
c = socket.create_connection(("127.0.0.1", port2)); d, _ = l.accept()
pid = os.fork()
if pid == 0:
    time.sleep(1)
    os._exit(0)
d.close()
c.settimeout(5)
t = time.monotonic(); eof = c.recv(10); waited = time.monotonic() - t
os.waitpid(pid, 0)
check("child holds it", eof == b"" and waited > 0.5, f"EOF after {waited:.1f} s")

# 4. A child that closes its copy: the parent's still works, both ways.
e = socket.create_connection(("127.0.0.1", port2)); f, _ = l.accept()
pid = os.fork()
if pid == 0:
    f.close(); l.close()
    os._exit(0)
os.waitpid(pid, 0)
f.sendall(b"ping"); e.settimeout(5)
ping = e.recv(10)
e.sendall(b"pong"); f.settimeout(5)
pong = f.recv(10)
check("child closes its copy", (ping, pong) == (b"ping", b"pong"), str((ping, pong)))
sys.exit(0 if all(results) else 1)
