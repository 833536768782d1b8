import CShims
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Bipartite ring")
struct BipartiteRingTests {
    @Test func itemsRoundTripInOrderAndAreReclaimed() throws {
        let count = 8
        let layout = ChannelLayout(kind: .datagram, receiveSize: count, sendSize: 1, slotBytes: 0)
        let segment = try SharedSegment.create(name: "bip", size: 1 << 16)
        let view = try ChannelView(segment: segment, offset: 4096, layout: layout)
        let producer = view.datagramProducer(receive: true, count: count)
        let consumer = view.datagramConsumer(receive: true, count: count)
        var rng = TestRandom(state: 11)
        var published: UInt64 = 0, taken: UInt64 = 0, reclaimedTotal: UInt64 = 0
        for _ in 0..<10_000 {
            switch rng.below(3) {
            case 0:
                let n = rng.below(producer.freeItems + 1)
                for k in 0..<n { producer.itemToFill(k).pointee.payload = published + UInt64(k) }
                producer.publish(n)
                published += UInt64(n)
            case 1:
                let ready = try consumer.ready()
                #expect(UInt64(ready) == published - taken)
                let n = rng.below(ready + 1)
                for k in 0..<n {
                    #expect(consumer.item(k).pointee.payload == taken + UInt64(k))
                    consumer.item(k).pointee.length = UInt32(truncatingIfNeeded: taken + UInt64(k)) // written back
                }
                consumer.handBack(n)
                taken += UInt64(n)
            default:
                let n = try producer.reclaimable()
                #expect(UInt64(n) == taken - reclaimedTotal)
                for k in 0..<n { #expect(producer.itemToReclaim(k).pointee.length == UInt32(truncatingIfNeeded: reclaimedTotal + UInt64(k))) }
                producer.reclaim(n)
                reclaimedTotal += UInt64(n)
            }
            #expect(producer.freeItems == count - Int(published - reclaimedTotal))
        }
        #expect(published > 1000 && reclaimedTotal > 1000)
    }

    @Test func rejectsConsumerIndexOutsidePublishedRange() throws {
        let count = 8
        let layout = ChannelLayout(kind: .datagram, receiveSize: count, sendSize: 1, slotBytes: 0)
        let segment = try SharedSegment.create(name: "bip", size: 1 << 16)
        let view = try ChannelView(segment: segment, offset: 4096, layout: layout)
        let producer = view.datagramProducer(receive: true, count: count)
        producer.publish(3)
        let tail = view.base + layout.receiveRing + Int(CSHIMS_BIPARTITE_TAIL)
        cshims_store_release_u32(tail, 5) // handed back more than was published
        #expect(throws: SharedError.self) { try producer.reclaimable() }
        cshims_store_release_u32(tail, 77) // beyond 2 x count
        #expect(throws: SharedError.self) { try producer.reclaimable() }
        cshims_store_release_u32(tail, 3)
        #expect(try producer.reclaimable() == 3)
        let consumer = view.datagramConsumer(receive: true, count: count)
        cshims_store_release_u32(view.base + layout.receiveRing + Int(CSHIMS_BIPARTITE_HEAD), 40)
        #expect(throws: SharedError.self) { try consumer.ready() }
    }

    /// 100,000 datagrams of random sizes (1 to 8 items each) from this process (the producer, as
    /// the server is) to the peer, which verifies every payload, writes its checksum back into the
    /// first item and hands the items back at random moments; we reclaim and check each checksum.
    @Test func roundTripsAcrossProcessesUnderRandomTiming() throws {
        let datagrams = 100_000, count = 32, slot = 512, seed: UInt64 = 5
        let layout = ChannelLayout(kind: .datagram, receiveSize: count, sendSize: 1, slotBytes: slot)
        let channel = try TestChannel(layout: layout)
        let peer = try PeerProcess.start(["bipartite-consume", "\(datagrams)", "\(seed)", "\(count)", "\(slot)"],
                                   descriptors: channel.descriptors)
        let producer = channel.view.datagramProducer(receive: true, count: count)
        let itemsBase = UnsafeRawPointer(channel.view.base + layout.receiveData)
        let slotsOffset = PeerProcess.channelOffset + layout.receiveSlots
        var rng = TestRandom(state: 9)
        var sent = 0, verified = 0
        var expectedHashes: [(hash: UInt64, length: Int)] = []
        expectedHashes.reserveCapacity(datagrams)

        func reclaim() throws {
            var k = 0
            let n = try producer.reclaimable()
            while k < n {
                let first = producer.itemToReclaim(k)
                let parts = Int(first.pointee.count)
                let expected = expectedHashes[verified]
                #expect(first.pointee.payload == expected.hash, "datagram \(verified) checksum written back")
                #expect(Int(first.pointee.length) == expected.length)
                verified += 1
                k += parts
            }
            producer.reclaim(n)
        }

        while sent < datagrams {
            let length = 1 + rng.below(rng.below(8) == 0 ? slot * 8 : slot)
            let parts = (length + slot - 1) / slot
            try waitUntil(channel.ourNotifier) {
                try reclaim()
                return producer.freeItems >= parts
            }
            var hash = CSHIMS_FNV_OFFSET, offset = 0
            for k in 0..<parts {
                let item = producer.itemToFill(k)
                let index = (UnsafeRawPointer(item) - itemsBase) / Int(CSHIMS_DATAGRAM_ITEM_SIZE)
                let payload = slotsOffset + index * slot
                let n = min(slot, length - offset)
                let p = try channel.segment.pointer(at: payload, length: n)
                cshims_fill_pattern(p, n, seed &+ UInt64(sent), UInt64(offset))
                hash = cshims_fnv1a(p, n, hash)
                item.pointee.payload = UInt64(payload)
                item.pointee.capacity = UInt32(slot)
                item.pointee.length = UInt32(n)
                item.pointee.flags = UInt16(k == 0 ? CSHIMS_ITEM_FIRST : 0) | UInt16(k < parts - 1 ? CSHIMS_ITEM_MORE : 0)
                item.pointee.count = UInt16(parts)
                item.pointee.total = UInt32(length)
                item.pointee.address = SocketAddress(family: .inet, port: UInt16(truncatingIfNeeded: sent), bytes: [127, 0, 0, 1]).raw
                offset += n
            }
            expectedHashes.append((hash, length))
            producer.publish(parts)
            channel.peerNotifier.notify()
            sent += 1
        }
        let (status, output) = try #require(peer.wait(timeout: PeerProcess.timeout), "the peer did not finish within \(PeerProcess.timeout) s")
        try reclaim()
        #expect(status == 0, "peer: \(output)")
        let fields = ChildProcess.fields(output)
        #expect(fields["datagrams"] == "\(datagrams)")
        #expect(fields["lost"] == "0")
        #expect(verified == datagrams)
    }
}
