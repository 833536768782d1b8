import TestSupport
import Testing

/// 100 MiB of random bytes each way between a kernel program and a stack application, checked by
/// SHA-256 at both ends.
///
/// How the hashes are made: the test fills a file with 100 MiB from /dev/urandom and hashes it with
/// `sha256sum`. Kernel to stack: a Python client sends the file and hashes what it sent (hashlib);
/// `net-peer tcp-sink` on the stack writes what it receives to a second file, hashed by `sha256sum`.
/// Stack to kernel: `net-peer tcp-source` sends the file; a Python server hashes what it receives.
/// Every hash must equal the file's, and every byte count must be 100 MiB. Both ends finish only
/// after the other side's end of stream, so nothing is still in flight when they are compared.
@Suite("TAP: bulk TCP", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPBulkTransferTests {
    static let bytes = 100 << 20

    @Test("100 MiB each way between the kernel and the stack, SHA-256 verified", arguments: [false, true])
    func hundredMiBEachWay(ipv6: Bool) throws {
        let net = try TAPNetwork.make(ipv6 ? "bulk6" : "bulk4", subnet: ipv6 ? 5 : 4)
        defer { net.teardown() }
        try net.startServer()
        let stackAddress = ipv6 ? net.stackIPv6 : net.stackIPv4
        let kernelAddress = ipv6 ? net.kernelIPv6 : net.kernelIPv4
        let source = try net.randomFile("source.bin", bytes: Self.bytes)
        let expected = try net.sha256(ofFile: source)
        try #require(expected.count == 64)

        // Kernel -> stack.
        let received = "\(net.directory)/received.bin"
        let sink = try net.startStack("net-peer", ["tcp-sink", net.socketPath, stackAddress, "5001", received])
        try #require(sink.waitForOutput("listening on"), "\(sink.diagnostics)")
        let sender = try net.runKernel(["python3", try net.script("tcp_send.py", KernelPeers.tcpSend), stackAddress, "5001", source],
                                       timeoutSeconds: 120)
        #expect(sender.succeeded, "\(sender)")
        let sent = ChildProcess.fields(sender.output)
        #expect(sent["sha256"] == expected && sent["bytes"] == "\(Self.bytes)" && sent["extra"] == "0", "\(sender)")
        #expect(sink.finish(timeout: 30).status == .exited(0), "\(sink.diagnostics)")
        #expect(ChildProcess.fields(sink.output)["bytes"] == "\(Self.bytes)", "\(sink.diagnostics)")
        #expect(try net.sha256(ofFile: received) == expected, "kernel -> stack: the bytes the stack received differ from the file")
        _ = try net.host(["rm", "-f", received])

        // Stack -> kernel.
        let receiver = try net.startKernel(["python3", try net.script("tcp_recv.py", KernelPeers.tcpReceive), kernelAddress, "5002"])
        try #require(receiver.waitForOutput("listening"), "\(receiver.diagnostics)")
        let source2 = try net.runStack("net-peer", ["tcp-source", net.socketPath, kernelAddress, "5002", source], timeoutSeconds: 120)
        #expect(source2.succeeded && ChildProcess.fields(source2.output)["bytes"] == "\(Self.bytes)", "\(source2)")
        #expect(receiver.finish(timeout: 30).status == .exited(0), "\(receiver.diagnostics)")
        let got = ChildProcess.fields(receiver.output)
        #expect(got["sha256"] == expected && got["bytes"] == "\(Self.bytes)", "stack -> kernel: \(receiver.diagnostics)")

        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }
}
