import SocketShared
import Testing

@Suite("Control protocol")
struct ControlMessageTests {
    static func randomAddress(_ rng: inout TestRandom) -> SocketAddress {
        switch rng.below(3) {
        case 0: return .unspecified
        case 1: return SocketAddress(family: .inet, port: UInt16(rng.below(65536)), bytes: (0..<4).map { _ in UInt8(rng.below(256)) })
        default:
            return SocketAddress(family: .inet6, port: UInt16(rng.below(65536)), bytes: (0..<16).map { _ in UInt8(rng.below(256)) },
                                 flowInfo: UInt32(truncatingIfNeeded: rng.next()), scopeID: UInt32(rng.below(9)))
        }
    }

    static func randomChannel(_ rng: inout TestRandom) -> ChannelInfo {
        ChannelInfo(handle: UInt32(truncatingIfNeeded: rng.next()), kind: [.stream, .datagram, .listener][rng.below(3)],
                    transport: DatagramTransport.allCases[rng.below(3)], offset: rng.next(),
                    receiveSize: UInt32(truncatingIfNeeded: rng.next()), sendSize: UInt32(truncatingIfNeeded: rng.next()),
                    slotSize: UInt32(truncatingIfNeeded: rng.next()))
    }

    /// A random valid message of every kind in turn.
    static func randomMessage(_ rng: inout TestRandom, kind: Int) -> ControlMessage {
        let id = UInt32(truncatingIfNeeded: rng.next())
        let h = UInt32(truncatingIfNeeded: rng.next())
        let i = Int32(truncatingIfNeeded: Int64(bitPattern: rng.next()))
        switch kind % 29 {
        case 27: return ControlMessage(requestID: id, .capture(interface: ["", "lo0", "tap0"][rng.below(3)], filter: ["", "tcp port 7008", "udp and not port 53 ü"][rng.below(3)],
                                                                count: UInt32(truncatingIfNeeded: rng.next()), recorded: rng.below(2) == 1))
        case 28: return ControlMessage(requestID: id, Reply.stream)
        case 25: return ControlMessage(requestID: id, .admin(report: AdminReport.allCases[rng.below(AdminReport.allCases.count)]))
        case 26: return ControlMessage(requestID: id, Reply.report(length: rng.next()))
        case 22: return ControlMessage(requestID: id, .execing(keep: (0..<rng.below(101)).map { _ in UInt32(truncatingIfNeeded: rng.next()) }))
        case 23: return ControlMessage(requestID: id, .adopt(handle: h))
        case 24: return ControlMessage(requestID: id, Reply.adopted(randomChannel(&rng), domain: i, type: i &+ 1, listening: rng.below(2) == 1))
        case 20: return ControlMessage(requestID: id, .forked(child: i))
        case 21: return ControlMessage(requestID: id, .attachInherited)
        case 0: return ControlMessage(requestID: id, .hello(version: UInt16(rng.below(65536)), transport: DatagramTransport.allCases[rng.below(3)]))
        case 1: return ControlMessage(requestID: id, .socket(domain: i, type: i &+ 1, protocol: i &- 1))
        case 2: return ControlMessage(requestID: id, .bind(handle: h, address: randomAddress(&rng)))
        case 3: return ControlMessage(requestID: id, .listen(handle: h, backlog: i))
        case 4: return ControlMessage(requestID: id, .accept(handle: h, flags: i))
        case 5: return ControlMessage(requestID: id, .connect(handle: h, address: randomAddress(&rng)))
        case 6: return ControlMessage(requestID: id, .shutdown(handle: h, how: i))
        case 7: return ControlMessage(requestID: id, .close(handle: h))
        case 8: return ControlMessage(requestID: id, .getsockname(handle: h))
        case 9: return ControlMessage(requestID: id, .getpeername(handle: h))
        case 10: return ControlMessage(requestID: id, .getsockopt(handle: h, level: i, name: i ^ 5, maxLength: UInt32(rng.below(257))))
        case 11: return ControlMessage(requestID: id, .setsockopt(handle: h, level: i, name: i ^ 3,
                                                                   value: (0..<rng.below(257)).map { _ in UInt8(rng.below(256)) }))
        case 12: return ControlMessage(requestID: id, .ioctl(handle: h, request: UInt32(truncatingIfNeeded: rng.next()), argument: rng.next()))
        case 13: return ControlMessage(requestID: id, Reply.error(i))
        case 14: return ControlMessage(requestID: id, Reply.ok(value: Int64(bitPattern: rng.next())))
        case 15: return ControlMessage(requestID: id, Reply.hello(HelloInfo(version: 1, serverPID: i, transport: DatagramTransport.allCases[rng.below(3)],
                                                                           segmentSize: rng.next(), maxSockets: h, probeAddress: rng.next())))
        case 16: return ControlMessage(requestID: id, Reply.socket(randomChannel(&rng)))
        case 17: return ControlMessage(requestID: id, Reply.accepted(randomChannel(&rng), peer: randomAddress(&rng)))
        case 18: return ControlMessage(requestID: id, Reply.address(randomAddress(&rng)))
        default: return ControlMessage(requestID: id, Reply.option((0..<rng.below(257)).map { _ in UInt8(rng.below(256)) }))
        }
    }

    @Test func everyValidMessageRoundTrips() throws {
        var rng = TestRandom(state: 21)
        for n in 0..<20_000 {
            let message = Self.randomMessage(&rng, kind: n)
            let bytes = message.encoded()
            #expect(bytes.count <= ControlMessage.maximumSize)
            #expect(try ControlMessage.decode(bytes) == message)
        }
    }

    @Test func rejectsEachKindOfMalformation() throws {
        let valid = ControlMessage(requestID: 7, .bind(handle: 3, address: SocketAddress(host: "127.0.0.1", port: 80)!)).encoded()
        func mutate(_ f: (inout [UInt8]) -> Void) -> [UInt8] { var b = valid; f(&b); return b }
        #expect(throws: ProtocolError.tooShort(3)) { try ControlMessage.decode([1, 2, 3]) }
        #expect(throws: ProtocolError.tooLarge(600)) { try ControlMessage.decode([UInt8](repeating: 0, count: 600)) }
        #expect(throws: ProtocolError.badMagic(0x544B_4300)) { try ControlMessage.decode(mutate { $0[0] = 0 }) }
        #expect(throws: ProtocolError.unsupportedVersion(9)) { try ControlMessage.decode(mutate { $0[4] = 9 }) }
        #expect(throws: ProtocolError.unknownType(0x00FF)) { try ControlMessage.decode(mutate { $0[6] = 0xFF; $0[7] = 0 }) }
        #expect(throws: ProtocolError.lengthMismatch(declared: UInt32(valid.count - 16), actual: valid.count - 17)) {
            try ControlMessage.decode(Array(valid.dropLast()))
        }
        #expect(throws: ProtocolError.invalidValue("address family 99")) { try ControlMessage.decode(mutate { $0[20] = 99 }) }
        // A body that ends early (length field agrees with the short packet).
        #expect(throws: ProtocolError.truncatedBody) {
            try ControlMessage.decode(mutate { $0.removeLast(2); $0[8] = UInt8($0.count - 16) })
        }
        // Trailing garbage the body does not account for.
        #expect(throws: ProtocolError.trailingBytes(1)) { try ControlMessage.decode(mutate { $0.append(0); $0[8] += 1 }) }
        // An option value over the bound.
        let big = ControlMessage(requestID: 1, .setsockopt(handle: 1, level: 1, name: 1, value: [UInt8](repeating: 1, count: 300))).encoded()
        #expect(throws: ProtocolError.self) { try ControlMessage.decode(big) }
    }

    /// 100,000 random and mutated packets: the decoder throws or returns a message, never traps,
    /// and whatever it accepts re-encodes to a packet it accepts again.
    @Test func survivesRandomAndMutatedInput() throws {
        var rng = TestRandom(state: 77)
        var accepted = 0, rejected = 0
        for n in 0..<100_000 {
            var bytes: [UInt8]
            switch n % 4 {
            case 0: bytes = (0..<rng.below(600)).map { _ in UInt8(rng.below(256)) }
            case 1:
                bytes = Self.randomMessage(&rng, kind: rng.below(20)).encoded()
                for _ in 0..<(1 + rng.below(4)) where !bytes.isEmpty { bytes[rng.below(bytes.count)] = UInt8(rng.below(256)) }
            case 2:
                bytes = Self.randomMessage(&rng, kind: rng.below(20)).encoded()
                bytes = Array(bytes[..<rng.below(bytes.count + 1)])
            default:
                // A valid header over a random body whose length matches: reaches every body decoder.
                bytes = Self.randomMessage(&rng, kind: rng.below(20)).encoded()
                let body = (0..<rng.below(80)).map { _ in UInt8(rng.below(256)) }
                bytes = Array(bytes[..<16]) + body
                let len = UInt32(body.count)
                bytes[8] = UInt8(len & 0xFF); bytes[9] = UInt8(len >> 8); bytes[10] = 0; bytes[11] = 0
            }
            do {
                let message = try ControlMessage.decode(bytes)
                #expect(try ControlMessage.decode(message.encoded()) == message)
                accepted += 1
            } catch {
                rejected += 1
            }
        }
        #expect(accepted > 1000)
        #expect(rejected > 1000)
    }
}
