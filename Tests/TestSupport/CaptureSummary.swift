import Foundation

/// The UDP and TCP traffic in `tcpdump -n -S -tt` output, per direction.
public struct CaptureSummary {
    public struct Flow: Hashable, CustomStringConvertible {
        public let source: String
        public let sourcePort: Int
        public let destination: String
        public let destinationPort: Int
        public var description: String { "\(source).\(sourcePort) > \(destination).\(destinationPort)" }
    }

    public struct TCPStream {
        /// Sequence number of the SYN.
        public var isn: UInt32?
        /// Payload ranges as offsets from ISN + 1, merged.
        public var coverage: [Range<Int>] = []
        public var finOffset: Int?
        public var resets = 0
        public var retransmittedBytes = 0
        /// Segments that partly overlap covered bytes and partly add new ones (not a plain retransmission).
        public var misplaced = 0
        /// Payload segments seen before the SYN (cannot be placed).
        public var unplaced = 0

        mutating func add(_ range: Range<Int>) {
            let overlap = coverage.reduce(0) { $0 + max(0, min($1.upperBound, range.upperBound) - max($1.lowerBound, range.lowerBound)) }
            if overlap == range.count {
                retransmittedBytes += range.count
                return
            }
            if overlap > 0 { misplaced += 1 }
            var merged = range
            var rest: [Range<Int>] = []
            for r in coverage {
                if r.upperBound < merged.lowerBound || r.lowerBound > merged.upperBound {
                    rest.append(r)
                } else {
                    merged = min(r.lowerBound, merged.lowerBound)..<max(r.upperBound, merged.upperBound)
                }
            }
            coverage = (rest + [merged]).sorted { $0.lowerBound < $1.lowerBound }
        }
    }

    public var udp: [Flow: (datagrams: Int, bytes: Int)] = [:]
    public var tcp: [Flow: TCPStream] = [:]
    public var unparsed: [String] = []

    public init(tcpdump output: String) {
        for line in output.split(separator: "\n").map(String.init) {
            let words = line.split(separator: " ", maxSplits: 5).map(String.init)
            // "<time> IP|IP6 <src>.<port> > <dst>.<port>: <rest>"; ARP, ICMP and ICMPv6 are not ours.
            guard words.count == 6, words[1] == "IP" || words[1] == "IP6", words[3] == ">" else { continue }
            let rest = words[5]
            if rest.hasPrefix("ICMP") || rest.contains("ICMP6") || rest.contains("HBH") { continue }
            guard let source = Self.endpoint(words[2]), let destination = Self.endpoint(String(words[4].dropLast())) else {
                unparsed.append(line)
                continue
            }
            let flow = Flow(source: source.0, sourcePort: source.1, destination: destination.0, destinationPort: destination.1)
            if rest.hasPrefix("UDP, length ") {
                guard let n = Int(rest.dropFirst("UDP, length ".count)) else { unparsed.append(line); continue }
                udp[flow, default: (0, 0)].datagrams += 1
                udp[flow, default: (0, 0)].bytes += n
            } else if rest.hasPrefix("Flags [") {
                guard let flagsEnd = rest.firstIndex(of: "]") else { unparsed.append(line); continue }
                let flags = rest[rest.index(rest.startIndex, offsetBy: 7)..<flagsEnd]
                let length = Self.number(after: "length ", in: rest) ?? -1
                guard length >= 0 else { unparsed.append(line); continue }
                var stream = tcp[flow] ?? TCPStream()
                if flags.contains("R") { stream.resets += 1 }
                // "seq A:B" for a segment with payload, "seq A" for SYN or FIN without payload.
                var start: UInt32?
                var end: UInt32?
                if let seqRange = rest.firstRange(of: "seq ") {
                    let text = rest[seqRange.upperBound...].prefix { $0 != "," }
                    let parts = text.split(separator: ":")
                    start = UInt32(parts[0])
                    end = parts.count == 2 ? UInt32(parts[1]) : start
                }
                if flags.contains("S") {
                    stream.isn = start
                } else if let isn = stream.isn, let start, let end {
                    let from = Int(start &- isn &- 1), to = Int(end &- isn &- 1)
                    if to > from { stream.add(from..<to) }
                    if flags.contains("F") { stream.finOffset = to }
                } else if length > 0 {
                    stream.unplaced += 1
                }
                tcp[flow] = stream
            } else {
                unparsed.append(line)
            }
        }
    }

    /// "10.0.0.1.9000" or "fd00::1.9000" -> (address, port).
    static func endpoint(_ text: String) -> (String, Int)? {
        guard let dot = text.lastIndex(of: "."), let port = Int(text[text.index(after: dot)...]) else { return nil }
        return (String(text[..<dot]), port)
    }

    static func number(after label: String, in text: String) -> Int? {
        guard let r = text.ranges(of: label).last else { return nil }
        return Int(text[r.upperBound...].prefix { $0.isNumber })
    }
}
