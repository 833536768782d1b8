// shm-peer: the second process of the SocketShared tests. Each mode plays one side of a shared-memory
// exchange with the test process, through descriptors the test passes as fds 3, 4, 5 (or over a
// SOCK_SEQPACKET socket), and prints one result line the test checks.
import CShims
import SocketShared
#if canImport(Glibc)
import Glibc
#endif


func fail(_ message: String) -> Never {
    print("error: \(message)")
    exit(2)
}

/// The fixed test channel geometry shared with the tests (see Tests/SocketSharedTests/PeerProcess.swift).
let channelOffset = 4096

struct Random {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Sleeps on `notifier` until `ready()` holds; counts wake-ups that never came (a timeout while work
/// was in fact ready).
func waitUntil(_ notifier: Notifier, lost: inout Int, _ ready: () throws -> Bool) throws {
    while true {
        if try ready() { return }
        notifier.acknowledge()
        if try ready() { return }
        if try !notifier.wait(timeoutMilliseconds: 3000) {
            if try ready() { lost += 1 } else { fail("no progress for 3 s") }
        }
    }
}

let args = CommandLine.arguments
guard args.count >= 2 else { fail("usage: shm-peer MODE ...") }

do {
    switch args[1] {
    case "stream-consume":
        // stream-consume TOTAL SEED CAPACITY: read TOTAL pattern bytes in random-sized pieces.
        let total = Int(args[2])!, seed = UInt64(args[3])!, capacity = Int(args[4])!
        let segment = try SharedSegment(adopting: 3)
        let layout = ChannelLayout(kind: .stream, receiveSize: capacity, sendSize: 0, slotBytes: 0)
        let channel = try ChannelView(segment: segment, offset: channelOffset, layout: layout)
        let ring = channel.streamConsumer(receive: true, capacity: capacity)
        let data = Notifier(state: channel.toApp, fd: 4)
        let space = Notifier(state: channel.toStack, fd: 5)
        var rng = Random(state: seed ^ 0xABCDEF)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity * 2, alignment: 64)
        var received = 0, hash = CSHIMS_FNV_OFFSET, lost = 0, wakeups = 0
        while received < total {
            try waitUntil(data, lost: &lost) { try ring.available() > 0 }
            let want = 1 + rng.below(rng.below(4) == 0 ? capacity * 2 : 4096)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(want, total - received)])
            // Half the time: peek first, and check the peek matches what the read then returns.
            let n: Int
            if rng.below(2) == 0 {
                let peeked = try ring.read(into: piece, peek: true)
                let h = cshims_fnv1a(piece.baseAddress, peeked, CSHIMS_FNV_OFFSET)
                n = try ring.read(into: UnsafeMutableRawBufferPointer(rebasing: piece[0..<peeked]))
                if n != peeked || cshims_fnv1a(piece.baseAddress, n, CSHIMS_FNV_OFFSET) != h { fail("peek differs from read") }
            } else {
                n = try ring.read(into: piece)
            }
            let bad = cshims_check_pattern(piece.baseAddress, n, seed, UInt64(received))
            if bad != n { fail("byte \(received + bad) differs from the pattern") }
            hash = cshims_fnv1a(piece.baseAddress, n, hash)
            received += n
            if space.notify() { wakeups += 1 }
            if rng.below(5000) == 0 { usleep(UInt32(rng.below(2000))) }
        }
        print("bytes=\(received) hash=\(hash) lost=\(lost) wakeups=\(wakeups)")

    case "notify-consume":
        // notify-consume COUNT: sequence numbers 0..<COUNT as 8-byte messages through a tiny ring.
        let count = UInt64(args[2])!
        let segment = try SharedSegment(adopting: 3)
        let layout = ChannelLayout(kind: .stream, receiveSize: 64, sendSize: 0, slotBytes: 0)
        let channel = try ChannelView(segment: segment, offset: channelOffset, layout: layout)
        let ring = channel.streamConsumer(receive: true, capacity: 64)
        let data = Notifier(state: channel.toApp, fd: 4)
        let space = Notifier(state: channel.toStack, fd: 5)
        var rng = Random(state: 99)
        var expected: UInt64 = 0, lost = 0, sleeps = 0
        var message: UInt64 = 0
        while expected < count {
            if try ring.available() < 8 {
                sleeps += 1
                try waitUntil(data, lost: &lost) { try ring.available() >= 8 }
            }
            while try ring.available() >= 8 {
                _ = try withUnsafeMutableBytes(of: &message) { try ring.read(into: $0) }
                if message != expected { fail("message \(message), expected \(expected)") }
                expected += 1
            }
            space.notify()
            if rng.below(1000) == 0 { usleep(UInt32(rng.below(300))) }
        }
        print("messages=\(expected) lost=\(lost) sleeps=\(sleeps)")

    case "bipartite-consume":
        // bipartite-consume DATAGRAMS SEED ITEMS SLOT: take each datagram (1+ items), verify its
        // pattern, write the checksum back into the first item, hand the items back.
        let total = Int(args[2])!, seed = UInt64(args[3])!, items = Int(args[4])!, slot = Int(args[5])!
        let segment = try SharedSegment(adopting: 3)
        let layout = ChannelLayout(kind: .datagram, receiveSize: items, sendSize: 1, slotBytes: slot)
        let channel = try ChannelView(segment: segment, offset: channelOffset, layout: layout)
        let ring = channel.datagramConsumer(receive: true, count: items)
        let data = Notifier(state: channel.toApp, fd: 4)
        let space = Notifier(state: channel.toStack, fd: 5)
        var rng = Random(state: seed ^ 0x5A5A)
        var done = 0, lost = 0, bytes = 0
        while done < total {
            try waitUntil(data, lost: &lost) { try ring.ready() > 0 }
            let first = ring.item(0)
            guard first.pointee.flags & UInt16(CSHIMS_ITEM_FIRST) != 0 else { fail("datagram does not start with a first item") }
            let parts = Int(first.pointee.count)
            guard parts >= 1, try ring.ready() >= parts else { fail("datagram of \(parts) items, \(try ring.ready()) ready") }
            var hash = CSHIMS_FNV_OFFSET, length = 0
            for k in 0..<parts {
                let item = ring.item(k)
                let p = try segment.pointer(at: Int(item.pointee.payload), length: Int(item.pointee.length))
                let bad = cshims_check_pattern(p, Int(item.pointee.length), seed &+ UInt64(done), UInt64(length))
                if bad != Int(item.pointee.length) { fail("datagram \(done) item \(k) byte \(bad) differs") }
                hash = cshims_fnv1a(p, Int(item.pointee.length), hash)
                length += Int(item.pointee.length)
                if (k == parts - 1) != (item.pointee.flags & UInt16(CSHIMS_ITEM_MORE) == 0) { fail("MORE flag wrong") }
            }
            guard length == Int(first.pointee.total) else { fail("length \(length) != total \(first.pointee.total)") }
            guard SocketAddress(first.pointee.address)?.port == UInt16(truncatingIfNeeded: done) else { fail("address") }
            // The round trip back: the consumer may rewrite items it owns before handing them back.
            first.pointee.payload = hash
            first.pointee.length = UInt32(length)
            if rng.below(50) == 0 { usleep(UInt32(rng.below(500))) }
            ring.handBack(parts)
            space.notify()
            done += 1
            bytes += length
        }
        print("datagrams=\(done) bytes=\(bytes) lost=\(lost) drops=\(ring.drops)")

    case "fds":
        // fds: receive a memfd and two eventfds over the SEQPACKET socket at fd 3; use each.
        guard let packet = try DescriptorPassing.receive(3, maxBytes: 64) else { fail("no packet") }
        guard packet.descriptors.count == 3 else { fail("got \(packet.descriptors.count) descriptors") }
        let segment = try SharedSegment(adopting: packet.descriptors[0])
        cshims_fill_pattern(segment.base + 64, segment.size - 64, 7, 0)
        var value: UInt64 = 0
        guard cshims_eventfd_read(packet.descriptors[2], &value) == 0 else { fail("eventfd read: \(Errno.current)") }
        guard cshims_eventfd_write(packet.descriptors[1], value + 1) == 0 else { fail("eventfd write") }
        let sealed = cshims_has_size_seals(segment.fd) != 0
        let truncateRefused = ftruncate(segment.fd, 4096) != 0 ? Errno.current.rawValue : 0
        try DescriptorPassing.send(3, Array("done".utf8))
        print("message=\(String(decoding: packet.bytes, as: UTF8.self)) read=\(value) sealed=\(sealed) ftruncate-errno=\(truncateRefused)")

    case "vm-buffer":
        // vm-buffer SIZE: hold a buffer holding pattern seed 1, print its address, wait for a line on
        // stdin, then say whether it now holds pattern seed 2.
        let size = Int(args[2])!
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        cshims_fill_pattern(buffer, size, 1, 0)
        print("address=\(UInt(bitPattern: buffer))")
        fflush(nil)
        _ = readLine()
        let bad = cshims_check_pattern(buffer, size, 2, 0)
        print(bad == size ? "rewritten=yes" : "rewritten=no at \(bad)")

    case "vm-denied":
        // vm-denied PID ADDRESS: as an unprivileged user, try to read another user's process.
        let pid = Int32(args[2])!, address = UInt64(args[3])!
        if getuid() == 0 {
            guard setgid(65534) == 0, setuid(65534) == 0 else { fail("cannot drop privileges: \(Errno.current)") }
        }
        var byte: UInt8 = 0
        do {
            _ = try withUnsafeMutableBytes(of: &byte) { try ProcessMemory(pid: pid).read([.init(address: address, length: 1)], into: [$0]) }
            print("result=allowed")
        } catch {
            print("result=\((error as? SharedError)?.code == .notPermitted ? "not-permitted" : "other") error=\(error)")
        }

    default:
        fail("unknown mode \(args[1])")
    }
} catch {
    fail("\(error)")
}
