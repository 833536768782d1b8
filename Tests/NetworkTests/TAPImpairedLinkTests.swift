import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// TCP through a lossy, reordering, delaying link: 20 MiB each way arrives intact (SHA-256).
///
/// The impairment is netem's `loss 1% reorder 25% 50% delay 1ms`. This machine's kernel has no
/// sch_netem (`tc qdisc add ... netem` fails with "Specified qdisc kind is unknown"), so the test
/// puts a userspace relay between the stack and the kernel (`KernelPeers.impairRelay`, see
/// `TAPNetwork.make(relayed:)`) that applies the same model to the frames of BOTH directions: the
/// stack's segments and ACKs are lost and reordered as well as the kernel's. The relay's counts
/// prove that frames were really dropped and reordered each way.
@Suite("TAP: impaired link", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPImpairedLinkTests {
    static let bytes = 20 << 20

    @Test("20 MiB each way through 1% loss, 25% reordering and 1 ms delay, SHA-256 verified", .timeLimit(.minutes(3)))
    func transferThroughImpairedLink() throws {
        let net = try TAPNetwork.make("lossy", subnet: 7, relayed: true)
        defer { net.teardown() }
        let relayScript = try net.script("impair_relay.py", KernelPeers.impairRelay)
        // Between the bridge (stack side, "a") and the kernel's device ("b"); gives up after 170 s.
        let relay = try net.startKernel(["python3", relayScript, net.relayDevice, net.kernelDevice, "0.01", "0.25", "0.5", "1", "7", "170"],
                                        label: "relay")
        try #require(relay.waitForOutput("ready"), "\(relay.diagnostics)")
        try net.startServer()
        let source = try net.randomFile("source.bin", bytes: Self.bytes)
        let expected = try net.sha256(ofFile: source)

        // Kernel -> stack: the kernel's data segments are lost and reordered, lwIP reassembles.
        let received = "\(net.directory)/received.bin"
        let sink = try net.startStack("net-peer", ["tcp-sink", net.socketPath, net.stackIPv4, "5001", received])
        try #require(sink.waitForOutput("listening on"), "\(sink.diagnostics)")
        let sender = try net.runKernel(["python3", try net.script("tcp_send.py", KernelPeers.tcpSend), net.stackIPv4, "5001", source],
                                       timeoutSeconds: 75)
        let sent = ChildProcess.fields(sender.output)
        #expect(sender.succeeded && sent["sha256"] == expected && sent["bytes"] == "\(Self.bytes)", "\(sender)")
        #expect(sink.finish(timeout: 30).status == .exited(0), "\(sink.diagnostics)")
        #expect(try net.sha256(ofFile: received) == expected, "kernel -> stack: the bytes the stack received differ from the file")

        // Stack -> kernel: lwIP's segments are lost and reordered, lwIP retransmits.
        let receiver = try net.startKernel(["python3", try net.script("tcp_recv.py", KernelPeers.tcpReceive), net.kernelIPv4, "5002"])
        try #require(receiver.waitForOutput("listening"), "\(receiver.diagnostics)")
        let stackSource = try net.runStack("net-peer", ["tcp-source", net.socketPath, net.kernelIPv4, "5002", source], timeoutSeconds: 75)
        #expect(stackSource.succeeded && ChildProcess.fields(stackSource.output)["bytes"] == "\(Self.bytes)", "\(stackSource)")
        #expect(receiver.finish(timeout: 30).status == .exited(0), "\(receiver.diagnostics)")
        let got = ChildProcess.fields(receiver.output)
        #expect(got["sha256"] == expected && got["bytes"] == "\(Self.bytes)", "stack -> kernel: \(receiver.diagnostics)")

        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
        #expect(relay.stop(SIGTERM, grace: 10) == .exited(0), "\(relay.diagnostics)")
        let counts = ChildProcess.fields(relay.output)
        print("NetworkTests impaired link relay: \(relay.output.split(separator: "\n").joined(separator: " "))")
        for direction in ["a_to_b", "b_to_a"] {
            let dropped = Int(counts["\(direction)_dropped"] ?? "") ?? 0
            let reordered = Int(counts["\(direction)_reordered"] ?? "") ?? 0
            #expect(dropped > 0 && reordered > 0, "the relay did not impair \(direction): \(relay.diagnostics)")
        }
    }
}
