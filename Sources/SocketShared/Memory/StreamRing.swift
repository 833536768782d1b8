import CShims

/// Geometry of a single-producer single-consumer byte ring in shared memory.
///
/// The header (`cshims_stream_ring`) holds the producer index `head` and the consumer index `tail`
/// on separate cache lines. Both run modulo 2 x capacity: `head - tail` (mod 2C) is the number of
/// bytes in the ring, from 0 (empty) to C (full), so no byte is wasted to tell the two apart.
/// Each side keeps its own index privately and only publishes it; the peer's index is read with
/// acquire ordering and validated before use against this side's private record of it: it may only
/// move forward, and never past this side's own index (the consumer never past the producer, the
/// producer never more than a capacity ahead). A peer that scribbles on the header (moves an index
/// back by one byte, say) can therefore only make this side report corruption, never make it count
/// bytes twice, read or write outside the ring, or compute a negative length.
public struct StreamRingGeometry: Sendable, Equatable {
    public let capacity: UInt32

    public init(capacity: UInt32) {
        precondition(capacity > 0 && capacity <= UInt32.max / 4, "ring capacity out of range")
        self.capacity = capacity
    }

    @inline(__always) var modulus: UInt32 { capacity &* 2 }

    /// Bytes between `tail` and `head`, or nil when the pair is impossible.
    @inline(__always) func used(head: UInt32, tail: UInt32) -> UInt32? {
        guard head < modulus, tail < modulus else { return nil }
        let used = head >= tail ? head - tail : head &+ modulus &- tail
        return used <= capacity ? used : nil
    }

    @inline(__always) func advance(_ index: UInt32, by n: UInt32) -> UInt32 {
        let next = index &+ n
        return next >= modulus ? next &- modulus : next
    }

    @inline(__always) func position(_ index: UInt32) -> Int {
        Int(index >= capacity ? index &- capacity : index)
    }
}

/// The producer end of a stream ring: writes bytes and publishes them with release ordering.
public final class StreamRingProducer {
    public let geometry: StreamRingGeometry
    private let header: UnsafeMutableRawPointer
    private let data: UnsafeMutableRawPointer
    private var head: UInt32
    /// The consumer's index as last read and validated: free space computed from it is a lower
    /// bound, so a write that fits needs no load of the consumer's cache line. The consumer may only
    /// move it forward.
    private var cachedTail: UInt32

    /// - Parameters:
    ///   - header: a `cshims_stream_ring` in shared memory.
    ///   - data: `geometry.capacity` bytes of shared memory.
    /// Starts from the published head (0 in a fresh channel).
    public init(header: UnsafeMutableRawPointer, data: UnsafeMutableRawPointer, geometry: StreamRingGeometry) {
        self.header = header
        self.data = data
        self.geometry = geometry
        var h = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_HEAD))
        if h >= geometry.modulus { h = 0 }
        self.head = h
        self.cachedTail = h
    }

    /// Bytes that can be written now.
    /// - Throws: `.corruptSharedState` if the consumer's index is impossible.
    public func freeSpace() throws(SharedError) -> Int {
        let tail = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_TAIL))
        // Forward from the last value we saw, and not past our head: [cachedTail, head].
        guard let advanced = geometry.used(head: tail, tail: cachedTail),
              let outstanding = geometry.used(head: head, tail: cachedTail), advanced <= outstanding
        else {
            throw SharedError(.corruptSharedState, "stream ring consumer index \(tail) (expected \(cachedTail)...\(head))")
        }
        cachedTail = tail
        return Int(geometry.capacity - (outstanding - advanced))
    }

    /// Free space from the shared indices alone, without touching this side's private state: safe
    /// from a thread that does not own the producer (readiness checks). 0 if the indices are corrupt.
    public func sharedFreeSpace() -> Int {
        let h = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_HEAD))
        let t = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_TAIL))
        return geometry.used(head: h, tail: t).map { Int(geometry.capacity - $0) } ?? 0
    }

    /// The free space as up to two contiguous regions; write into them, then `commit`.
    public func writableRegions() throws(SharedError) -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        try regions(free: freeSpace())
    }

    private func regions(free: Int) -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        let start = geometry.position(head)
        let first = min(free, Int(geometry.capacity) - start)
        return (UnsafeMutableRawBufferPointer(start: data + start, count: first),
                UnsafeMutableRawBufferPointer(start: data, count: free - first))
    }

    /// Publishes `count` bytes written into the regions from `writableRegions()`.
    public func commit(_ count: Int) {
        precondition(count >= 0 && count <= Int(geometry.capacity))
        guard count > 0 else { return }
        head = geometry.advance(head, by: UInt32(count))
        cshims_store_release_u32(header + Int(CSHIMS_STREAM_RING_HEAD), head)
    }

    /// Copies as much of `buffers` (in order) as fits, and publishes it.
    /// - Returns: bytes written; less than the total when the ring is nearly full.
    @discardableResult
    public func write(_ buffers: [UnsafeRawBufferPointer]) throws(SharedError) -> Int {
        let wanted = buffers.reduce(0) { $0 + $1.count }
        // The cached consumer index can only make the free space look smaller than it is.
        var free = geometry.used(head: head, tail: cachedTail).map { Int(geometry.capacity - $0) } ?? 0
        if free < wanted { free = try freeSpace() }
        var (r1, r2) = regions(free: free)
        var written = 0
        outer: for buffer in buffers where buffer.count > 0 {
            var src = buffer.baseAddress!
            var left = buffer.count
            while left > 0 {
                if r1.isEmpty { swap(&r1, &r2) }
                if r1.isEmpty { break outer }
                let n = min(left, r1.count)
                r1.baseAddress!.copyMemory(from: src, byteCount: n)
                r1 = UnsafeMutableRawBufferPointer(rebasing: r1[n...])
                src += n
                left -= n
                written += n
            }
        }
        commit(written)
        return written
    }

    @discardableResult
    public func write(_ buffer: UnsafeRawBufferPointer) throws(SharedError) -> Int {
        try write([buffer])
    }
}

/// The consumer end of a stream ring: reads or peeks bytes and releases space with release ordering.
public final class StreamRingConsumer {
    public let geometry: StreamRingGeometry
    private let header: UnsafeMutableRawPointer
    private let data: UnsafeMutableRawPointer
    private var tail: UInt32
    /// The producer's index as last read and validated (a lower bound of what is ready; see the
    /// producer's). The producer may only move it forward.
    private var cachedHead: UInt32

    public init(header: UnsafeMutableRawPointer, data: UnsafeMutableRawPointer, geometry: StreamRingGeometry) {
        self.header = header
        self.data = data
        self.geometry = geometry
        var t = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_TAIL))
        if t >= geometry.modulus { t = 0 }
        self.tail = t
        self.cachedHead = t
    }

    /// Bytes ready to read.
    /// - Throws: `.corruptSharedState` if the producer's index is impossible.
    public func available() throws(SharedError) -> Int {
        let head = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_HEAD))
        // At most a capacity ahead of our tail, and not behind the last value we saw.
        guard let used = geometry.used(head: head, tail: tail),
              let before = geometry.used(head: cachedHead, tail: tail), used >= before
        else {
            throw SharedError(.corruptSharedState, "stream ring producer index \(head) (expected \(cachedHead) or later)")
        }
        cachedHead = head
        return Int(used)
    }

    /// Ready bytes from the shared indices alone (see `StreamRingProducer.sharedFreeSpace`).
    public func sharedAvailable() -> Int {
        let h = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_HEAD))
        let t = cshims_load_acquire_u32(header + Int(CSHIMS_STREAM_RING_TAIL))
        return geometry.used(head: h, tail: t).map { Int($0) } ?? 0
    }

    /// The readable bytes from `offset` on, as up to two contiguous regions; read them, then `consume`.
    public func readableRegions(from offset: Int = 0) throws(SharedError) -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer) {
        try regions(ready: available(), from: offset)
    }

    private func regions(ready: Int, from offset: Int) -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer) {
        guard offset < ready else {
            return (UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(start: nil, count: 0))
        }
        let count = ready - offset
        let start = geometry.position(geometry.advance(tail, by: UInt32(offset)))
        let first = min(count, Int(geometry.capacity) - start)
        return (UnsafeRawBufferPointer(start: data + start, count: first),
                UnsafeRawBufferPointer(start: data, count: count - first))
    }

    /// Releases `count` bytes to the producer.
    public func consume(_ count: Int) {
        precondition(count >= 0 && count <= Int(geometry.capacity))
        guard count > 0 else { return }
        tail = geometry.advance(tail, by: UInt32(count))
        cshims_store_release_u32(header + Int(CSHIMS_STREAM_RING_TAIL), tail)
    }

    /// Copies up to the buffers' total size into `buffers` (in order), skipping `offset` ready bytes.
    /// With `peek` the bytes stay in the ring.
    /// - Returns: bytes copied.
    @discardableResult
    public func read(into buffers: [UnsafeMutableRawBufferPointer], offset: Int = 0, peek: Bool = false) throws(SharedError) -> Int {
        let wanted = offset + buffers.reduce(0) { $0 + $1.count }
        var ready = geometry.used(head: cachedHead, tail: tail).map { Int($0) } ?? 0
        if ready < wanted { ready = try available() }
        var (r1, r2) = regions(ready: ready, from: offset)
        var copied = 0
        outer: for buffer in buffers where buffer.count > 0 {
            var dst = buffer.baseAddress!
            var left = buffer.count
            while left > 0 {
                if r1.isEmpty { swap(&r1, &r2) }
                if r1.isEmpty { break outer }
                let n = min(left, r1.count)
                dst.copyMemory(from: r1.baseAddress!, byteCount: n)
                r1 = UnsafeRawBufferPointer(rebasing: r1[n...])
                dst += n
                left -= n
                copied += n
            }
        }
        if !peek {
            precondition(offset == 0, "a read that consumes starts at the tail")
            consume(copied)
        }
        return copied
    }

    @discardableResult
    public func read(into buffer: UnsafeMutableRawBufferPointer, peek: Bool = false) throws(SharedError) -> Int {
        try read(into: [buffer], peek: peek)
    }
}
