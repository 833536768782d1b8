import CShims
import SocketShared
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

// Where this client's shared segment is mapped, and every field in it the scribbler writes over.

/// The client's own segment, as the library mapped it: found in /proc/self/maps by the memfd's name
/// (the library does not expose its connection; see the test report).
struct OwnSegment {
    let base: UnsafeMutableRawPointer
    let size: Int

    /// The mapping of a `socket-server-client-*` memfd whose header is valid, other than `previous`
    /// (the segment of an ended session may still be mapped while the library lets it go).
    static func find(excluding previous: UnsafeMutableRawPointer? = nil) -> OwnSegment? {
        guard let maps = TestFiles.read("/proc/self/maps") else { return nil }
        var found: [OwnSegment] = []
        for line in maps.split(separator: "\n") where line.contains("memfd:socket-server-client-") {
            let range = line.split(separator: " ")[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16),
                  let base = UnsafeMutableRawPointer(bitPattern: start) else { continue }
            let header = base.load(as: cshims_segment_header.self)
            guard header.magic == CSHIMS_SEGMENT_MAGIC, header.size == UInt64(end - start) else { continue }
            found.append(OwnSegment(base: base, size: Int(end - start)))
        }
        if found.count > 1 { found.removeAll { $0.base == previous } }
        return found.count == 1 ? found[0] : nil
    }
}

/// What a field means, for choosing bad values for it.
enum FieldKind {
    /// A ring index running modulo 2 x `capacity` (bytes or items).
    case ringIndex(capacity: UInt32)
    /// A notifier counter or a drop count.
    case counter
    case events, error, blocked, pendingAccepts, stackWants
    /// A datagram item's payload location (segment offset or server address).
    case payload
    /// A datagram item's capacity, length or total (bytes).
    case itemBytes
    case itemFlags, itemCount
    case addressFamily, addressPort
    /// The segment header's magic, version, size or server pid.
    case segmentHeader
}

/// One field of the segment: its offset, width and meaning.
struct Field {
    let name: String
    let offset: Int
    let width: Int // bytes: 2, 4 or 8
    let kind: FieldKind
}

/// The server's ring geometry (its options), which fixes every channel's layout.
struct Geometry {
    let streamRing: Int
    let datagramItems: Int
    let slotSize: Int

    func layout(_ kind: ChannelKind, transport: DatagramTransport) -> ChannelLayout {
        switch kind {
        case .datagram:
            return ChannelLayout(kind: .datagram, receiveSize: datagramItems, sendSize: datagramItems,
                                 slotBytes: transport == .sharedMemory ? slotSize : 0)
        default:
            return ChannelLayout(kind: .stream, receiveSize: streamRing, sendSize: streamRing, slotBytes: 0)
        }
    }
}

/// The fields of one channel at `offset` in the segment.
func channelFields(_ name: String, offset: Int, layout: ChannelLayout, geometry: Geometry, transport: DatagramTransport) -> [Field] {
    func at(_ part: String, _ relative: Int, _ width: Int, _ kind: FieldKind) -> Field {
        Field(name: "\(name).\(part)", offset: offset + relative, width: width, kind: kind)
    }
    var fields = [
        at("events", Int(CSHIMS_CHANNEL_EVENTS), 4, .events),
        at("error", Int(CSHIMS_CHANNEL_ERROR), 4, .error),
        at("blocked", Int(CSHIMS_CHANNEL_BLOCKED), 4, .blocked),
        at("pending_accepts", Int(CSHIMS_CHANNEL_PENDING_ACCEPTS), 4, .pendingAccepts),
        at("stack_wants", Int(CSHIMS_CHANNEL_STACK_WANTS), 4, .stackWants),
    ]
    for (direction, base) in [("to_app", Int(CSHIMS_CHANNEL_TO_APP)), ("to_stack", Int(CSHIMS_CHANNEL_TO_STACK))] {
        fields.append(at("\(direction).posted", base + Int(CSHIMS_NOTIFY_POSTED), 8, .counter))
        fields.append(at("\(direction).acked", base + Int(CSHIMS_NOTIFY_ACKED), 8, .counter))
    }
    switch layout.kind {
    case .stream:
        let capacity = UInt32(geometry.streamRing)
        for (ring, base) in [("rx", layout.receiveRing), ("tx", layout.sendRing)] {
            fields.append(at("\(ring).head", base + Int(CSHIMS_STREAM_RING_HEAD), 4, .ringIndex(capacity: capacity)))
            fields.append(at("\(ring).tail", base + Int(CSHIMS_STREAM_RING_TAIL), 4, .ringIndex(capacity: capacity)))
        }
    case .datagram:
        let count = UInt32(geometry.datagramItems)
        let item = Int(CSHIMS_DATAGRAM_ITEM_SIZE)
        for (ring, base, items) in [("rx", layout.receiveRing, layout.receiveData), ("tx", layout.sendRing, layout.sendData)] {
            // With process-vm the send ring's indices say which items hold live server buffers the
            // library may write into: a head moved forward, or a tail moved forward (the server then
            // sends and frees buffers the library still fills), makes the library write into freed
            // server memory. That is the trust of the items' payload (below), so they are left alone.
            let trusted = ring == "tx" && transport == .processVM
            if !trusted { fields.append(at("\(ring).head", base + Int(CSHIMS_BIPARTITE_HEAD), 4, .ringIndex(capacity: count))) }
            fields.append(at("\(ring).reclaimed", base + Int(CSHIMS_BIPARTITE_RECLAIMED), 4, .ringIndex(capacity: count)))
            fields.append(at("\(ring).drops", base + Int(CSHIMS_BIPARTITE_DROPS), 8, .counter))
            if !trusted { fields.append(at("\(ring).tail", base + Int(CSHIMS_BIPARTITE_TAIL), 4, .ringIndex(capacity: count))) }
            for k in 0..<geometry.datagramItems {
                let i = items + k * item
                // With process-vm the library copies a datagram to the server address in a send item:
                // that transport trusts the client with the server's memory (README), so the payload
                // and capacity of send items are left alone there.
                if ring == "rx" || transport != .processVM {
                    fields.append(at("\(ring)[\(k)].payload", i + MemoryLayout<cshims_datagram_item>.offset(of: \.payload)!, 8, .payload))
                    fields.append(at("\(ring)[\(k)].capacity", i + MemoryLayout<cshims_datagram_item>.offset(of: \.capacity)!, 4, .itemBytes))
                }
                fields.append(at("\(ring)[\(k)].length", i + MemoryLayout<cshims_datagram_item>.offset(of: \.length)!, 4, .itemBytes))
                fields.append(at("\(ring)[\(k)].total", i + MemoryLayout<cshims_datagram_item>.offset(of: \.total)!, 4, .itemBytes))
                fields.append(at("\(ring)[\(k)].flags", i + MemoryLayout<cshims_datagram_item>.offset(of: \.flags)!, 2, .itemFlags))
                fields.append(at("\(ring)[\(k)].count", i + MemoryLayout<cshims_datagram_item>.offset(of: \.count)!, 2, .itemCount))
                let address = i + MemoryLayout<cshims_datagram_item>.offset(of: \.address)!
                fields.append(at("\(ring)[\(k)].address.family", address, 2, .addressFamily))
                fields.append(at("\(ring)[\(k)].address.port", address + 2, 2, .addressPort))
            }
        }
    default:
        break
    }
    return fields
}

/// The segment header's fields.
func segmentHeaderFields() -> [Field] {
    [Field(name: "segment.magic", offset: 0, width: 4, kind: .segmentHeader),
     Field(name: "segment.version", offset: 4, width: 4, kind: .segmentHeader),
     Field(name: "segment.size", offset: 8, width: 8, kind: .segmentHeader),
     Field(name: "segment.server_pid", offset: 16, width: 4, kind: .segmentHeader)]
}

extension OwnSegment {
    func load(_ field: Field) -> UInt64 {
        let p = base + field.offset
        switch field.width {
        case 2: return UInt64(p.load(as: UInt16.self))
        case 4: return UInt64(cshims_load_acquire_u32(p))
        default: return cshims_load_acquire_u64(p)
        }
    }

    func store(_ field: Field, _ value: UInt64) {
        let p = base + field.offset
        switch field.width {
        case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: value), as: UInt16.self)
        case 4: cshims_store_release_u32(p, UInt32(truncatingIfNeeded: value))
        default: cshims_store_release_u64(p, value)
        }
    }
}

/// Bad values for `field` whose current value is `v`: indices moved back by one, forward by one and
/// past the end, lengths past the end, huge counts, flipped flags.
func targetedValues(_ field: Field, current v: UInt64, geometry: Geometry, segmentSize: Int) -> [UInt64] {
    let mask: UInt64 = field.width == 8 ? .max : (1 << (field.width * 8)) - 1
    let values: [UInt64]
    switch field.kind {
    case .ringIndex(let capacity):
        let c = UInt64(capacity)
        values = [v &- 1, v &+ 1, v &+ c, v &+ c &+ 1, v &- c, v &+ 2 * c, 2 * c, 2 * c &- 1, v ^ 0x8000_0000, .max]
    case .counter:
        values = [v &- 1, v &+ 1, 0, .max, v &+ (1 << 32), .max - 1]
    case .events:
        values = [v ^ UInt64(CSHIMS_EV_CLOSED), v ^ UInt64(CSHIMS_EV_CONNECTED), v ^ UInt64(CSHIMS_EV_ERROR | CSHIMS_EV_RESET), 0, .max]
    case .error:
        values = [UInt64(UInt32(bitPattern: -1)), 0x8000_0000, 0x7FFF_FFFF, UInt64(EPIPE), 0]
    case .blocked:
        values = [v ^ 1, 2, .max, 0]
    case .pendingAccepts:
        values = [v &+ 1, v &- 1, .max, 0x8000_0000]
    case .stackWants:
        values = [v ^ UInt64(CSHIMS_WANTS_RX_PROGRESS), .max, 0]
    case .payload:
        let size = UInt64(segmentSize)
        values = [v &+ 1, v &- 1, size, size - 1, size - 64, 0, .max, v &+ UInt64(geometry.slotSize), v &- (1 << 32)]
    case .itemBytes:
        let slot = UInt64(geometry.slotSize)
        values = [slot + 1, slot &- 1, 0, .max, 65_508, 65_507, v &+ 1, v &- 1, UInt64(segmentSize)]
    case .itemFlags:
        values = [v ^ UInt64(CSHIMS_ITEM_FIRST), v ^ UInt64(CSHIMS_ITEM_MORE), v ^ UInt64(CSHIMS_ITEM_FIRST | CSHIMS_ITEM_MORE), 0xFFFF, 0]
    case .itemCount:
        values = [0, 0xFFFF, v &+ 1, v &- 1, UInt64(geometry.datagramItems + 1), UInt64(geometry.datagramItems)]
    case .addressFamily:
        values = [0, UInt64(AF_INET), UInt64(AF_INET6), 0xFFFF, UInt64(AF_UNIX)]
    case .addressPort:
        values = [0, 0xFFFF, v &+ 1]
    case .segmentHeader:
        values = [v ^ 1, 0, .max, v &* 2]
    }
    return values.map { $0 & mask }
}
