import CShims
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Descriptors and cross-process memory")
struct SystemTests {
    /// A memfd and two eventfds passed over a real SOCK_SEQPACKET pair to another process: it maps
    /// and writes the segment, reads one eventfd and writes the other; we see all three effects.
    @Test func scmRightsPassesUsableDescriptors() throws {
        var pair: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        let segment = try SharedSegment.create(name: "pass", size: 1 << 20)
        let fromPeer = try EventFD(), toPeer = try EventFD()
        _ = cshims_eventfd_write(toPeer.fd, 41)
        let peer = try PeerProcess.start(["fds"], descriptors: [pair[1]])
        try DescriptorPassing.send(pair[0], Array("segment".utf8), descriptors: [segment.fd, fromPeer.fd, toPeer.fd])
        let reply = try #require(try DescriptorPassing.receive(pair[0], maxBytes: 64))
        #expect(reply.bytes == Array("done".utf8))
        let (status, output) = try #require(peer.wait(timeout: PeerProcess.shortTimeout), "the peer did not finish within \(PeerProcess.shortTimeout) s")
        #expect(status == 0, "peer: \(output)")
        let fields = ChildProcess.fields(output)
        #expect(fields["message"] == "segment")
        #expect(fields["read"] == "41")
        #expect(fields["sealed"] == "true")
        #expect(fields["ftruncate-errno"] == "\(EPERM)")
        var value: UInt64 = 0
        #expect(cshims_eventfd_read(fromPeer.fd, &value) == 0 && value == 42)
        #expect(cshims_check_pattern(segment.base + 64, segment.size - 64, 7, 0) == segment.size - 64)
    }

    @Test func sealedSegmentRefusesResize() throws {
        let segment = try SharedSegment.create(name: "seal", size: 1 << 16)
        #expect(ftruncate(segment.fd, 1 << 12) != 0 && errno == EPERM)
        #expect(ftruncate(segment.fd, 1 << 20) != 0 && errno == EPERM)
        #expect(cshims_has_size_seals(segment.fd) != 0)
        // An unsealed memfd is refused by the mapping side.
        let raw = cshims_memfd_segment("unsealed", 1 << 16)
        #expect(throws: SharedError.self) { try SharedSegment(adopting: raw) }
    }

    /// A message longer than the receive buffer comes back flagged `truncated` with the part that fit,
    /// and the descriptor it carried is delivered (the receiver owns it: closing it and ours leaves no
    /// copy anywhere, so the pipe's read end sees the hang-up). Once the sender has closed, a receive
    /// throws instead of returning an empty message.
    @Test func truncatedMessageIsFlaggedAndItsDescriptorDelivered() throws {
        var pair: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        var sender: Int32? = pair[0]
        defer { if let sender { close(sender) }; close(pair[1]) }
        var pipeFDs: [Int32] = [0, 0]
        try #require(pipe2(&pipeFDs, O_CLOEXEC) == 0)
        defer { close(pipeFDs[0]) }
        try DescriptorPassing.send(pair[0], [UInt8](repeating: 1, count: 100), descriptors: [pipeFDs[1]])
        close(pipeFDs[1])
        let packet = try #require(try DescriptorPassing.receive(pair[1], maxBytes: 10))
        #expect(packet.truncated)
        #expect(packet.bytes == [UInt8](repeating: 1, count: 10))
        #expect(packet.descriptors.count == 1)
        packet.closeDescriptors()
        var pfd = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 5000) == 1 && pfd.revents & Int16(POLLHUP) != 0, "a copy of the pipe's write end is still open somewhere")
        close(pair[0])
        sender = nil
        #expect(throws: SharedError.self) { try DescriptorPassing.receive(pair[1], maxBytes: 10) }
    }

    /// process_vm_writev into a child's buffer and process_vm_readv back from it.
    @Test func processVMReadsAndWritesAChild() throws {
        let size = 1 << 20
        let peer = try PeerProcess.start(["vm-buffer", "\(size)"])
        let line = try #require(peer.readLine(timeout: PeerProcess.shortTimeout), "the peer printed nothing within \(PeerProcess.shortTimeout) s")
        let address = try #require(UInt64(ChildProcess.fields(line)["address"] ?? ""))
        let memory = ProcessMemory(pid: peer.pid)
        let local = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { local.deallocate() }
        // Read what the child wrote (pattern 1), split over two remote ranges.
        let half = size / 2
        let n = try memory.read([.init(address: address, length: half), .init(address: address + UInt64(half), length: size - half)], into: [local])
        #expect(n == size)
        #expect(cshims_check_pattern(local.baseAddress, size, 1, 0) == size)
        // Overwrite it with pattern 2.
        cshims_fill_pattern(local.baseAddress, size, 2, 0)
        #expect(try memory.write([UnsafeRawBufferPointer(local)], to: [.init(address: address, length: size)]) == size)
        // A bad address is a typed error, not a crash.
        #expect(throws: SharedError.self) { try memory.read([.init(address: 8, length: 8)], into: [local]) }
        peer.writeLine("check")
        let (status, output) = try #require(peer.wait(timeout: PeerProcess.shortTimeout), "the peer did not finish within \(PeerProcess.shortTimeout) s")
        #expect(status == 0)
        #expect(output.contains("rewritten=yes"), "peer: \(output)")
    }

    /// A process of another user may not read ours: the error says so by its code.
    @Test func processVMNotPermittedIsATypedError() throws {
        var target: UInt8 = 1
        let address = withUnsafeMutablePointer(to: &target) { UInt64(UInt(bitPattern: $0)) }
        // As root the peer drops to nobody and reads us; otherwise it reads init (pid 1, root).
        let pid = getuid() == 0 ? getpid() : 1
        let peer = try PeerProcess.start(["vm-denied", "\(pid)", "\(address)"])
        let (status, output) = try #require(peer.wait(timeout: PeerProcess.shortTimeout), "the peer did not finish within \(PeerProcess.shortTimeout) s")
        #expect(status == 0, "peer: \(output)")
        #expect(output.contains("result=not-permitted"), "peer: \(output)")
        withExtendedLifetime(target) {}
    }
}
