import CShims
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Stream ring")
struct StreamRingTests {
    /// Random writes and reads (gathered, scattered, peeked) against a plain array as the model,
    /// on an odd capacity so the wrap point moves around.
    @Test func matchesModelUnderWrapAround() throws {
        let capacity = 97
        let layout = ChannelLayout(kind: .stream, receiveSize: capacity, sendSize: 0, slotBytes: 0)
        let segment = try SharedSegment.create(name: "ring", size: 1 << 16)
        let view = try ChannelView(segment: segment, offset: 4096, layout: layout)
        let producer = view.streamProducer(receive: true, capacity: capacity)
        let consumer = view.streamConsumer(receive: true, capacity: capacity)
        var model: [UInt8] = []
        var rng = TestRandom(state: 1)
        var next: UInt8 = 0
        var sawFull = false, sawPartial = false
        for _ in 0..<20_000 {
            if rng.below(2) == 0 {
                let sizes = (0..<(1 + rng.below(3))).map { _ in rng.below(60) }
                let chunks = sizes.map { n in (0..<n).map { _ in next &+= 1; return next } }
                let free = try producer.freeSpace()
                #expect(free == capacity - model.count)
                let written = try chunks.withUnsafeBufferPointers { try producer.write($0) }
                let all = chunks.flatMap { $0 }
                #expect(written == min(all.count, free))
                if written < all.count { sawPartial = true }
                next = next &- UInt8(truncatingIfNeeded: all.count - written)
                model += all[..<written]
                if try producer.freeSpace() == 0 { sawFull = true }
            } else {
                let want = rng.below(80)
                let peek = rng.below(3) == 0
                var a = [UInt8](repeating: 0, count: want / 2), b = [UInt8](repeating: 0, count: want - want / 2)
                let n = try a.withUnsafeMutableBytes { pa in
                    try b.withUnsafeMutableBytes { pb in try consumer.read(into: [pa, pb], peek: peek) }
                }
                #expect(n == min(want, model.count))
                #expect(Array((a + b)[..<n]) == Array(model[..<n]))
                if !peek { model.removeFirst(n) }
            }
            #expect(try consumer.available() == model.count)
        }
        #expect(sawFull && sawPartial)
    }

    @Test func rejectsImpossibleIndices() throws {
        let capacity = 64
        let layout = ChannelLayout(kind: .stream, receiveSize: capacity, sendSize: 0, slotBytes: 0)
        let segment = try SharedSegment.create(name: "ring", size: 1 << 16)
        let view = try ChannelView(segment: segment, offset: 4096, layout: layout)
        let producer = view.streamProducer(receive: true, capacity: capacity)
        let consumer = view.streamConsumer(receive: true, capacity: capacity)
        let header = view.base + view.layout.receiveRing
        // A consumer index beyond 2 x capacity.
        cshims_store_release_u32(header + Int(CSHIMS_STREAM_RING_TAIL), 1000)
        #expect(throws: SharedError.self) { try producer.freeSpace() }
        // A consumer index that claims more than capacity bytes are in the ring.
        cshims_store_release_u32(header + Int(CSHIMS_STREAM_RING_TAIL), 10)
        #expect(throws: SharedError.self) { try producer.writableRegions() }
        // A producer index out of range.
        cshims_store_release_u32(header + Int(CSHIMS_STREAM_RING_HEAD), 128)
        #expect(throws: SharedError.self) { try consumer.available() }
    }

    /// 256 MiB of pattern bytes from this process to the peer through a 64 KiB ring, random write
    /// sizes on this side, random read sizes (and peeks) on the other, each byte checked against the
    /// pattern there and the FNV-1a of the whole stream compared here.
    @Test func twoProcessesMove256MiB() throws {
        let total = 256 << 20, capacity = 64 << 10, seed: UInt64 = 42
        let channel = try TestChannel(layout: ChannelLayout(kind: .stream, receiveSize: capacity, sendSize: 0, slotBytes: 0))
        let peer = try PeerProcess.start(["stream-consume", "\(total)", "\(seed)", "\(capacity)"], descriptors: channel.descriptors)
        let ring = channel.view.streamProducer(receive: true, capacity: capacity)
        let wake = channel.peerNotifier, space = channel.ourNotifier
        var rng = TestRandom(state: 7)
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * capacity, alignment: 64)
        defer { source.deallocate() }
        var sent = 0, hash = CSHIMS_FNV_OFFSET
        while sent < total {
            let want = min(1 + rng.below(rng.below(4) == 0 ? 3 * capacity : 2048), total - sent)
            cshims_fill_pattern(source.baseAddress, want, seed, UInt64(sent))
            var offset = 0
            while offset < want {
                try waitUntil(space) { try ring.freeSpace() > 0 }
                // Split into two gathered pieces to exercise scatter/gather writes.
                let rest = want - offset, half = rest / 2
                let n = try ring.write([UnsafeRawBufferPointer(rebasing: source[offset..<(offset + half)]),
                                        UnsafeRawBufferPointer(rebasing: source[(offset + half)..<want])])
                hash = cshims_fnv1a(source.baseAddress! + offset, n, hash)
                offset += n
                wake.notify()
            }
            sent += want
        }
        let (status, output) = try #require(peer.wait(timeout: PeerProcess.timeout), "the peer did not finish within \(PeerProcess.timeout) s")
        #expect(status == 0, "peer: \(output)")
        let fields = ChildProcess.fields(output)
        #expect(fields["bytes"] == "\(total)")
        #expect(fields["hash"] == "\(hash)")
        #expect(fields["lost"] == "0")
    }
}

extension Array where Element == [UInt8] {
    func withUnsafeBufferPointers<R>(_ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        var pointers: [UnsafeRawBufferPointer] = []
        var storage: [UnsafeMutableRawBufferPointer] = []
        defer { storage.forEach { $0.deallocate() } }
        for chunk in self {
            let p = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(chunk.count, 1), alignment: 1)
            p.copyBytes(from: chunk)
            storage.append(p)
            pointers.append(UnsafeRawBufferPointer(rebasing: p[0..<chunk.count]))
        }
        return try body(pointers)
    }
}
