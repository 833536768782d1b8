import CShims

/// Geometry of a bipartite descriptor ring: `count` items of `cshims_datagram_item`.
///
/// Every item makes a round trip. The producer (always the server) fills items and publishes them
/// by advancing `head`; the consumer (the client) takes each in order, uses it, and hands it back by
/// advancing `tail`; the producer later reclaims the handed-back items (releases their payload, or
/// sends what the client wrote into them) and so regains room. The ring is therefore split in two
/// parts: items the consumer owns ([tail, head)) and items the producer owns (the rest, including
/// the spent ones in [reclaimed, tail) that it has yet to reclaim).
///
/// Indices run modulo 2 x count. Each side keeps its own indices privately and validates the peer's.
public struct BipartiteRingGeometry: Sendable, Equatable {
    public let count: UInt32

    public init(count: UInt32) {
        precondition(count > 0 && count <= 1 << 20, "ring item count out of range")
        self.count = count
    }

    @inline(__always) var modulus: UInt32 { count &* 2 }

    @inline(__always) func distance(from a: UInt32, to b: UInt32) -> UInt32? {
        guard a < modulus, b < modulus else { return nil }
        let d = b >= a ? b - a : b &+ modulus &- a
        return d <= count ? d : nil
    }

    @inline(__always) func advance(_ index: UInt32, by n: UInt32) -> UInt32 {
        let next = index &+ n
        return next >= modulus ? next &- modulus : next
    }

    @inline(__always) func slot(_ index: UInt32) -> Int {
        Int(index >= count ? index &- count : index)
    }
}

/// The producer side (server): publishes items and reclaims the ones the consumer handed back.
public final class BipartiteRingProducer {
    public let geometry: BipartiteRingGeometry
    private let header: UnsafeMutableRawPointer
    private let items: UnsafeMutablePointer<cshims_datagram_item>
    private var head: UInt32 = 0
    private var reclaimed: UInt32 = 0

    /// - Parameters:
    ///   - header: a zeroed `cshims_bipartite_ring` in shared memory.
    ///   - items: `geometry.count` items in shared memory.
    public init(header: UnsafeMutableRawPointer, items: UnsafeMutableRawPointer, geometry: BipartiteRingGeometry) {
        self.header = header
        self.items = items.bindMemory(to: cshims_datagram_item.self, capacity: Int(geometry.count))
        self.geometry = geometry
    }

    /// Items the producer may fill and publish now (not published, not awaiting reclaim).
    public var freeItems: Int { Int(geometry.count - geometry.distance(from: reclaimed, to: head)!) }

    /// Items published and not yet handed back by the consumer.
    public func outstanding() throws(SharedError) -> Int {
        Int(geometry.count) - freeItems - (try reclaimable())
    }

    /// The `k`-th unpublished item (0 = the next to publish); valid for k < freeItems.
    public func itemToFill(_ k: Int) -> UnsafeMutablePointer<cshims_datagram_item> {
        precondition(k >= 0 && k < freeItems)
        return items + geometry.slot(geometry.advance(head, by: UInt32(k)))
    }

    /// The ring position (0..<count) of `itemToFill(k)`: lets the producer keep private per-item
    /// state (which buffer an item names) instead of trusting the item's contents later.
    public func slotToFill(_ k: Int) -> Int { geometry.slot(geometry.advance(head, by: UInt32(k))) }

    /// The ring position (0..<count) of `itemToReclaim(k)`.
    public func slotToReclaim(_ k: Int) -> Int { geometry.slot(geometry.advance(reclaimed, by: UInt32(k))) }

    /// Publishes the next `n` filled items with release ordering.
    public func publish(_ n: Int) {
        precondition(n >= 0 && n <= freeItems)
        guard n > 0 else { return }
        head = geometry.advance(head, by: UInt32(n))
        cshims_store_release_u32(header + Int(CSHIMS_BIPARTITE_HEAD), head)
    }

    /// Items handed back by the consumer and not yet reclaimed.
    /// - Throws: `.corruptSharedState` if the consumer's index is outside [reclaimed, head].
    public func reclaimable() throws(SharedError) -> Int {
        let tail = cshims_load_acquire_u32(header + Int(CSHIMS_BIPARTITE_TAIL))
        guard let spent = geometry.distance(from: reclaimed, to: tail),
              let published = geometry.distance(from: reclaimed, to: head), spent <= published
        else {
            throw SharedError(.corruptSharedState, "bipartite ring consumer index \(tail)")
        }
        return Int(spent)
    }

    /// The `k`-th spent item (0 = the oldest); valid for k < reclaimable().
    public func itemToReclaim(_ k: Int) -> UnsafeMutablePointer<cshims_datagram_item> {
        items + geometry.slot(geometry.advance(reclaimed, by: UInt32(k)))
    }

    /// Marks the oldest `n` spent items as reclaimed: they are free to fill again.
    public func reclaim(_ n: Int) {
        guard n > 0 else { return }
        reclaimed = geometry.advance(reclaimed, by: UInt32(n))
        cshims_store_release_u32(header + Int(CSHIMS_BIPARTITE_RECLAIMED), reclaimed)
    }

    /// Counts a datagram dropped for want of room (read by the consumer for statistics).
    public func countDrop() {
        _ = cshims_fetch_add_u64(header + Int(CSHIMS_BIPARTITE_DROPS), 1)
    }
}

/// The consumer side (client): takes published items in order and hands them back.
public final class BipartiteRingConsumer {
    public let geometry: BipartiteRingGeometry
    private let header: UnsafeMutableRawPointer
    private let items: UnsafeMutablePointer<cshims_datagram_item>
    private var tail: UInt32

    public init(header: UnsafeMutableRawPointer, items: UnsafeMutableRawPointer, geometry: BipartiteRingGeometry) {
        self.header = header
        self.items = items.bindMemory(to: cshims_datagram_item.self, capacity: Int(geometry.count))
        self.geometry = geometry
        self.tail = cshims_load_acquire_u32(header + Int(CSHIMS_BIPARTITE_TAIL))
        if tail >= geometry.modulus { tail = 0 }
    }

    /// Items published by the producer and not yet handed back.
    /// - Throws: `.corruptSharedState` if the producer's index is impossible.
    public func ready() throws(SharedError) -> Int {
        let head = cshims_load_acquire_u32(header + Int(CSHIMS_BIPARTITE_HEAD))
        guard let n = geometry.distance(from: tail, to: head) else {
            throw SharedError(.corruptSharedState, "bipartite ring producer index \(head)")
        }
        return Int(n)
    }

    /// Ready items from the shared indices alone, without this side's private state: safe from a
    /// thread that does not own the consumer (readiness checks). 0 if the indices are corrupt.
    public func sharedReady() -> Int {
        let h = cshims_load_acquire_u32(header + Int(CSHIMS_BIPARTITE_HEAD))
        let t = cshims_load_acquire_u32(header + Int(CSHIMS_BIPARTITE_TAIL))
        return geometry.distance(from: t, to: h).map { Int($0) } ?? 0
    }

    /// The `k`-th ready item (0 = the oldest); valid for k < ready(). The consumer owns it until it
    /// is handed back, and may rewrite it (e.g. fill a send buffer's length and address).
    public func item(_ k: Int) -> UnsafeMutablePointer<cshims_datagram_item> {
        items + geometry.slot(geometry.advance(tail, by: UInt32(k)))
    }

    /// Hands the oldest `n` items back to the producer with release ordering.
    public func handBack(_ n: Int) {
        guard n > 0 else { return }
        tail = geometry.advance(tail, by: UInt32(n))
        cshims_store_release_u32(header + Int(CSHIMS_BIPARTITE_TAIL), tail)
    }

    /// Datagrams the producer dropped because the ring was full.
    public var drops: UInt64 { cshims_load_acquire_u64(header + Int(CSHIMS_BIPARTITE_DROPS)) }
}
