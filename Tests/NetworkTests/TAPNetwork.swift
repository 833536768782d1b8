import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One test's private network: a network namespace with a TAP device whose kernel side has
/// 10.77.N.1/24 and fd00:77:N::1/64, and a `socket-server` running inside the namespace on that TAP
/// with 10.77.N.2/24 and fd00:77:N::2/64. Every test uses its own N, so tests run in parallel
/// without sharing anything (namespace, device, addresses, server socket, files).
///
/// Stack-side programs (the examples, net-peer) run outside the namespace: they reach the server
/// through its Unix socket. Kernel-side programs (ping, socat, python) run inside it.
///
/// Ownership: `teardown()` (call it in a `defer`) stops every process the network started, kills
/// whatever is left in the namespace, deletes the devices and the namespace, and removes the files.
final class TAPNetwork {
    let label: String
    let subnet: Int
    let namespace: String
    let tap: String
    let directory: String
    let socketPath: String
    private(set) var server: ChildProcess?
    private var processes: [ChildProcess] = []
    private var counter = 0

    var kernelIPv4: String { "10.77.\(subnet).1" }
    var stackIPv4: String { "10.77.\(subnet).2" }
    var kernelIPv6: String { "fd00:77:\(subnet)::1" }
    var stackIPv6: String { "fd00:77:\(subnet)::2" }

    /// True when this machine can run the network tests: root (network namespaces and TAP devices
    /// need CAP_NET_ADMIN) and /dev/net/tun. The only reason a network test is skipped: where these
    /// are present, a missing tool is a failure (`scripts/setup.sh` installs them all).
    static let available: Bool = getuid() == 0 && access("/dev/net/tun", R_OK | W_OK) == 0

    /// Every program the network tests run (`scripts/setup.sh` installs them).
    static let requiredTools = ["ip", "python3", "tcpdump", "tshark", "socat", "nc", "ping", "ss", "sysctl", "sha256sum", "head", "rm"]

    static func inPath(_ tool: String) -> Bool {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        return path.split(separator: ":").contains { access("\($0)/\(tool)", X_OK) == 0 }
    }

    /// Creates the namespace and its TAP device.
    /// - Throws: `SetupError` when a tool the tests need is missing, or a setup command fails.
    ///
    /// With `relayed`, the kernel's addresses are not on the stack's TAP device but on a second one,
    /// `kernelDevice`, and the two are joined through a bridge and a third TAP device,
    /// `relayDevice`: a userspace relay the test runs between `relayDevice` and `kernelDevice`
    /// (`KernelPeers.impairRelay`) then carries every frame between the stack and the kernel.
    ///
    ///     stack ⇄ tap ⇄ bridge ⇄ relayDevice ⇄ relay process ⇄ kernelDevice ⇄ kernel (10.77.N.1)
    static func make(_ label: String, subnet: Int, relayed: Bool = false) throws -> TAPNetwork {
        let missing = requiredTools.filter { !inPath($0) }
        guard missing.isEmpty else {
            throw SetupError(description: "NetworkTests \(label): \(missing.joined(separator: ", ")) not installed (run scripts/setup.sh)")
        }
        return try TAPNetwork(label: label, subnet: subnet, relayed: relayed)
    }

    let relayed: Bool
    var bridge: String { "br\(subnet)" }
    var relayDevice: String { "rly\(subnet)" }
    /// The device with the kernel's addresses.
    var kernelDevice: String { relayed ? "ker\(subnet)" : tap }

    private init(label: String, subnet: Int, relayed: Bool) throws {
        self.relayed = relayed
        self.label = label
        self.subnet = subnet
        namespace = "skonet-\(label)-\(getpid())"
        tap = "sko\(subnet)"
        var template = Array("/tmp/skonet-\(label)-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestSupportError("mkdtemp: errno \(errno)") }
        directory = String(cString: made)
        socketPath = "\(directory)/server.sock"
        do {
            try host(["ip", "netns", "add", namespace])
            try inside(["ip", "link", "set", "lo", "up"])
            try inside(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
            if relayed {
                try inside(["ip", "tuntap", "add", "dev", relayDevice, "mode", "tap"])
                try inside(["ip", "tuntap", "add", "dev", kernelDevice, "mode", "tap"])
                try inside(["ip", "link", "add", bridge, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"])
                for device in [bridge, tap, relayDevice] {
                    // Layer 2 only: no addresses, no IPv6 chatter of their own.
                    try inside(["sysctl", "-q", "-w", "net.ipv6.conf.\(device).disable_ipv6=1"])
                }
                try inside(["ip", "link", "set", tap, "master", bridge])
                try inside(["ip", "link", "set", relayDevice, "master", bridge])
                try inside(["ip", "link", "set", bridge, "up"])
                try inside(["ip", "link", "set", relayDevice, "up"])
            }
            try inside(["ip", "addr", "add", "\(kernelIPv4)/24", "dev", kernelDevice])
            try inside(["ip", "addr", "add", "\(kernelIPv6)/64", "dev", kernelDevice, "nodad"])
            try inside(["ip", "link", "set", tap, "up"])
            if relayed { try inside(["ip", "link", "set", kernelDevice, "up"]) }
        } catch {
            teardown()
            throw error
        }
    }

    /// Further TAP devices the test added (`addTAP`), deleted by `teardown`.
    private var extraDevices: [String] = []

    /// Adds a TAP device `name` to the namespace with the kernel's `kernelAddress` (CIDR) on it.
    func addTAP(_ name: String, kernelAddress: String) throws {
        try inside(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        extraDevices.append(name)
        try inside(["ip", "addr", "add", kernelAddress, "dev", name])
        try inside(["ip", "link", "set", name, "up"])
    }

    // MARK: commands

    /// A command in the host's namespace that must succeed.
    @discardableResult
    func host(_ arguments: [String], timeoutSeconds: Double = 30) throws -> ChildProcess.Result {
        let r = try TestCommand.run(arguments, label: nextLabel(arguments[0]), directory: directory, timeoutSeconds: timeoutSeconds)
        guard r.succeeded else { throw SetupError(description: "setup command failed:\n\(r)") }
        return r
    }

    /// A command inside the namespace that must succeed.
    @discardableResult
    func inside(_ arguments: [String], timeoutSeconds: Double = 30) throws -> ChildProcess.Result {
        try host(["ip", "netns", "exec", namespace] + arguments, timeoutSeconds: timeoutSeconds)
    }

    /// Runs a kernel-side command to completion (bounded); the caller checks the result.
    func runKernel(_ arguments: [String], timeoutSeconds: Double = 60) throws -> ChildProcess.Result {
        try TestCommand.run(["ip", "netns", "exec", namespace] + arguments, label: nextLabel(arguments[0]), directory: directory, timeoutSeconds: timeoutSeconds)
    }

    /// Starts a kernel-side program in the background (stopped by `teardown`).
    func startKernel(_ arguments: [String], label: String? = nil) throws -> ChildProcess {
        let p = try TestCommand.start(["ip", "netns", "exec", namespace] + arguments, label: label ?? nextLabel(arguments[0]), directory: directory)
        processes.append(p)
        return p
    }

    /// Starts one of the package's executables on the stack side (outside the namespace), in the
    /// background (stopped by `teardown`).
    func startStack(_ product: String, _ arguments: [String], label: String? = nil) throws -> ChildProcess {
        let p = try TestCommand.start([TestBinaries.path(product)] + arguments, label: label ?? nextLabel(product), directory: directory)
        processes.append(p)
        return p
    }

    /// Runs one of the package's executables on the stack side to completion (bounded).
    func runStack(_ product: String, _ arguments: [String], timeoutSeconds: Double = 60) throws -> ChildProcess.Result {
        try TestCommand.run([TestBinaries.path(product)] + arguments, label: nextLabel(product), directory: directory, timeoutSeconds: timeoutSeconds)
    }

    /// Writes a kernel-side Python script into the test's directory and returns its path.
    func script(_ name: String, _ source: String) throws -> String {
        let path = "\(directory)/\(name)"
        try TestFiles.write(path, source)
        return path
    }

    private func nextLabel(_ command: String) -> String {
        counter += 1
        let base = command.split(separator: "/").last.map(String.init) ?? command
        return "\(counter)-\(base)"
    }

    // MARK: the server

    /// Starts `socket-server` inside the namespace on the TAP device and waits until it serves.
    /// - Parameter extraArguments: options after the TAP's own, e.g. `--mac`, `--mtu` for it, or a
    ///   further `--tap`.
    func startServer(extraArguments: [String] = []) throws {
        let arguments = [TestBinaries.path("socket-server"), "--socket-path", socketPath,
                         "--tap", tap, "--address", "\(stackIPv4)/24", "--address", "\(stackIPv6)/64",
                         "--gateway", kernelIPv4] + extraArguments
        let p = try TestCommand.start(["ip", "netns", "exec", namespace] + arguments, label: "socket-server", directory: directory)
        server = p
        guard p.waitForOutput("listening on \(socketPath)", inErrorOutput: true, timeout: 20) else {
            throw SetupError(description: "socket-server did not start\n\(p.diagnostics)")
        }
    }

    /// Stops the server with SIGTERM. - Returns: its exit status, nil if it had to be killed.
    func stopServer() -> ChildProcess.ExitStatus? {
        guard let server else { return nil }
        return server.stop(SIGTERM, grace: 10)
    }

    /// Waits until a kernel-side program listens on `port` (TCP, or UDP with `udp`).
    func waitForKernelListener(port: Int, udp: Bool = false, timeoutSeconds: Double = 10) throws {
        let deadline = Deadline(seconds: timeoutSeconds)
        while !deadline.expired {
            let r = try runKernel(["ss", "-Hn", udp ? "-lu" : "-lt", "sport = :\(port)"], timeoutSeconds: 10)
            if r.succeeded && r.output.contains(":\(port)") { return }
            usleep(20_000)
        }
        throw SetupError(description: "nothing listens on kernel port \(port) after \(timeoutSeconds) s")
    }

    /// SHA-256 of a file, by sha256sum.
    func sha256(ofFile path: String) throws -> String {
        let r = try host(["sha256sum", path], timeoutSeconds: 60)
        return String(r.output.split(separator: " ").first ?? "")
    }

    /// Makes a file of `bytes` random bytes (from /dev/urandom) in the test's directory.
    func randomFile(_ name: String, bytes: Int) throws -> String {
        let path = "\(directory)/\(name)"
        let p = try TestCommand.start(["head", "-c", "\(bytes)", "/dev/urandom"], label: nextLabel("head"), directory: directory, stdoutPath: path)
        guard p.finish(timeout: 60).status == .exited(0) else { throw SetupError(description: "cannot make \(path): \(p.diagnostics)") }
        return path
    }

    /// The last lines of `kernel.pcap` in the test's directory (a kernel-side tcpdump the test runs
    /// for diagnostics), for failure messages.
    func kernelCaptureTail(lines: Int = 40) throws -> String {
        let r = try TestCommand.run(["tcpdump", "-n", "-tt", "-r", "\(directory)/kernel.pcap"], label: nextLabel("tcpdump"), directory: directory)
        return r.output.split(separator: "\n").suffix(lines).joined(separator: "\n") + r.errorOutput.suffix(300)
    }

    // MARK: teardown

    /// Undoes everything `make` and the test did, and checks that it is undone: a step that fails,
    /// a namespace still listed or a device still present is recorded as an issue of the test.
    func teardown(sourceLocation: SourceLocation = #_sourceLocation) {
        for p in processes.reversed() { p.stop(SIGTERM, grace: 3) }
        if let server { server.stop(SIGTERM, grace: 10) }
        // Anything still in the namespace (socat's forked children, a stuck script) was started by
        // this test: kill it by pid so the namespace can go.
        for _ in 0..<3 {
            guard let r = try? TestCommand.run(["ip", "netns", "pids", namespace], label: nextLabel("pids"), directory: directory, timeoutSeconds: 10),
                  r.succeeded else { break }
            let pids = r.output.split(separator: "\n").compactMap { pid_t($0.trimmingCharacters(in: " ")) }
            if pids.isEmpty { break }
            for pid in pids { kill(pid, SIGKILL) }
            usleep(100_000)
        }
        func step(_ arguments: [String]) {
            do {
                let r = try TestCommand.run(arguments, label: nextLabel(arguments[0]), directory: directory, timeoutSeconds: 10)
                if !r.succeeded { Issue.record("teardown of \(label): \(r)", sourceLocation: sourceLocation) }
            } catch {
                Issue.record("teardown of \(label): \(error)", sourceLocation: sourceLocation)
            }
        }
        let devices = (relayed ? [tap, relayDevice, kernelDevice, bridge] : [tap]) + extraDevices
        for device in devices {
            step(["ip", "-n", namespace, "link", "del", device])
        }
        step(["ip", "netns", "del", namespace])
        for leftover in Self.leftovers(namespace: namespace, devices: devices) {
            Issue.record("teardown of \(label): \(leftover) still exists", sourceLocation: sourceLocation)
        }
        // NETWORK_TESTS_KEEP=1 keeps the directory (logs, captures) for a post-mortem.
        if getenv("NETWORK_TESTS_KEEP") != nil {
            print("NetworkTests \(label): kept \(directory)")
            return
        }
        TestFiles.removeTree(directory)
        if access(directory, F_OK) == 0 { Issue.record("teardown of \(label): \(directory) still exists", sourceLocation: sourceLocation) }
    }

    /// What is left of a network after its teardown: the namespace if `ip netns list` still lists it,
    /// and each device the host's namespace has under one of `devices` (a device leaves a deleted
    /// namespace for the host's when it cannot be destroyed).
    static func leftovers(namespace: String, devices: [String]) -> [String] {
        var found: [String] = []
        if let list = try? ChildProcess.run("ip", ["netns", "list"], timeout: 10) {
            if !list.succeeded { found.append("an unreadable namespace list (\(list))") }
            if list.output.split(separator: "\n").contains(where: { $0.split(separator: " ").first.map(String.init) == namespace }) {
                found.append("namespace \(namespace)")
            }
        } else {
            found.append("an unreadable namespace list")
        }
        for device in devices where access("/sys/class/net/\(device)", F_OK) == 0 { found.append("device \(device) in the host") }
        return found
    }
}

/// How the network tests run programs: stdin /dev/null, stdout and stderr in `LABEL.out` and
/// `LABEL.err` of the test's directory, so that a chatty program can never block on a full pipe and
/// its output is still there after it died (and, with NETWORK_TESTS_KEEP, after the test).
enum TestCommand {
    /// Starts `arguments[0]` (a path, or a name looked up in `PATH`).
    /// - Parameter stdoutPath: send stdout to this file instead (e.g. a data file).
    static func start(_ arguments: [String], label: String, directory: String, stdoutPath: String? = nil) throws -> ChildProcess {
        try ChildProcess(arguments[0], Array(arguments.dropFirst()), name: label,
                         stdout: .file(stdoutPath ?? "\(directory)/\(label).out"), stderr: .file("\(directory)/\(label).err"))
    }

    /// Runs a command to completion (killed after `timeoutSeconds`) and returns its status and output.
    static func run(_ arguments: [String], label: String, directory: String, timeoutSeconds: Double = 30) throws -> ChildProcess.Result {
        try ChildProcess.run(arguments[0], Array(arguments.dropFirst()), name: label,
                             stdout: .file("\(directory)/\(label).out"), stderr: .file("\(directory)/\(label).err"),
                             timeout: timeoutSeconds)
    }
}

struct SetupError: Error, CustomStringConvertible {
    let description: String
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
