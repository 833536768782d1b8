"""stat_states.py PORT — run under the preload library: puts sockets of known states on the stack
for socket-stat to report, prints "ready" and waits until its standard input closes.

  PORT     a listener (backlog 4) with two connections nobody accepted
  PORT+1   a listener with one accepted connection: 1,000 bytes sent to the accepted end, unread
  PORT+2   a listener with one accepted connection half closed: the client shut down writing
  PORT+3   a UDP socket holding 3 unread datagrams of 100 bytes
  PORT+4   a UDP socket sent 100 datagrams it never reads (more than its receive ring holds)
"""
import socket, sys, time

port = int(sys.argv[1])
lo = "127.0.0.1"

def listener(p, backlog=8):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((lo, p))
    l.listen(backlog)
    return l

pending = listener(port, 4)
waiting = [socket.create_connection((lo, port)) for _ in range(2)]

l1 = listener(port + 1)
a = socket.create_connection((lo, port + 1))
b, _ = l1.accept()
a.sendall(b"x" * 1000)

l2 = listener(port + 2)
c = socket.create_connection((lo, port + 2))
d, _ = l2.accept()
c.shutdown(socket.SHUT_WR)

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((lo, port + 3))
w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
w.bind((lo, port + 4))
v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    v.sendto(b"d" * 100, (lo, port + 3))
for _ in range(100):
    v.sendto(b"e" * 10, (lo, port + 4))

time.sleep(0.5)  # (the stack delivers; the FIN reaches d)
print("ready", flush=True)
sys.stdin.read()
