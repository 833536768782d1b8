/// The kernel-side peers of the network tests: small Python programs run inside the test's
/// namespace, over the kernel's own sockets. Each bounds its own running time and prints one result
/// line ("ok ..." or "sha256=... bytes=...") or an "error: ..." line and exits 1.
enum KernelPeers {
    /// `tcp_echo_check.py HOST PORT CONNECTIONS BYTES TIMEOUT_S`: opens every connection first (so
    /// they are all open at once), then sends BYTES of a stream unique to each connection through
    /// all of them concurrently, half-closes each when sent, and checks that the echo is the same
    /// bytes followed by end of stream (the echo server passes the half-close on).
    static let tcpEchoCheck = #"""
    import random, selectors, socket, sys, time
    host, port, conns, nbytes, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    deadline = time.monotonic() + limit
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    def fail(message):
        print("error: " + message, flush=True)
        sys.exit(1)
    socks = []
    for i in range(conns):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(15)
        try:
            s.connect((host, port))
        except OSError as e:
            fail(f"connection {i}: connect: {e}")
        s.setblocking(False)
        socks.append(s)
    print(f"connected={len(socks)}", flush=True)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        st = {"i": i, "data": random.Random(i * 7919 + nbytes).randbytes(nbytes), "sent": 0, "recv": 0}
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
    done = 0
    while done < conns:
        if time.monotonic() > deadline:
            fail(f"timeout: {done} of {conns} connections done")
        for key, events in sel.select(timeout=1.0):
            s, st = key.fileobj, key.data
            try:
                if events & selectors.EVENT_WRITE and st["sent"] < nbytes:
                    try:
                        st["sent"] += s.send(st["data"][st["sent"]:st["sent"] + 65536])
                    except BlockingIOError:
                        pass
                    if st["sent"] == nbytes:
                        s.shutdown(socket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ, st)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(262144)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        if st["recv"] != nbytes:
                            fail(f"connection {st['i']}: end of stream after {st['recv']} of {nbytes} bytes")
                        sel.unregister(s)
                        s.close()
                        done += 1
                        continue
                    if chunk != st["data"][st["recv"]:st["recv"] + len(chunk)]:
                        fail(f"connection {st['i']}: echo differs from what was sent at offset {st['recv']}")
                    st["recv"] += len(chunk)
            except OSError as e:
                fail(f"connection {st['i']}: {e}")
    print(f"ok connections={conns} bytes={nbytes}", flush=True)
    """#

    /// `udp_echo_check.py HOST PORT COUNT`: sends COUNT datagrams of 4 to 1400 bytes (numbered,
    /// contents derived from the number), one at a time, and checks each echo byte for byte. Datagrams
    /// 1 to 3 are 4000, 8000 and 12000 bytes: the kernel fragments them, lwIP reassembles each into a
    /// pbuf chain (several receive items), and the echo leaves as a chain of send buffers that lwIP
    /// fragments again (at most 10 fragments: lwIP's IP_REASS_MAX_PBUFS).
    static let udpEchoCheck = #"""
    import random, socket, sys
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((host, port))
    total = 0
    for seq in range(count):
        size = 1400 if seq == 0 else (4000, 8000, 12000)[seq - 1] if seq <= 3 else 4 + (seq * 97) % 1397
        data = seq.to_bytes(4, "little") + random.Random(seq).randbytes(size - 4)
        s.send(data)
        try:
            echo = s.recv(65536)
        except socket.timeout:
            print(f"error: no echo of datagram {seq} ({size} bytes) within 3 s", flush=True)
            sys.exit(1)
        if echo != data:
            print(f"error: echo of datagram {seq} differs ({len(echo)} bytes back, {size} sent)", flush=True)
            sys.exit(1)
        total += size
    print(f"ok datagrams={count} bytes={total}", flush=True)
    """#

    /// `tcp_send.py HOST PORT FILE`: connects, sends FILE, half-closes, waits for the receiver's
    /// end of stream; prints the SHA-256 of what it sent.
    static let tcpSend = #"""
    import hashlib, socket, sys
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    digest, sent, extra = hashlib.sha256(), 0, 0
    s = socket.create_connection((host, port), timeout=30)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            s.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    while data := s.recv(65536):
        extra += len(data)
    s.close()
    print(f"sha256={digest.hexdigest()} bytes={sent} extra={extra}", flush=True)
    """#

    /// `tcp_recv.py ADDRESS PORT`: accepts one connection, reads to end of stream, closes; prints
    /// the SHA-256 and length of what it received.
    static let tcpReceive = #"""
    import hashlib, socket, sys
    address, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    print("listening", flush=True)
    listener.settimeout(30)
    c, peer = listener.accept()
    c.settimeout(30)
    digest, received = hashlib.sha256(), 0
    while data := c.recv(1 << 20):
        digest.update(data)
        received += len(data)
    c.close()
    print(f"sha256={digest.hexdigest()} bytes={received}", flush=True)
    """#

    /// `impair_relay.py TAP_A TAP_B LOSS REORDER CORRELATION DELAY_MS SEED LIFETIME_S`: moves Ethernet
    /// frames between two TAP devices, impairing both directions the way
    /// `tc qdisc add ... netem loss LOSS reorder REORDER CORRELATION delay DELAY_MS` does on one: each
    /// frame is lost with probability LOSS; a surviving frame goes out at once with probability
    /// REORDER (correlated with the previous decision by CORRELATION), overtaking the frames that
    /// wait DELAY_MS. A substitute for netem on kernels built without sch_netem. On SIGTERM prints
    /// per-direction counts: frames, dropped, sent at once while others waited (reordered).
    static let impairRelay = #"""
    import fcntl, heapq, os, random, select, signal, struct, sys, time
    TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
    def open_tap(name):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        return fd
    name_a, name_b = sys.argv[1], sys.argv[2]
    loss, reorder, correlation, delay = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]) / 1000
    seed, lifetime = int(sys.argv[7]), float(sys.argv[8])
    a, b = open_tap(name_a), open_tap(name_b)
    running = True
    def stop(signum, frame):
        global running
        running = False
    signal.signal(signal.SIGTERM, stop)
    class Direction:
        def __init__(self, name, out, seed):
            self.name, self.out, self.rng = name, out, random.Random(seed)
            self.last, self.queue, self.serial = 0.0, [], 0
            self.frames = self.dropped = self.reordered = self.overflow = 0
        def write(self, frame):
            try:
                os.write(self.out, frame)
            except (BlockingIOError, OSError):
                self.overflow += 1
        def push(self, frame, now):
            self.frames += 1
            if self.rng.random() < loss:
                self.dropped += 1
                return
            self.last = correlation * self.last + (1 - correlation) * self.rng.random()
            if self.last < reorder:
                if self.queue:
                    self.reordered += 1
                self.write(frame)
            else:
                self.serial += 1
                heapq.heappush(self.queue, (now + delay, self.serial, frame))
        def flush(self, now):
            while self.queue and self.queue[0][0] <= now:
                self.write(heapq.heappop(self.queue)[2])
    directions = {a: Direction("a_to_b", b, seed), b: Direction("b_to_a", a, seed + 1)}
    print("ready", flush=True)
    end = time.monotonic() + lifetime
    while running and time.monotonic() < end:
        now = time.monotonic()
        due = [d.queue[0][0] for d in directions.values() if d.queue]
        timeout = max(0.0, min(due) - now) if due else 0.2
        try:
            readable, _, _ = select.select([a, b], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            d = directions[fd]
            for _ in range(256):
                try:
                    frame = os.read(fd, 65600)
                except BlockingIOError:
                    break
                d.push(frame, now)
        for d in directions.values():
            d.flush(time.monotonic())
    for d in directions.values():
        print(f"{d.name}_frames={d.frames} {d.name}_dropped={d.dropped} {d.name}_reordered={d.reordered} {d.name}_overflow={d.overflow}", flush=True)
    """#
}
