import CShims

/// Where each part of a socket's channel lies, relative to the channel's offset in the segment.
/// Both sides compute it from the `ChannelInfo` in the server's reply, so nothing about the layout
/// is read back from shared memory.
///
///     stream:   [header][rx ring hdr][tx ring hdr][rx bytes][tx bytes]
///     datagram: [header][rx ring hdr][tx ring hdr][rx items][tx items][rx slots][tx slots]
///     listener: [header]
///
/// "rx" is stack -> app, "tx" is app -> stack. Datagram slots exist only with the shared-memory
/// transport (`slotBytes` = slot size there, 0 with process-vm). Every part is 64-byte aligned.
public struct ChannelLayout: Equatable, Sendable {
    public let kind: ChannelKind
    public let header = 0
    public let receiveRing: Int
    public let sendRing: Int
    public let receiveData: Int
    public let sendData: Int
    public let receiveSlots: Int
    public let sendSlots: Int
    public let size: Int

    public static func align(_ n: Int) -> Int { (n + 63) & ~63 }

    public init(kind: ChannelKind, receiveSize: Int, sendSize: Int, slotBytes: Int) {
        self.kind = kind
        let h = Self.align(Int(CSHIMS_CHANNEL_HEADER_SIZE))
        switch kind {
        case .listener:
            receiveRing = h; sendRing = h; receiveData = h; sendData = h; receiveSlots = h; sendSlots = h
            size = h
        case .stream:
            receiveRing = h
            sendRing = receiveRing + Int(CSHIMS_STREAM_RING_SIZE)
            receiveData = sendRing + Int(CSHIMS_STREAM_RING_SIZE)
            sendData = receiveData + Self.align(receiveSize)
            receiveSlots = sendData + Self.align(sendSize)
            sendSlots = receiveSlots
            size = sendSlots
        case .datagram:
            let item = Int(CSHIMS_DATAGRAM_ITEM_SIZE)
            receiveRing = h
            sendRing = receiveRing + Int(CSHIMS_BIPARTITE_RING_SIZE)
            receiveData = sendRing + Int(CSHIMS_BIPARTITE_RING_SIZE)
            sendData = receiveData + receiveSize * item
            receiveSlots = sendData + sendSize * item
            sendSlots = receiveSlots + Self.align(receiveSize * slotBytes)
            size = sendSlots + Self.align(sendSize * slotBytes)
        }
    }

    public init(_ info: ChannelInfo) {
        self.init(kind: info.kind, receiveSize: Int(info.receiveSize), sendSize: Int(info.sendSize),
                  slotBytes: info.kind == .datagram && info.transport == .sharedMemory ? Int(info.slotSize) : 0)
    }
}

/// A channel's parts mapped in this process's view of the segment.
public struct ChannelView {
    public let base: UnsafeMutableRawPointer
    public let layout: ChannelLayout

    /// - Throws: `.outOfBounds` when the channel does not lie inside the segment.
    public init(segment: SharedSegment, offset: Int, layout: ChannelLayout) throws(SharedError) {
        guard offset % 64 == 0 else { throw SharedError(.outOfBounds, "channel offset \(offset) not aligned") }
        self.base = try segment.pointer(at: offset, length: layout.size)
        self.layout = layout
    }

    public var header: UnsafeMutableRawPointer { base }
    public var toApp: UnsafeMutableRawPointer { base + Int(CSHIMS_CHANNEL_TO_APP) }
    public var toStack: UnsafeMutableRawPointer { base + Int(CSHIMS_CHANNEL_TO_STACK) }

    // Channel-header fields.
    public var events: UInt32 { cshims_load_acquire_u32(base + Int(CSHIMS_CHANNEL_EVENTS)) }
    public func setEvents(_ bits: UInt32) { _ = cshims_fetch_or_u32(base + Int(CSHIMS_CHANNEL_EVENTS), bits) }
    public func clearEvents(_ bits: UInt32) { _ = cshims_fetch_and_u32(base + Int(CSHIMS_CHANNEL_EVENTS), ~bits) }
    public var pendingError: Int32 { cshims_load_acquire_i32(base + Int(CSHIMS_CHANNEL_ERROR)) }
    public func setPendingError(_ e: Int32) { cshims_store_release_i32(base + Int(CSHIMS_CHANNEL_ERROR), e) }
    public var pendingAccepts: UInt32 { cshims_load_acquire_u32(base + Int(CSHIMS_CHANNEL_PENDING_ACCEPTS)) }
    public func setPendingAccepts(_ n: UInt32) { cshims_store_release_u32(base + Int(CSHIMS_CHANNEL_PENDING_ACCEPTS), n) }
    public var stackWants: UInt32 { cshims_load_acquire_u32(base + Int(CSHIMS_CHANNEL_STACK_WANTS)) }
    public func setStackWants(_ bits: UInt32) { _ = cshims_fetch_or_u32(base + Int(CSHIMS_CHANNEL_STACK_WANTS), bits) }
    /// Clears `bits`; returns the bits that were set before.
    public func takeStackWants(_ bits: UInt32) -> UInt32 {
        cshims_fetch_and_u32(base + Int(CSHIMS_CHANNEL_STACK_WANTS), ~bits) & bits
    }

    /// Datagram sockets: the send buffers the app is waiting for (set by the app; the stack treats
    /// it as a hint and clamps it to the ring).
    public var sendWanted: UInt32 { cshims_load_acquire_u32(base + Int(CSHIMS_CHANNEL_SEND_WANTED)) }
    public func setSendWanted(_ n: UInt32) { cshims_store_release_u32(base + Int(CSHIMS_CHANNEL_SEND_WANTED), n) }

    public func streamProducer(receive: Bool, capacity: Int) -> StreamRingProducer {
        StreamRingProducer(header: base + (receive ? layout.receiveRing : layout.sendRing),
                           data: base + (receive ? layout.receiveData : layout.sendData),
                           geometry: StreamRingGeometry(capacity: UInt32(capacity)))
    }

    public func streamConsumer(receive: Bool, capacity: Int) -> StreamRingConsumer {
        StreamRingConsumer(header: base + (receive ? layout.receiveRing : layout.sendRing),
                           data: base + (receive ? layout.receiveData : layout.sendData),
                           geometry: StreamRingGeometry(capacity: UInt32(capacity)))
    }

    public func datagramProducer(receive: Bool, count: Int) -> BipartiteRingProducer {
        BipartiteRingProducer(header: base + (receive ? layout.receiveRing : layout.sendRing),
                              items: base + (receive ? layout.receiveData : layout.sendData),
                              geometry: BipartiteRingGeometry(count: UInt32(count)))
    }

    public func datagramConsumer(receive: Bool, count: Int) -> BipartiteRingConsumer {
        BipartiteRingConsumer(header: base + (receive ? layout.receiveRing : layout.sendRing),
                              items: base + (receive ? layout.receiveData : layout.sendData),
                              geometry: BipartiteRingGeometry(count: UInt32(count)))
    }
}
