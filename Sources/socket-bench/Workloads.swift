import CShims
import Histogram
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The measured figures of one run of one workload, by name.
typealias Figures = [(String, Double)]

func now() -> UInt64 { monotonicNanoseconds() }

func percentiles(_ h: Histogram<UInt64>, prefix: String) -> Figures {
    [("\(prefix)p50_us", Double(h.valueAtPercentile(50)) / 1000),
     ("\(prefix)p99_us", Double(h.valueAtPercentile(99)) / 1000),
     ("\(prefix)p99.9_us", Double(h.valueAtPercentile(99.9)) / 1000)]
}

enum Workloads {
    /// UDP ping-pong: half round trip of `size`-byte datagrams.
    static func udpPingPong(_ api: SocketCalls, count: Int, size: Int) -> Figures {
        let (server, port) = api.boundSocket(Int32(SOCK_DGRAM.rawValue))
        let warmup = min(1000, count / 10)
        let echo = Worker {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            var from = sockaddr_storage()
            api.setTimeout(server, receiveMilliseconds: 2000)
            for _ in 0..<(count + warmup) {
                var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let n = withUnsafeMutablePointer(to: &from) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        buffer.withUnsafeMutableBytes { api.recvfrom(server, $0.baseAddress, $0.count, sa, &len) }
                    }
                }
                if n < 0 { break }
                _ = withUnsafePointer(to: &from) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        buffer.withUnsafeBytes { api.sendto(server, $0.baseAddress, n, sa, len) }
                    }
                }
            }
        }
        let client = api.check("socket", api.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0))
        _ = api.check("connect", api.connect(client, port: port))
        api.setTimeout(client, receiveMilliseconds: 1000)
        var h = Histogram<UInt64>(highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
        var out = [UInt8](repeating: 7, count: size), incoming = [UInt8](repeating: 0, count: 65_536)
        var lost = 0
        for i in 0..<(count + warmup) {
            let t0 = now()
            _ = out.withUnsafeBytes { api.send(client, $0.baseAddress, size, 0) }
            let n = incoming.withUnsafeMutableBytes { api.recv(client, $0.baseAddress, $0.count, 0) }
            let t1 = now()
            if n != size { lost += 1; continue }
            if i >= warmup { _ = h.record((t1 - t0) / 2) }
        }
        echo.join()
        _ = api.close(client)
        _ = api.close(server)
        return percentiles(h, prefix: "half_rtt_") + [("lost", Double(lost))]
    }

    /// TCP ping-pong (TCP_NODELAY on both ends): half round trip of `size`-byte messages.
    static func tcpPingPong(_ api: SocketCalls, count: Int, size: Int) -> Figures {
        let (listener, port) = api.boundSocket(Int32(SOCK_STREAM.rawValue))
        _ = api.check("listen", api.listen(listener, 16))
        let warmup = min(1000, count / 10)
        let echo = Worker {
            let fd = api.check("accept", api.accept(listener))
            api.setInt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            var buffer = [UInt8](repeating: 0, count: size)
            for _ in 0..<(count + warmup) {
                guard buffer.withUnsafeMutableBytes({ api.recvAll(fd, $0.baseAddress!, size) }) else { break }
                guard buffer.withUnsafeBytes({ api.sendAll(fd, $0.baseAddress!, size) }) else { break }
            }
            _ = api.close(fd)
        }
        let client = api.check("socket", api.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
        _ = api.check("connect", api.connect(client, port: port))
        api.setInt(client, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        var h = Histogram<UInt64>(highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
        var buffer = [UInt8](repeating: 5, count: size)
        for i in 0..<(count + warmup) {
            let t0 = now()
            guard buffer.withUnsafeBytes({ api.sendAll(client, $0.baseAddress!, size) }),
                  buffer.withUnsafeMutableBytes({ api.recvAll(client, $0.baseAddress!, size) })
            else { fatal("\(api.name) tcp ping-pong: connection lost") }
            if i >= warmup { _ = h.record((now() - t0) / 2) }
        }
        echo.join()
        _ = api.close(client)
        _ = api.close(listener)
        return percentiles(h, prefix: "half_rtt_")
    }

    /// TCP bulk transfer over `connections` connections at once: MB/s at the receivers.
    static func tcpStream(_ api: SocketCalls, connections: Int, bytes: Int) -> Figures {
        let (listener, port) = api.boundSocket(Int32(SOCK_STREAM.rawValue))
        _ = api.check("listen", api.listen(listener, 1024))
        let received = Atomic<Int>(0)
        let start = now()
        let readers = Worker {
            var workers: [Worker] = []
            for _ in 0..<connections {
                let fd = api.check("accept", api.accept(listener))
                workers.append(Worker {
                    var buffer = [UInt8](repeating: 0, count: 256 << 10)
                    var total = 0
                    while true {
                        let n = buffer.withUnsafeMutableBytes { api.recv(fd, $0.baseAddress, $0.count, 0) }
                        if n <= 0 { break }
                        total += n
                    }
                    received.add(total, ordering: .relaxed)
                    _ = api.close(fd)
                })
            }
            workers.forEach { $0.join() }
        }
        var writers: [Worker] = []
        for _ in 0..<connections {
            writers.append(Worker {
                let fd = api.check("socket", api.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
                _ = api.check("connect", api.connect(fd, port: port))
                let chunk = [UInt8](repeating: 0x5A, count: 64 << 10)
                var sent = 0
                while sent < bytes {
                    let n = min(chunk.count, bytes - sent)
                    guard chunk.withUnsafeBytes({ api.sendAll(fd, $0.baseAddress!, n) }) else { fatal("\(api.name) stream: send failed") }
                    sent += n
                }
                _ = api.close(fd)
            })
        }
        writers.forEach { $0.join() }
        readers.join()
        let seconds = Double(now() - start) / 1e9
        _ = api.close(listener)
        let total = received.load(ordering: .relaxed)
        if total != bytes * connections { fatal("\(api.name) stream: received \(total) of \(bytes * connections) bytes") }
        return [("throughput_MBps", Double(total) / 1e6 / seconds)]
    }

    /// UDP message rate: one sender blasting `count` datagrams of `size` bytes; datagrams per second
    /// at the receiver, and how many never arrived.
    static func udpRate(_ api: SocketCalls, count: Int, size: Int) -> Figures {
        let (server, port) = api.boundSocket(Int32(SOCK_DGRAM.rawValue))
        let senderDone = Atomic<Bool>(false)
        let result = Mutex<(received: Int, first: UInt64, last: UInt64)>((0, 0, 0))
        let receiver = Worker {
            api.setTimeout(server, receiveMilliseconds: 200)
            var buffer = [UInt8](repeating: 0, count: 2048)
            var received = 0, first: UInt64 = 0, last: UInt64 = 0
            while received < count {
                let n = buffer.withUnsafeMutableBytes { api.recv(server, $0.baseAddress, $0.count, 0) }
                if n < 0 {
                    if senderDone.load(ordering: .acquiring) { break }
                    continue
                }
                last = now()
                if received == 0 { first = last }
                received += 1
            }
            result.withLock { $0 = (received, first, last) }
        }
        let client = api.check("socket", api.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0))
        _ = api.check("connect", api.connect(client, port: port))
        let payload = [UInt8](repeating: 1, count: size)
        let start = now()
        for _ in 0..<count { _ = payload.withUnsafeBytes { api.send(client, $0.baseAddress, size, 0) } }
        let sendSeconds = Double(now() - start) / 1e9
        senderDone.store(true, ordering: .releasing)
        receiver.join()
        _ = api.close(client)
        _ = api.close(server)
        let (received, first, last) = result.withLock { $0 }
        let seconds = max(Double(last - first) / 1e9, 1e-9)
        return [("received_per_s", Double(received) / seconds), ("sent_per_s", Double(count) / sendSeconds),
                ("loss_pct", Double(count - received) * 100 / Double(count))]
    }

    /// TCP connection rate: connect + accept + close, one after the other.
    static func tcpConnectRate(_ api: SocketCalls, count: Int) -> Figures {
        let (listener, port) = api.boundSocket(Int32(SOCK_STREAM.rawValue))
        _ = api.check("listen", api.listen(listener, 1024))
        let acceptor = Worker {
            for _ in 0..<count {
                let fd = api.accept(listener)
                if fd < 0 { break }
                _ = api.close(fd)
            }
        }
        var byte: UInt8 = 0
        let start = now()
        for _ in 0..<count {
            let fd = api.check("socket", api.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
            _ = api.check("connect", api.connect(fd, port: port))
            _ = api.recv(fd, &byte, 1, 0) // EOF: the server accepted and closed
            _ = api.close(fd)
        }
        let seconds = Double(now() - start) / 1e9
        acceptor.join()
        _ = api.close(listener)
        return [("connections_per_s", Double(count) / seconds)]
    }

    /// Fan-out: one server thread sends `bytes` to each of `clients` connections at once; every
    /// client verifies its stream. Aggregate MB/s.
    static func fanOut(_ api: SocketCalls, clients: Int, bytes: Int) -> Figures {
        let (listener, port) = api.boundSocket(Int32(SOCK_STREAM.rawValue))
        _ = api.check("listen", api.listen(listener, 4096))
        let sender = Worker {
            var fds: [Int32] = []
            for _ in 0..<clients { fds.append(api.check("accept", api.accept(listener))) }
            for fd in fds { _ = api.setNonBlocking(fd) }
            var sent = [Int](repeating: 0, count: clients)
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            var open = clients
            while open > 0 {
                var pfds = fds.enumerated().filter { sent[$0.offset] < bytes }.map { pollfd(fd: $0.element, events: Int16(POLLOUT), revents: 0) }
                _ = poll(&pfds, nfds_t(pfds.count), 1000)
                for pfd in pfds where pfd.revents != 0 {
                    let i = fds.firstIndex(of: pfd.fd)!
                    let n = min(chunk.count, bytes - sent[i])
                    cshims_fill_pattern(&chunk, n, UInt64(i), UInt64(sent[i]))
                    let w = chunk.withUnsafeBytes { api.send(pfd.fd, $0.baseAddress, n, 0) }
                    if w > 0 { sent[i] += w }
                    if sent[i] == bytes { open -= 1 }
                }
            }
            for fd in fds { _ = api.close(fd) }
        }
        var fds: [Int32] = []
        for _ in 0..<clients {
            let fd = api.check("socket", api.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
            _ = api.check("connect", api.connect(fd, port: port))
            fds.append(fd)
        }
        let start = now()
        for fd in fds { _ = api.setNonBlocking(fd) }
        // The accept order matches the connect order on both stacks (one listener, sequential).
        var received = [Int](repeating: 0, count: clients)
        var corrupt = 0, done = 0
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        while done < clients {
            var pfds = fds.enumerated().filter { received[$0.offset] < bytes }.map { pollfd(fd: $0.element, events: Int16(POLLIN), revents: 0) }
            _ = poll(&pfds, nfds_t(pfds.count), 1000)
            for pfd in pfds where pfd.revents != 0 {
                let i = fds.firstIndex(of: pfd.fd)!
                while received[i] < bytes {
                    let n = buffer.withUnsafeMutableBytes { api.recv(pfd.fd, $0.baseAddress, $0.count, 0) }
                    if n <= 0 {
                        if n == 0 { fatal("\(api.name) fan-out: early EOF") }
                        break
                    }
                    if cshims_check_pattern(buffer, n, UInt64(i), UInt64(received[i])) != n { corrupt += 1 }
                    received[i] += n
                    if received[i] == bytes { done += 1 }
                }
            }
        }
        let seconds = Double(now() - start) / 1e9
        sender.join()
        for fd in fds { _ = api.close(fd) }
        _ = api.close(listener)
        if corrupt > 0 { fatal("\(api.name) fan-out: \(corrupt) corrupted reads") }
        return [("aggregate_MBps", Double(bytes * clients) / 1e6 / seconds), ("verified_clients", Double(clients))]
    }
}
